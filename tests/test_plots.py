"""Figures and plot records: square confusion matrices, curves per epoch, a balanced grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from odk import plots
from odk.plots import confusion_records, curve_records
from odk.stages.evaluate import GRID_IMAGES, grid_indices

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "bird", "cat", "dog"]


def test_confusion_records_hold_every_cell_even_never_predicted_classes():
    seed0 = np.array([[0, 0], [1, 0], [2, 2], [3, 2]])  # bird and dog are never predicted
    seed1 = np.array([[0, 0], [1, 1], [2, 2], [3, 0]])
    records = confusion_records([seed0, seed1], CLASSES)
    assert len(records) == len(CLASSES) ** 2  # square, over every class
    assert {r["predicted"] for r in records} == set(CLASSES) == {r["actual"] for r in records}
    cells = {(r["actual"], r["predicted"]): r["images"] for r in records}
    assert cells["airplane", "airplane"] == 2 and cells["bird", "airplane"] == 1
    assert cells["dog", "cat"] == 1 and cells["dog", "dog"] == 0
    assert sum(cells.values()) == 8  # every image of every seed, once


def test_confusion_plots_draw_true_classes_as_rows_with_the_counting_template():
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    confusion = [p for entry in plots if isinstance(entry, dict) for p in entry.values()]
    confusion = [p for p in confusion if "confusion" in str(p.get("template"))]
    assert len(confusion) == 3
    for plot in confusion:
        assert plot["template"] == "confusion_counts" and plot["x"] == "predicted"
        assert list(plot["y"].values()) == ["actual"]  # y (rows): the true class
    template = (REPO / ".dvc/plots/confusion_counts.json").read_text()
    assert '"op": "sum"' in template and '"field": "images"' in template


def test_learning_curves_are_plotted_against_the_epoch():
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    curves = {
        title: plot
        for entry in plots
        if isinstance(entry, dict)
        for title, plot in entry.items()
        if "per epoch" in title
    }
    assert len(curves) == 4  # train and validation, loss and accuracy
    assert all(plot["x"] == "epoch" for plot in curves.values())


def test_curve_records_have_one_point_per_epoch_averaged_over_seeds():
    curves = {
        "baseline": [([1, 2, 3], [0.1, 0.2, 0.3]), ([1, 2, 3], [0.3, 0.4, 0.5])],
        "odk": [([1, 2], [0.5, 0.6])],
    }
    records = curve_records(curves)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert records[0] == {"epoch": 1, "baseline": 0.2, "odk": 0.5}
    assert records[2] == {"epoch": 3, "baseline": 0.4}


@pytest.mark.parametrize("num_classes", [10, 100])
def test_prediction_grid_shows_as_many_images_of_every_class_chosen_with_the_seed(num_classes):
    labels = np.repeat(np.arange(num_classes), 20)  # ordered by class, as some archives are
    chosen = grid_indices(labels, num_classes, seed=0)
    counts = np.bincount(labels[chosen], minlength=num_classes)
    assert (counts == max(1, GRID_IMAGES // num_classes)).all()
    assert np.array_equal(chosen, grid_indices(labels, num_classes, seed=0))
    assert not np.array_equal(chosen, grid_indices(labels, num_classes, seed=1))


def test_the_learning_curve_png_has_the_epoch_on_x(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    curves = {"baseline": [([1, 2, 3], [0.1, 0.2, 0.3]), ([1, 2, 3], [0.3, 0.2, 0.5])]}
    plots.save_band_png(tmp_path / "curve.png", curves, "validation accuracy", "title")
    (ax,) = figures[0].axes
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == [1, 2, 3] and ax.get_xlabel() == "epoch"
    ax.figure.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)  # no epoch 1.5
    plots.pyplot().close(figures[0])
