"""The figure of `odk report`: test accuracy against trainable parameters, every setting.

Per row of the report three markers: the dense baseline (star), the ODK model (circle) and the
parameter-matched control (square), each with error bars of one standard deviation over seeds;
the tolerance band (baseline minus `compare.max_accuracy_drop`) shaded; the ODK points
labelled by the settings that differ between rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on CI or servers
import matplotlib.pyplot as plt  # noqa: E402

from odk.plots import save_figure  # noqa: E402
from odk.report import point_label  # noqa: E402

STYLE = {  # model -> marker, size, colour, legend
    "baseline": ("*", 220, "black", "dense baseline"),
    "odk": ("o", 60, "tab:blue", "ODK"),
    "matched": ("s", 50, "tab:orange", "dense control, thinned to ODK's parameters"),
}


def plot_accuracy_vs_params(
    rows: list[dict[str, Any]], columns: list[str], path: Path
) -> list[str]:
    """Draw every row's three models; return the texts annotating the points.

    Args:
        rows: the report's rows (`<model>_params`, `<model>_accuracy`, `<model>_std`).
        columns: the settings that differ, which label the points.
        path: the PNG to write.
    """
    fig, ax = plt.subplots(figsize=(10.5, 6))
    bands = {(r["baseline_accuracy"], r["max_accuracy_drop"]) for r in rows}
    legend = "tolerance: baseline - max_accuracy_drop"
    for acc, drop in sorted(b for b in bands if None not in b):
        ax.axhspan(acc - drop, acc, color="tab:green", alpha=0.1, lw=0, label=legend)
        legend = None  # one legend entry for all bands
    labels: dict[tuple, list[str]] = {}  # points at one place share one annotation
    baseline_columns = [c for c in columns if c == "subset_fraction" or "epoch" in c]
    for model, (marker, size, colour, name) in STYLE.items():
        seen: set[tuple] = set()
        for row in rows:
            x, y, sd = (row.get(f"{model}_{k}") for k in ("params", "accuracy", "std"))
            if x is None or y is None or (model == "baseline" and (x, y) in seen):
                continue
            seen.add((x, y))
            ax.errorbar(x, y, yerr=sd or None, fmt="none", ecolor=colour, capsize=3, zorder=2)
            ax.scatter(x, y, marker=marker, s=size, color=colour, zorder=3, label=name)
            name = None
            if model == "odk":
                labels.setdefault((x, y), []).append(point_label(row, columns))
            elif model == "baseline" and baseline_columns:
                text = f"baseline {point_label(row, baseline_columns)}"
                ax.annotate(
                    text,
                    (x, y),
                    textcoords="offset points",
                    xytext=(-8, -14),
                    ha="right",
                    fontsize=8,
                )
    for point, names in labels.items():
        text = "; ".join(dict.fromkeys(names))
        ax.annotate(text, point, textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xscale("log")
    ax.margins(x=0.25, y=0.1)  # room for the labels next to the outermost points
    ax.set(
        xlabel="trainable parameters (log scale)",
        ylabel="test accuracy (error bars: 1 sd over seeds)",
    )
    ax.set_title(f"Test accuracy vs trainable parameters ({len(rows)} settings)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # outside: never on a point
    texts = [a.get_text() for a in ax.texts]
    save_figure(fig, path, dpi=120)
    return texts
