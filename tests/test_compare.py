"""The compare stage's readers: curves one value per epoch, speeds divided only when comparable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from odk.errors import OdkError
from odk.stages import Run
from odk.stages.compare import read_dvclive_curve, speed_not_comparable

CONDITIONS = {"device": "cpu", "device_name": "Some CPU", "threads": 2, "batch_size": 256}


def _write_curve(live_dir: Path, steps: list[int]) -> None:
    path = live_dir / "plots/metrics/val/acc.tsv"
    path.parent.mkdir(parents=True)
    rows = "".join(f"{step}\t0.{i}\n" for i, step in enumerate(steps))
    path.write_text("step\tacc\n" + rows)


def test_a_curve_is_read_per_epoch(tmp_path: Path):
    _write_curve(tmp_path, [1, 2, 3])
    assert read_dvclive_curve(tmp_path, "val/acc") == ([1, 2, 3], [0.0, 0.1, 0.2])


@pytest.mark.parametrize("steps", [[1, 1, 2], [0, 1], [3, 6]])  # optimizer steps, 0-based
def test_a_curve_not_per_epoch_is_refused(tmp_path: Path, steps: list[int]):
    _write_curve(tmp_path, steps)
    with pytest.raises(OdkError, match="is not one value per epoch 1, 2, ..."):
        read_dvclive_curve(tmp_path, "val/acc")


def _runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, conditions: dict) -> dict:
    monkeypatch.chdir(tmp_path)
    runs = {kind: [Run(kind, 0), Run(kind, 1)] for kind in ("baseline", "odk")}
    for kind_runs in runs.values():
        for run in kind_runs:
            timed = conditions.get(run.name, CONDITIONS)
            record = {"inference_images_per_s": 100.0}
            if timed is not None:
                record["inference"] = {"conditions": timed}
            run.test_record.parent.mkdir(parents=True)
            run.test_record.write_text(json.dumps(record))
    return runs


def test_speeds_timed_alike_are_comparable(tmp_path, monkeypatch):
    assert speed_not_comparable(_runs(tmp_path, monkeypatch, {})) is None


def test_speeds_timed_differently_are_not_divided(tmp_path, monkeypatch):
    other = {**CONDITIONS, "threads": 8}
    why = speed_not_comparable(_runs(tmp_path, monkeypatch, {"odk/seed1": other}))
    assert why == (
        "baseline/seed0 and odk/seed1 were timed under different conditions (threads 2 vs 8)"
    )


def test_speeds_without_conditions_are_not_divided(tmp_path, monkeypatch):
    why = speed_not_comparable(_runs(tmp_path, monkeypatch, {"baseline/seed1": None}))
    assert why == "baseline/seed1 recorded no timing conditions (rerun evaluate)"
