"""`odk report`: every experiment of the repository in one table and one figure.

DVC collects the workspace, every commit and every `dvc exp` experiment with their params and
metrics. Experiments whose settings differ only in `seeds` are replicates of one setting and
become one row: the models' mean and standard deviation over all their seeds, the accuracy
difference with a 95% confidence interval and its verdict (`odk.stats`). Each row is a line of
`experiments.md` and `experiments.csv`, and three points of `accuracy_vs_params.png` (test
accuracy against trainable parameters, error bars one standard deviation over seeds): the
baseline, the ODK model and the parameter-matched control, labelled by the settings that differ.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from odk.atomic import write_text
from odk.errors import OdkError
from odk.stats import verdict

# columns -> dotted key in params.yaml, always shown; any other setting that differs is added
SETTINGS = {
    "r": "model.r",
    "num_matrices": "model.num_matrices",
    "odk_layers": "model.odk_layers",
    "subset_fraction": "data_module.subset_fraction",
}
REPLICATES = "seeds"  # experiments that differ only here are one row
MODELS = ("baseline", "odk", "matched")
FIGURE = "accuracy_vs_params.png"


def collect_experiments(repo_path: str | Path = ".") -> tuple[list[dict[str, Any]], list[str]]:
    """Every revision with the models' metrics, through DVC's experiments API.

    Returns:
        The experiments (`name`, `rev`, `type`, `created`, `params` flattened to dotted keys,
        `metrics` per file stem), workspace first, and the revisions left out for lack of
        metrics.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        root = Repo.find_root(str(repo_path))  # from a subfolder too
        with Repo(root) as repo:
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
    experiments, skipped = [], []
    for name, kind, state in found:
        experiment = _experiment(name, kind, state, root)
        (skipped.append(name) if experiment is None else experiments.append(experiment))
    return _drop_repeated_workspace(experiments), skipped


def _experiment(name: str, kind: str, state: Any, root: str) -> dict[str, Any] | None:
    if state.data is None:
        return None
    metrics = {Path(p).stem: r.get("data") or {} for p, r in state.data.metrics.items()}
    needed = ("test_accuracy", "trainable_params")
    if not all(key in metrics.get(m, {}) for key in needed for m in ("baseline", "odk")):
        return None
    metrics["compare"] = _read_compare(root, state.rev, metrics.get("compare", {}))
    params: dict[str, Any] = {}
    for result in state.data.params.values():
        params.update(_flatten(result.get("data") or {}))
    stamp = state.data.timestamp
    return {
        "name": name,
        "rev": state.rev[:7] if kind != "workspace" else "",
        "type": kind,
        "created": stamp.strftime("%Y-%m-%d %H:%M") if stamp else "",
        "params": params,
        "metrics": metrics,
    }


def _read_compare(root: str, rev: str, shown: dict[str, Any]) -> dict[str, Any]:
    """The whole `metrics/compare.json` of a revision.

    DVC's metrics API keeps numbers only; the seeds, the intervals and the verdict are lists
    and strings, so the file itself is read, from the workspace or the DVC cache.
    """
    import json

    import dvc.api
    from dvc.exceptions import DvcException

    path = "metrics/compare.json"
    try:
        if rev == "workspace":
            return json.loads((Path(root) / path).read_text())
        return json.loads(dvc.api.read(path, repo=root, rev=rev))
    except (OSError, ValueError, DvcException):
        return shown  # not in the cache (e.g. pulled metrics only): what DVC showed


def _flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"model": {"r": 1}}` -> `{"model.r": 1}`; lists as `[3, 4]` text, to compare and print."""
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(list(value)) if isinstance(value, list) else value
    return flat


def _drop_repeated_workspace(experiments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Leave out the workspace when a commit or experiment holds the same results."""

    def key(e: dict[str, Any]) -> str:
        return repr((sorted(e["params"].items()), sorted(map(repr, e["metrics"].items()))))

    others = {key(e) for e in experiments if e["type"] != "workspace"}
    return [e for e in experiments if e["type"] != "workspace" or key(e) not in others]


def differing_settings(experiments: list[dict[str, Any]]) -> list[str]:
    """Dotted keys of the settings (but `seeds`) whose value is not the same everywhere."""
    keys = sorted({k for e in experiments for k in e["params"]} - {REPLICATES})
    return [k for k in keys if len({repr(e["params"].get(k)) for e in experiments}) > 1]


def columns_for(experiments: list[dict[str, Any]]) -> dict[str, str]:
    """Table column -> dotted key: the four ODK settings plus every other differing setting."""
    columns = dict(SETTINGS)
    for key in differing_settings(experiments):
        if key not in columns.values():
            short = key.rsplit(".", 1)[-1]
            columns[key if short in columns else short] = key
    return columns


def point_label(row: dict[str, Any], columns: list[str]) -> str:
    """`r=2, max_epochs=10` from the differing settings, or the experiment name."""
    return ", ".join(f"{c}={row[c]}" for c in columns) or row["experiment"]


def group_rows(experiments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting: replicates (experiments differing only in `seeds`) pooled."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for e in sorted(experiments, key=lambda e: e["name"]):
        setting = {k: v for k, v in e["params"].items() if k != REPLICATES}
        groups.setdefault(repr(sorted(setting.items())), []).append(e)
    columns = columns_for(experiments)
    return [_row(_distinct_seeds(group), columns) for group in groups.values()]


def _distinct_seeds(group: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Leave out replicates whose seeds another one of the group already holds.

    `seeds=[0]`, then `seeds=[0,1]`, then `seeds=[0,1,2]` is one growing run: its last
    experiment holds all three seeds, and pooling all three would count seed 0 three times.
    """
    sets = [frozenset(e["metrics"].get("compare", {}).get("seeds") or [e["name"]]) for e in group]
    kept = []
    for i, e in enumerate(group):
        covered = any(
            sets[i] < sets[j] or (sets[i] == sets[j] and j < i) for j in range(len(group))
        )
        if not covered:
            kept.append(e)
    return kept


def _row(group: list[dict[str, Any]], columns: dict[str, str]) -> dict[str, Any]:
    first = group[0]
    compares = [e["metrics"].get("compare", {}) for e in group]
    max_drop = first["params"].get(
        "compare.max_accuracy_drop", compares[0].get("max_accuracy_drop")
    )
    row: dict[str, Any] = {
        "experiment": ", ".join(e["name"] for e in group),
        "rev": first["rev"],
        "type": first["type"],
        "created": first["created"],
        **{col: first["params"].get(key) for col, key in columns.items()},
    }
    seeds: list[int] = []
    for e, c in zip(group, compares, strict=True):
        seeds += c.get("seeds") or [e["params"].get("seed")]
    row["seeds"] = ",".join(str(s) for s in dict.fromkeys(seeds))
    for model in MODELS:
        n, mean, std = _pooled([e["metrics"].get(model, {}) for e in group])
        row[f"{model}_accuracy"], row[f"{model}_std"] = mean, std
        row["n_seeds"] = max(row.get("n_seeds", 0), n)
        row[f"{model}_params"] = group[0]["metrics"].get(model, {}).get("trainable_params")
    for prefix, key in (("matched_", "matched_accuracy"), ("", "accuracy")):
        delta, ci = _delta(group, compares, key)
        row[f"{prefix}delta"], row[f"{prefix}ci95_low"], row[f"{prefix}ci95_high"] = delta, *ci
    known = None not in (*ci, max_drop)  # ci: ODK minus baseline, the last one
    row["verdict"] = verdict(list(ci), max_drop) if known else None
    row["params_ratio"] = row["odk_params"] / row["baseline_params"]
    row["max_accuracy_drop"] = max_drop
    return row


def _pooled(metrics: list[dict[str, Any]]) -> tuple[int, float | None, float | None]:
    """Seeds, mean and standard deviation of test accuracy over several experiments' seeds."""
    parts = [
        (m.get("n_seeds", 1), m["test_accuracy"], m.get("test_accuracy_std", 0.0))
        for m in metrics
        if "test_accuracy" in m
    ]
    if not parts:
        return 0, None, None
    n = sum(p[0] for p in parts)
    mean = sum(k * mu for k, mu, _ in parts) / n
    squares = sum((k - 1) * sd**2 + k * (mu - mean) ** 2 for k, mu, sd in parts)
    return n, mean, math.sqrt(squares / (n - 1)) if n > 1 else 0.0


def _delta(
    group: list[dict[str, Any]], compares: list[dict[str, Any]], key: str
) -> tuple[float | None, tuple[float | None, float | None]]:
    """The mean difference and its CI: the experiment's own, or a t-interval over all seeds."""
    if len(group) == 1 or not all(f"{key}_deltas" in c for c in compares):
        c = compares[0]
        ci = c.get(f"{key}_delta_ci95") or [None, None]
        return c.get(f"{key}_delta"), (ci[0], ci[1])
    per_seed: dict[Any, float] = {}
    for c in compares:  # a seed run twice (same settings) counts once
        for seed, d in zip(c["seeds"], c[f"{key}_deltas"], strict=True):
            per_seed.setdefault(seed, d)
    deltas = np.array(list(per_seed.values()))
    from scipy.stats import t

    half = t.ppf(0.975, len(deltas) - 1) * deltas.std(ddof=1) / math.sqrt(len(deltas))
    return float(deltas.mean()), (float(deltas.mean() - half), float(deltas.mean() + half))


def write_report(repo_path: str | Path = ".", out_dir: str | Path = "reports") -> dict[str, Any]:
    """Collect every experiment and write `experiments.md`, `experiments.csv` and the figure.

    Returns:
        `rows` (the table as a DataFrame), `skipped` (revisions without metrics), `files`,
        `labels` (the point annotations) and `markdown`.

    Raises:
        OdkError: Not a DVC repository, or no experiment has metrics yet.
    """
    from odk.report_figure import plot_accuracy_vs_params

    experiments, skipped = collect_experiments(repo_path)
    if not experiments:
        raise OdkError(
            f"no experiment in {repo_path} has metrics yet (metrics/baseline.json and "
            "metrics/odk.json): run `dvc repro` or `dvc exp run` first"
        )
    out = Path(out_dir)
    rows = group_rows(experiments)
    differing = [
        c for c, k in columns_for(experiments).items() if k in differing_settings(experiments)
    ]
    labels = plot_accuracy_vs_params(rows, differing, out / FIGURE)
    table = pd.DataFrame(rows)
    text = (
        f"# Experiments\n\n{len(rows)} settings from {len(experiments)} experiments with "
        f"metrics; settings that differ: {', '.join(differing) or 'none'}. Accuracies are "
        "fractions, means over seeds (`*_std`: standard deviation over seeds); `delta` is ODK "
        "minus baseline and `matched_delta` ODK minus the parameter-matched control, each with a "
        "95% confidence interval; `verdict` reads the interval against -max_accuracy_drop.\n\n"
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
