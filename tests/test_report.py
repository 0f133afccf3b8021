"""`odk report` on a real git + DVC repository whose one stage fakes the pipeline's metrics.

The stage (`fakerepo`) derives consistent numbers from params.yaml (no training), so a commit
and a few `dvc exp run -S ...` experiments give distinct rows with known values.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from odk.cli import main
from odk.report import columns_for, differing_settings, point_label, write_report

from fakerepo import init_repo, run


@pytest.fixture(scope="module")
def exp_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A commit with results (r=1) and experiments: r=2 with seed 0, r=2 with seeds 1 and 2
    (replicates of one setting), r=4 on half the data, and r=1 trained for 40 epochs."""
    repo = init_repo(tmp_path_factory.mktemp("report") / "repo")
    run(repo, "repro", "-q")
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-q", "-m", "results for r=1")
    # `dvc exp run -S` leaves its settings in the workspace: each run sets all it changes
    for name, settings in (
        ("r2", ["model.r=2"]),
        ("r2-more", ["model.r=2", "seeds=[1,2]"]),
        ("r5-half", ["model.r=5", "data_module.subset_fraction=0.5"]),  # the baseline moves too
        ("long", ["max_epochs=40"]),
    ):
        run(repo, "git", "checkout", "-q", "--", "params.yaml")
        run(repo, "exp", "run", "-q", "-n", name, *[a for s in settings for a in ("-S", s)])
    return repo


def _read_csv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as handle:
        return {row["experiment"]: row for row in csv.DictReader(handle)}


def test_report_has_one_row_per_setting(exp_repo: Path, tmp_path: Path) -> None:
    assert main(["report", "--repo", str(exp_repo), "-o", str(tmp_path / "out")]) == 0
    rows = _read_csv(tmp_path / "out" / "experiments.csv")
    # the workspace repeats the last experiment; the first commit has no metrics
    assert set(rows) == {"main", "r2, r2-more", "r5-half", "long"}
    assert {n: rows[n]["r"] for n in rows} == {
        "main": "1",
        "r2, r2-more": "2",
        "r5-half": "5",
        "long": "1",
    }
    assert rows["long"]["max_epochs"] == "40" and rows["main"]["max_epochs"] == "20"
    main_row = rows["main"]
    assert float(main_row["odk_accuracy"]) == pytest.approx(0.89)
    assert float(main_row["delta"]) == pytest.approx(-0.01)
    assert (float(main_row["ci95_low"]), float(main_row["ci95_high"])) == pytest.approx(
        (-0.02, 0.0)
    )
    assert main_row["verdict"] == "non-inferior" and main_row["n_seeds"] == "1"
    assert float(main_row["matched_delta"]) == pytest.approx(0.01)
    assert int(main_row["odk_params"]) == 1_000_000 and int(main_row["matched_params"]) == 1_000_010
    assert int(main_row["baseline_params"]) == 11173962
    assert rows["r5-half"]["verdict"] == "inferior"  # -0.05 +- 0.01 is below -0.03
    assert main_row["type"] == "commit" and rows["long"]["type"] == "experiment"


def test_replicates_are_pooled_over_their_seeds(exp_repo: Path, tmp_path: Path) -> None:
    write_report(exp_repo, tmp_path)
    row = _read_csv(tmp_path / "experiments.csv")["r2, r2-more"]
    assert row["seeds"] == "0,1,2" and row["n_seeds"] == "3"
    assert float(row["baseline_accuracy"]) == pytest.approx(0.902)  # 0.900, 0.902, 0.904
    assert float(row["baseline_std"]) == pytest.approx(0.002)
    assert float(row["delta"]) == pytest.approx(-0.02)
    # every seed's delta is -0.02: a t-interval over the three seeds has zero width
    assert float(row["ci95_low"]) == pytest.approx(-0.02) == float(row["ci95_high"])
    assert row["verdict"] == "non-inferior"


def test_report_writes_markdown_and_png(exp_repo: Path, tmp_path: Path) -> None:
    assert main(["report", "--repo", str(exp_repo), "-o", str(tmp_path)]) == 0
    text = (tmp_path / "experiments.md").read_text()
    assert "settings that differ: r, subset_fraction, max_epochs." in text
    assert "| r5-half " in text and "![test accuracy vs trainable parameters]" in text
    assert "Left out, no metrics in the workspace or DVC cache: " in text  # the first commit
    png = (tmp_path / "accuracy_vs_params.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_points_and_baselines_carry_their_differing_settings(
    exp_repo: Path, tmp_path: Path
) -> None:
    labels = write_report(exp_repo, tmp_path)["labels"]
    # main and long share their (fake) accuracies, so their points share one annotation
    assert sorted(labels) == [
        "baseline subset_fraction=0.5, max_epochs=20",
        "baseline subset_fraction=1.0, max_epochs=20",  # r2's pooled seeds: another baseline
        "baseline subset_fraction=1.0, max_epochs=40",
        "r=1, subset_fraction=1.0, max_epochs=40; r=1, subset_fraction=1.0, max_epochs=20",
        "r=2, subset_fraction=1.0, max_epochs=20",
        "r=5, subset_fraction=0.5, max_epochs=20",
    ]


def test_report_prints_a_summary(
    exp_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--repo", str(exp_repo), "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "r5-half" in out and "inferior" in out and str(tmp_path / "experiments.csv") in out


def test_labels_name_every_setting_that_differs() -> None:
    base = {"seeds": "[0]", "model.r": 1, "max_epochs": 10, "dataset.name": "cifar10"}
    experiments = [
        {"params": base},
        {"params": base | {"max_epochs": 20, "seeds": "[1]"}},
        {"params": base | {"model.r": 2}},
    ]
    assert differing_settings(experiments) == ["max_epochs", "model.r"]  # not seeds
    columns = list(columns_for(experiments))
    assert columns == ["r", "num_matrices", "odk_layers", "subset_fraction", "max_epochs"]
    row = {"experiment": "x", "r": 2, "max_epochs": 10}
    assert point_label(row, ["r", "max_epochs"]) == "r=2, max_epochs=10"
    assert point_label(row, []) == "x"


def test_report_without_metrics_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = init_repo(tmp_path / "repo")
    assert main(["report", "--repo", str(repo), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no experiment") and "dvc repro" in err
    assert not (tmp_path / "out").exists()


def test_report_outside_a_dvc_repository_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "--repo", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: cannot read the experiments")
