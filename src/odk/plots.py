"""Figures and DVC plot data: confusion records, ROC curves, image grids, learning curves.

DVC renders the JSON records (`dvc plots show`); the PNGs are for what DVC's templates
cannot draw (one ROC curve per class, labelled test images, curves with a band over seeds).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from odk.atomic import atomic_file

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

FPR_GRID = np.linspace(0.0, 1.0, 201)


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display on CI or training servers).

    Imported on first use: `compare --help` and the record-only functions need none of it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_records(predictions: Sequence[np.ndarray], classes: Sequence[str]) -> list[dict]:
    """`{actual, predicted, images}` for every pair of classes, pooled over seeds.

    Every cell is a record, zeros included, so the matrix that the `confusion_counts` template
    (`.dvc/plots/`) draws is square over every class, even one that is never predicted.

    Args:
        predictions: one `(N, 2)` array of true and predicted classes per seed.
        classes: the class names, in label order.
    """
    n = len(classes)
    pairs = np.concatenate(list(predictions)).astype(np.int64)
    counts = np.bincount(pairs[:, 0] * n + pairs[:, 1], minlength=n * n).reshape(n, n)
    return [
        {"actual": classes[a], "predicted": classes[p], "images": int(counts[a, p])}
        for a in range(n)
        for p in range(n)
    ]


def curve_records(curves: dict[str, list[tuple[Sequence[int], Sequence[float]]]]) -> list[dict]:
    """`{epoch, <model>: mean over seeds, ...}` per epoch, for one DVC plot of every model.

    Args:
        curves: per model, one `(epochs, values)` curve per seed.
    """
    means = {name: _mean_curve(runs) for name, runs in curves.items()}
    epochs = sorted({e for epochs, _ in means.values() for e in epochs})
    records = []
    for epoch in epochs:
        record: dict = {"epoch": epoch}
        for name, (xs, ys) in means.items():
            if epoch in xs:
                record[name] = round(float(ys[xs.index(epoch)]), 6)
        records.append(record)
    return records


def _mean_curve(runs: list[tuple[Sequence[int], Sequence[float]]]) -> tuple[list[int], list[float]]:
    """The mean over runs at every epoch that all of them reached."""
    common = sorted(set.intersection(*(set(epochs) for epochs, _ in runs)))
    tables = [dict(zip(epochs, values, strict=True)) for epochs, values in runs]
    return common, [float(np.mean([t[e] for t in tables])) for e in common]


def mean_roc_records(rocs: dict[str, list[list[dict]]]) -> list[dict]:
    """`{fpr, <model>: mean TPR over seeds, ...}` on the common FPR grid of `macro_roc_records`."""
    mean = {
        name: np.mean([[p["tpr"] for p in run] for run in runs], axis=0)
        for name, runs in rocs.items()
    }
    fprs = [p["fpr"] for p in next(iter(rocs.values()))[0]]
    return [
        {"fpr": fpr, **{name: round(float(tpr[i]), 6) for name, tpr in mean.items()}}
        for i, fpr in enumerate(fprs)
    ]


def per_class_roc(labels: np.ndarray, probs: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """One-vs-rest ROC curve `(fpr, tpr)` of every class (absent classes give empty arrays)."""
    from sklearn.metrics import roc_curve  # heavy: imported by the one stage that needs it

    curves = []
    for c in range(probs.shape[1]):
        positives = labels == c
        if positives.all() or not positives.any():
            curves.append((np.empty(0), np.empty(0)))
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, c])
        curves.append((fpr, tpr))
    return curves


def macro_roc_records(curves: list[tuple[np.ndarray, np.ndarray]]) -> list[dict]:
    """The macro-average ROC curve (per-class TPR interpolated on a common FPR grid)."""
    tprs = [np.interp(FPR_GRID, fpr, tpr) for fpr, tpr in curves if fpr.size]
    mean_tpr = np.mean(tprs, axis=0)
    mean_tpr[0] = 0.0
    return [
        {"fpr": round(float(f), 4), "tpr": round(float(t), 6)}
        for f, t in zip(FPR_GRID, mean_tpr, strict=True)
    ]


def save_roc_png(
    path: Path, curves: list[tuple[np.ndarray, np.ndarray]], classes: Sequence[str], title: str
) -> None:
    """All one-vs-rest ROC curves in one figure (legend only for up to 20 classes)."""
    fig, ax = pyplot().subplots(figsize=(6, 6))
    for (fpr, tpr), name in zip(curves, classes, strict=True):
        if fpr.size:
            ax.plot(fpr, tpr, lw=1, label=name)
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    if len(classes) <= 20:
        ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def save_prediction_grid(
    path: Path,
    images: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    classes: Sequence[str],
    title: str,
    columns: int = 8,
) -> None:
    """A grid of test images titled `true / predicted`; misclassified ones framed in red.

    Args:
        images: uint8 array of shape (N, 3, 32, 32).
    """
    rows = -(-len(images) // columns)
    fig, axes = pyplot().subplots(rows, columns, figsize=(columns * 1.6, rows * 1.8), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label, pred in zip(axes.flat, images, labels, preds, strict=False):
        wrong = label != pred
        ax.imshow(image.transpose(1, 2, 0), interpolation="nearest")
        ax.set_title(
            f"{classes[label]}\n→ {classes[pred]}", fontsize=7, color="red" if wrong else "black"
        )
        if wrong:
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set(color="red", linewidth=2.5)
    fig.suptitle(f"{title} (true → predicted; red = misclassified)", fontsize=9)
    save_figure(fig, path)


def save_band_png(
    path: Path,
    curves: dict[str, list[tuple[Sequence[int], Sequence[float]]]],
    ylabel: str,
    title: str,
) -> None:
    """Per model, the mean curve over seeds and a band from the lowest to the highest seed.

    Args:
        curves: per model, one `(epochs, values)` curve per seed; x is the epoch (1, 2, ...).
    """
    from matplotlib.ticker import MaxNLocator

    fig, ax = pyplot().subplots(figsize=(6.5, 4))
    for name, runs in curves.items():
        epochs, mean = _mean_curve(runs)
        tables = [dict(zip(e, v, strict=True)) for e, v in runs]
        values = np.array([[t[e] for e in epochs] for t in tables])  # (seeds, epochs)
        (line,) = ax.plot(epochs, mean, marker="o", ms=3, label=f"{name} ({len(runs)} seeds)")
        if len(runs) > 1:
            ax.fill_between(
                epochs, values.min(0), values.max(0), color=line.get_color(), alpha=0.15
            )
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs 1, 2, ...: no 1.5
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def save_figure(fig: plt.Figure, path: Path, dpi: int = 110) -> None:
    """Save and close `fig` through a temporary file, so no reader sees half a figure."""
    fig.tight_layout()
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        pyplot().close(fig)
