"""`odk report`: every experiment of the repository in one table and one figure.

DVC collects the workspace, every commit and every `dvc exp` experiment with their params and
metrics; each one with both models' test metrics becomes a row of `experiments.md` and
`experiments.csv`, and a point of `accuracy_vs_params.png`: test accuracy against trainable
parameters, the baseline marked, the tolerance band (baseline minus
`compare.max_accuracy_drop`) shaded, points labelled by the settings that differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on CI or servers
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from odk.atomic import write_text  # noqa: E402
from odk.errors import OdkError  # noqa: E402
from odk.plots import save_figure  # noqa: E402

# column -> dotted key in params.yaml; the settings a point's label may name
SETTINGS = {
    "r": "model.r",
    "num_matrices": "model.num_matrices",
    "odk_layers": "model.odk_layers",
    "subset_fraction": "data_module.subset_fraction",
}
METRICS = ("metrics/baseline.json", "metrics/odk.json", "metrics/compare.json")
FIGURE = "accuracy_vs_params.png"


def collect_rows(repo_path: str | Path = ".") -> tuple[list[dict[str, Any]], list[str]]:
    """One row per experiment with both models' metrics, through DVC's experiments API.

    Returns:
        The rows (workspace, commits newest first, each followed by its experiments; the
        workspace is left out when it only repeats one of them), and the names of the
        revisions left out for lack of metrics.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(Repo.find_root(str(repo_path))) as repo:  # from a subfolder too
            states = repo.experiments.show(all_commits=True, hide_queued=True)
    except DvcException as exc:
        raise OdkError(f"cannot read the experiments of {repo_path}: {exc}") from None
    found: list[tuple[str, str, Any]] = []  # (name, type, ExpState)
    for state in states:
        kind = "workspace" if state.rev == "workspace" else "commit"
        found.append((state.name or state.rev[:7], kind, state))
        for exp_range in state.experiments or []:
            for exp in exp_range.revs:
                found.append((exp_range.name or exp.name or exp.rev[:7], "experiment", exp))
    rows, skipped = [], []
    for name, kind, state in found:
        row = _row(name, kind, state)
        if row is None:
            skipped.append(name)
        else:
            rows.append(row)
    return _drop_repeated_workspace(rows), skipped


def _row(name: str, kind: str, state: Any) -> dict[str, Any] | None:
    """A table row, or None when the revision lacks either model's metrics."""
    if state.data is None:
        return None
    metrics = {path: result.get("data") for path, result in state.data.metrics.items()}
    base, odk, comp = (metrics.get(p) or {} for p in METRICS)
    needed = ("test_accuracy", "trainable_params")
    if not all(key in m for key in needed for m in (base, odk)):
        return None
    params: dict[str, Any] = {}
    for result in state.data.params.values():
        params.update(result.get("data") or {})
    max_drop = _get(params, "compare.max_accuracy_drop", comp.get("max_accuracy_drop"))
    delta = comp.get("accuracy_delta", odk["test_accuracy"] - base["test_accuracy"])
    within = comp.get("within_tolerance")
    if within is None and max_drop is not None:
        within = delta >= -max_drop
    timestamp = state.data.timestamp
    return {
        "experiment": name,
        "rev": state.rev[:7] if kind != "workspace" else "",
        "type": kind,
        "created": timestamp.strftime("%Y-%m-%d %H:%M") if timestamp else "",
        **{col: _setting(_get(params, key)) for col, key in SETTINGS.items()},
        "baseline_accuracy": base["test_accuracy"],
        "odk_accuracy": odk["test_accuracy"],
        "accuracy_delta": delta,
        "baseline_params": base["trainable_params"],
        "odk_params": odk["trainable_params"],
        "params_ratio": odk["trainable_params"] / base["trainable_params"],
        "roc_auc_delta": comp.get("roc_auc_delta"),
        "model_file_ratio": comp.get("model_file_ratio"),
        "max_accuracy_drop": max_drop,
        "within_tolerance": within,
    }


def _get(params: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _setting(value: Any) -> Any:
    """Lists as `[3, 4]` text, so that they compare, print and fit a CSV cell."""
    return str(list(value)) if isinstance(value, list | tuple) else value


def _drop_repeated_workspace(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Leave out the workspace row when a commit or experiment holds the same results."""

    def key(row: dict[str, Any]) -> tuple:
        return tuple(v for k, v in row.items() if k not in ("experiment", "rev", "type", "created"))

    others = {key(r) for r in rows if r["type"] != "workspace"}
    return [r for r in rows if r["type"] != "workspace" or key(r) not in others]


def differing_settings(rows: list[dict[str, Any]]) -> list[str]:
    """The settings columns whose value is not the same in every row."""
    return [col for col in SETTINGS if len({repr(r[col]) for r in rows}) > 1]


def point_label(row: dict[str, Any], columns: list[str]) -> str:
    """`r=2, num_matrices=1` from the differing settings, or the experiment name."""
    return ", ".join(f"{c}={row[c]}" for c in columns) or row["experiment"]


def plot_accuracy_vs_params(rows: list[dict[str, Any]], path: Path) -> list[str]:
    """Test accuracy against trainable parameters (log scale): ODK points, baselines, band.

    Returns:
        The texts annotating the points.
    """
    columns = differing_settings(rows)
    fig, ax = plt.subplots(figsize=(10, 5.5))
    _draw_baselines(ax, rows, [c for c in columns if c == "subset_fraction"])
    labels: dict[tuple, list[str]] = {}  # points at the same place share one annotation
    for row in rows:
        point = (row["odk_params"], row["odk_accuracy"])
        labels.setdefault(point, []).append(point_label(row, columns))
    xs, ys = zip(*labels, strict=True)
    ax.scatter(xs, ys, marker="o", s=50, color="tab:blue", zorder=3, label="ODK")
    for point, names in labels.items():
        text = "; ".join(dict.fromkeys(names))
        ax.annotate(text, point, textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xscale("log")
    ax.margins(x=0.25, y=0.1)  # room for the labels next to the outermost points
    ax.set(xlabel="trainable parameters (log scale)", ylabel="test accuracy")
    ax.set_title(f"Test accuracy vs trainable parameters ({len(rows)} experiments)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # outside: never on a point
    texts = [a.get_text() for a in ax.texts]
    save_figure(fig, path, dpi=120)
    return texts


def _draw_baselines(ax: plt.Axes, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A star per distinct baseline and its tolerance band, labelled by `columns`."""
    bands = {(r["baseline_accuracy"], r["max_accuracy_drop"]) for r in rows}
    legend = "tolerance: baseline - max_accuracy_drop"
    for acc, drop in sorted(b for b in bands if b[1] is not None):
        ax.axhspan(acc - drop, acc, color="tab:green", alpha=0.12, lw=0, label=legend)
        legend = None  # one legend entry for all bands
    baselines: dict[tuple, str] = {}
    for row in rows:
        point = (row["baseline_params"], row["baseline_accuracy"])
        setting = point_label(row, columns) if columns else ""
        baselines.setdefault(point, f"baseline {setting}".strip())
    legend = "baseline (dense)"
    for (params, acc), label in baselines.items():
        ax.scatter(params, acc, marker="*", s=220, color="black", zorder=3, label=legend)
        legend = None
        offset = {"textcoords": "offset points", "xytext": (-8, -14), "ha": "right"}
        ax.annotate(label, (params, acc), fontsize=8, **offset)


def write_report(repo_path: str | Path = ".", out_dir: str | Path = "reports") -> dict[str, Any]:
    """Collect every experiment and write `experiments.md`, `experiments.csv` and the figure.

    Returns:
        `rows` (the table as a DataFrame), `skipped` (revisions without metrics), `files`,
        `labels` (the point annotations) and `markdown`.

    Raises:
        OdkError: Not a DVC repository, or no experiment has metrics yet.
    """
    rows, skipped = collect_rows(repo_path)
    if not rows:
        raise OdkError(
            f"no experiment in {repo_path} has metrics yet (metrics/baseline.json and "
            "metrics/odk.json): run `dvc repro` or `dvc exp run` first"
        )
    out = Path(out_dir)
    table = pd.DataFrame(rows)
    labels = plot_accuracy_vs_params(rows, out / FIGURE)
    differing = ", ".join(differing_settings(rows)) or "none"
    text = (
        f"# Experiments\n\n{len(rows)} experiments with metrics; settings that differ: "
        f"{differing}. Accuracies are fractions; `accuracy_delta` is ODK minus baseline.\n\n"
        f"{table.to_markdown(index=False, floatfmt='.4g')}\n\n"
        f"![test accuracy vs trainable parameters]({FIGURE})\n"
    )
    if skipped:
        text += f"\nLeft out, no metrics in the workspace or DVC cache: {', '.join(skipped)}\n"
    files = [
        write_text(out / "experiments.md", text),
        write_text(out / "experiments.csv", table.to_csv(index=False)),
        out / FIGURE,
    ]
    return {"rows": table, "skipped": skipped, "files": files, "labels": labels, "markdown": text}
