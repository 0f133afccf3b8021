"""`odk grid`: the grid file, the experiments it queues, and a whole grid on a fake pipeline."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from odk.cli import main
from odk.errors import ConfigError
from odk.grid import dvc_commands, experiments, read_grid

from fakerepo import init_repo, run

REPO = Path(__file__).resolve().parents[1]


def test_the_repositorys_grid_is_the_research_grid():
    grid = read_grid(REPO / "results/grid.yaml")
    names = [e.name for e in experiments(grid)]
    assert names == [
        "full-default", "full-r8", "full-m-max", "scarce-default", "scarce-r8", "scarce-m-max"
    ]  # fmt: skip
    assert grid["seeds"] == [0, 1, 2]
    scarce_r8 = next(e for e in experiments(grid) if e.name == "scarce-r8")
    assert set(scarce_r8.overrides) == {
        "seeds=[0,1,2]",
        "data_module.subset_fraction=0.1",
        "model.r=8",
        "model.num_matrices=1",
    }


def test_commands_queue_every_experiment_then_start_the_queue():
    grid = {"seeds": [0], "regimes": {"a": {"x": 1}}, "variants": {"v": {"y": [3, 4]}, "w": None}}
    commands = dvc_commands(experiments(grid, extra=["max_epochs=2"]), jobs=3)
    assert commands == [
        ["dvc", "exp", "run", "--queue", "-n", "a-v", "-S", "seeds=[0]", "-S", "x=1", "-S",
         "y=[3,4]", "-S", "max_epochs=2"],
        ["dvc", "exp", "run", "--queue", "-n", "a-w", "-S", "seeds=[0]", "-S", "x=1", "-S",
         "max_epochs=2"],
        ["dvc", "queue", "start", "-j", "3"],
    ]  # fmt: skip
    assert [e.name for e in experiments(grid, only=["a-w"])] == ["a-w"]
    with pytest.raises(ConfigError, match="--only a-z is not in the grid; allowed: a-v, a-w"):
        experiments(grid, only=["a-z"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("seeds: [0]\n", "is not a grid file; allowed: a mapping of seeds"),
        ("seeds: 3\nregimes: {a: {}}\nvariants: {b: {}}\n", "seeds=3 in"),
        ("seeds: [0]\nregimes: []\nvariants: {b: {}}\n", "regimes in"),
        ("seeds: [0]\nregimes: {a: 1}\nvariants: {b: {}}\n", "regimes in"),
        ("[unclosed\n", "cannot read the grid file"),
    ],
)
def test_bad_grid_files_stop_with_one_line(tmp_path: Path, text: str, message: str):
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        read_grid(path)
    assert "\n" not in str(info.value)


@pytest.mark.slow
def test_a_grid_runs_as_queued_experiments_and_reports(tmp_path: Path, monkeypatch):
    repo = init_repo(tmp_path / "repo")
    grid = repo / "grid.yaml"
    grid.write_text(
        "seeds: [0, 1]\n"
        "regimes:\n"
        "  all: {data_module.subset_fraction: 1.0}\n"
        "  half: {data_module.subset_fraction: 0.5}\n"
        "variants: {r1: {model.r: 1}, r4: {model.r: 4}}\n"
    )
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", "grid")
    monkeypatch.chdir(repo)
    monkeypatch.setattr("odk.grid.POLL_SECONDS", 0.5)
    out = repo / "results"
    args = ["grid", "grid.yaml", "-o", str(out), "-j", "2", "--only", "all-r1", "half-r4"]
    assert main([*args, "--set", "max_epochs=5"]) == 0
    with (out / "experiments.csv").open() as handle:
        rows = {row["experiment"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"all-r1", "half-r4"}
    assert rows["half-r4"]["r"] == "4" and rows["half-r4"]["seeds"] == "0,1"
    # settings that differ get a column; max_epochs=5, the same in both, is in RUN.md
    assert float(rows["all-r1"]["subset_fraction"]) == 1.0
    assert float(rows["half-r4"]["subset_fraction"]) == 0.5
    assert rows["all-r1"]["verdict"] == "non-inferior"  # the fake: -0.01 +- 0.01
    assert rows["half-r4"]["verdict"] == "inconclusive"  # -0.04 +- 0.01 touches the margin
    record = (out / "RUN.md").read_text()
    assert "dvc exp run --queue -n half-r4 -S 'seeds=[0,1]'" in record
    assert "dvc queue start -j 2" in record and "max_epochs=5" in record
    assert "cores;" in record and "wall time of the whole grid" in record
