"""`dvc plots show` renders offline: the page holds vega, vega-lite and vega-embed itself.

The real DVC renders the repository's own plot definitions (dvc.yaml's `plots`, the
`.dvc/config` template setting, the `.dvc/plots/` templates) in a scratch DVC project, on small
records written by the functions the pipeline uses.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from odk.offline_plots import (
    TEMPLATE,
    dvc_script_versions,
    page_script_versions,
    remote_references,
)
from odk.plots import confusion_records, curve_records, pyplot, save_figure

REPO = Path(__file__).resolve().parents[1]
KINDS = ("baseline", "odk", "matched")
CLASSES = ["airplane", "automobile", "bird"]


def test_the_template_ships_the_scripts_dvc_asks_for_and_nothing_remote():
    page = (REPO / TEMPLATE).read_text()
    assert page_script_versions(page) == dvc_script_versions()  # else: python -m odk.offline_plots
    assert "{plot_divs}" in page and "{scripts}" not in page  # DVC adds no CDN tags
    assert remote_references(page) == []
    config = (REPO / ".dvc/config").read_text()
    assert "html_template = plots/offline.html" in config  # relative to .dvc/


def test_remote_references_finds_what_a_browser_would_fetch():
    page = (
        '<script src="https://cdn.jsdelivr.net/npm/vega@5.20.2"></script>'
        '<link rel="stylesheet" href="//fonts.example/x.css"><img src="static/a.png">'
        '<div style="background: url(https://img.example/b.png)"></div>'
        '<script>var spec = {"$schema": "https://vega.github.io/schema/vega-lite/v5.json"};'
        "</script>"
    )
    found = remote_references(page)
    assert len(found) == 3 and all("example" in f or "jsdelivr" in f for f in found)


def _dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.fixture(scope="module")
def plots_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DVC project with this repository's plot settings and a record for every plot."""
    root = tmp_path_factory.mktemp("plots")
    _dvc("init", "--no-scm", "-q", cwd=root)
    (root / ".dvc/config").write_text((REPO / ".dvc/config").read_text())
    shutil.copytree(REPO / ".dvc/plots", root / ".dvc/plots")
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    out = root / "plots/compare"
    out.mkdir(parents=True)
    curve = {kind: [([1, 2], [0.1, 0.2])] for kind in KINDS}
    for name in ("val_acc", "val_loss", "train_acc", "train_loss"):
        (out / f"{name}.json").write_text(json.dumps(curve_records(curve)))
    roc = [{"fpr": f, **{kind: f for kind in KINDS}} for f in (0.0, 0.5, 1.0)]
    (out / "roc.json").write_text(json.dumps(roc))
    never_bird = np.array([[0, 0], [1, 0], [2, 1]])  # no image is predicted a bird
    for kind in KINDS:
        records = confusion_records([never_bird], CLASSES)
        (out / f"confusion_{kind}.json").write_text(json.dumps(records))
    fig, _ = pyplot().subplots()
    save_figure(fig, out / "val_accuracy.png")
    fig, _ = pyplot().subplots()
    save_figure(fig, root / "plots/eval/odk/seed0/predictions.png")
    return root


def test_dvc_renders_every_plot_offline(plots_project: Path):
    shown = _dvc("plots", "show", cwd=plots_project)
    assert "failed" not in shown.stdout + shown.stderr
    page = (plots_project / "dvc_plots/index.html").read_text()
    assert remote_references(page) == []  # nothing to fetch: renders without network
    assert page_script_versions(page) == dvc_script_versions()
    assert page.count("vegaEmbed(") == 8 and page.count('<img src="static/') == 2


def test_confusion_matrix_is_square_over_every_class(plots_project: Path):
    shown = json.loads(_dvc("plots", "show", "--json", cwd=plots_project).stdout)
    (plot,) = shown["data"]["Confusion matrix, ODK (all seeds)"]
    spec = plot["content"]["spec"]
    assert spec["encoding"]["x"]["field"] == "predicted"  # columns: the predicted class
    assert spec["encoding"]["y"]["field"] == "actual"  # rows: the true class
    assert spec["encoding"]["x"]["title"] == "predicted class"
    values = plot["content"]["data"]["values"]
    assert {v["predicted"] for v in values} == set(CLASSES) == {v["actual"] for v in values}
    assert spec["transform"][0]["aggregate"] == [{"op": "sum", "field": "images", "as": "xy_count"}]
