"""`odk report` on a real git + DVC repository whose one stage fakes the pipeline's metrics.

The stage derives consistent numbers from params.yaml (no training), so three runs (a commit
and two `dvc exp run -S ...` experiments) give three distinct points with known values.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from odk.cli import main
from odk.report import differing_settings, point_label, write_report

PARAMS = """\
data_module:
  subset_fraction: 1.0
model:
  odk_layers: [3, 4]
  num_matrices: 1
  r: 1
compare:
  max_accuracy_drop: 0.03
"""

# accuracy falls by 0.01 per unit of r; the ODK model has 1e6 / r parameters
FAKE_STAGE = """\
import json, pathlib, yaml
p = yaml.safe_load(open("params.yaml"))
r, tol = p["model"]["r"], p["compare"]["max_accuracy_drop"]
base = {"test_accuracy": 0.9 * p["data_module"]["subset_fraction"], "test_roc_auc": 0.99,
        "trainable_params": 11173962, "model_file_bytes": 44_000_000}
odk = {"test_accuracy": base["test_accuracy"] - 0.01 * r, "test_roc_auc": 0.98,
       "trainable_params": 1_000_000 // r, "model_file_bytes": 4_000_000 // r}
delta = odk["test_accuracy"] - base["test_accuracy"]
compare = {"accuracy_delta": delta, "roc_auc_delta": -0.01,
           "params_ratio": odk["trainable_params"] / base["trainable_params"],
           "within_tolerance": delta >= -tol, "max_accuracy_drop": tol,
           "model_file_ratio": odk["model_file_bytes"] / base["model_file_bytes"]}
pathlib.Path("metrics").mkdir(exist_ok=True)
for name, data in (("baseline", base), ("odk", odk), ("compare", compare)):
    pathlib.Path(f"metrics/{name}.json").write_text(json.dumps(data))
"""

DVC_YAML = """\
stages:
  fake:
    cmd: {python} fake_stage.py
    deps: [fake_stage.py]
    params: [model, data_module, compare]
    metrics:
      - metrics/baseline.json
      - metrics/odk.json
      - metrics/compare.json
"""


def _run(repo: Path, *args: str) -> None:
    env = os.environ | {
        "GIT_AUTHOR_NAME": "odk test",
        "GIT_AUTHOR_EMAIL": "test@odk.invalid",
        "GIT_COMMITTER_NAME": "odk test",
        "GIT_COMMITTER_EMAIL": "test@odk.invalid",
        "DVC_NO_ANALYTICS": "1",
    }
    cmd = list(args) if args[0] == "git" else [sys.executable, "-m", "dvc", *args]
    subprocess.run(cmd, cwd=repo, env=env, check=True, capture_output=True, text=True)


def _init_repo(repo: Path) -> Path:
    """A committed git + DVC repository holding the fake stage, not yet run."""
    repo.mkdir()
    (repo / "params.yaml").write_text(PARAMS)
    (repo / "fake_stage.py").write_text(FAKE_STAGE)
    (repo / "dvc.yaml").write_text(DVC_YAML.format(python=sys.executable))
    _run(repo, "git", "init", "-q", "-b", "main")
    _run(repo, "init", "-q")
    (repo / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-q", "-m", "pipeline without results")
    return repo


@pytest.fixture(scope="module")
def exp_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A commit with results (r=1) and two experiments: r=2, and r=4 on half the data."""
    repo = _init_repo(tmp_path_factory.mktemp("report") / "repo")
    _run(repo, "repro", "-q")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-q", "-m", "results for r=1")
    _run(repo, "exp", "run", "-q", "-n", "r2", "-S", "model.r=2")
    half = ["-S", "model.r=4", "-S", "data_module.subset_fraction=0.5"]  # the baseline moves too
    _run(repo, "exp", "run", "-q", "-n", "r4-half", *half)
    return repo


def _read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as handle:
        return {row["experiment"]: row for row in csv.DictReader(handle)}


def test_report_has_one_row_per_experiment(exp_repo: Path, tmp_path: Path) -> None:
    assert main(["report", "--repo", str(exp_repo), "-o", str(tmp_path / "out")]) == 0
    rows = _read_csv(tmp_path / "out" / "experiments.csv")
    # the workspace repeats the last experiment; the first commit has no metrics
    assert set(rows) == {"main", "r2", "r4-half"}
    assert {name: rows[name]["r"] for name in rows} == {"main": "1", "r2": "2", "r4-half": "4"}
    assert float(rows["r2"]["odk_accuracy"]) == pytest.approx(0.88)
    assert float(rows["r2"]["accuracy_delta"]) == pytest.approx(-0.02)
    assert int(rows["r2"]["odk_params"]) == 500_000
    assert int(rows["main"]["baseline_params"]) == 11173962
    assert rows["r4-half"]["within_tolerance"] == "False"
    assert rows["r2"]["within_tolerance"] == "True"
    assert rows["r2"]["type"] == "experiment" and rows["main"]["type"] == "commit"


def test_report_writes_markdown_and_png(exp_repo: Path, tmp_path: Path) -> None:
    assert main(["report", "--repo", str(exp_repo), "-o", str(tmp_path)]) == 0
    text = (tmp_path / "experiments.md").read_text()
    assert "settings that differ: r, subset_fraction." in text
    assert "| r4-half " in text and "![test accuracy vs trainable parameters]" in text
    assert "Left out, no metrics in the workspace or DVC cache: " in text  # the first commit
    png = (tmp_path / "accuracy_vs_params.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_points_and_baselines_carry_their_differing_settings(
    exp_repo: Path, tmp_path: Path
) -> None:
    labels = write_report(exp_repo, tmp_path)["labels"]
    assert sorted(labels) == [
        "baseline subset_fraction=0.5",
        "baseline subset_fraction=1.0",
        "r=1, subset_fraction=1.0",
        "r=2, subset_fraction=1.0",
        "r=4, subset_fraction=0.5",
    ]


def test_report_prints_a_summary(
    exp_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--repo", str(exp_repo), "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "r4-half" in out and str(tmp_path / "experiments.csv") in out


@pytest.mark.parametrize(
    ("values", "differing", "label"),
    [
        ({"r": [1, 2]}, ["r"], "r=1"),
        ({"r": [1, 1]}, [], "exp0"),
        (
            {"r": [1, 2], "subset_fraction": [1.0, 0.5]},
            ["r", "subset_fraction"],
            "r=1, subset_fraction=1.0",
        ),
        ({"odk_layers": ["[3, 4]", "[4]"]}, ["odk_layers"], "odk_layers=[3, 4]"),
    ],
)
def test_points_are_labelled_by_the_settings_that_differ(
    values: dict[str, list], differing: list[str], label: str
) -> None:
    base = {"r": 1, "num_matrices": 1, "odk_layers": "[3, 4]", "subset_fraction": 1.0}
    rows = [base | {"experiment": f"exp{i}"} | {k: v[i] for k, v in values.items()} for i in (0, 1)]
    assert differing_settings(rows) == differing
    assert point_label(rows[0], differing) == label


def test_report_without_metrics_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = _init_repo(tmp_path / "repo")
    assert main(["report", "--repo", str(repo), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no experiment") and "dvc repro" in err
    assert not (tmp_path / "out").exists()


def test_report_outside_a_dvc_repository_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--repo", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: cannot read the experiments")
