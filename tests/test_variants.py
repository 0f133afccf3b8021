"""Bad variants stop in seconds with one line naming the setting; a queued grid survives one.

Also: forcing the whole pipeline again on the same settings reproduces every metric exactly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from e2e import copy_repo, dvc

pytestmark = pytest.mark.slow
# timings, and the timing record of evaluate (passes, load): the machine's, not the model's
NOT_REPRODUCIBLE = {"training_time_s", "inference_images_per_s", "inference_speed_ratio"}
NOT_REPRODUCIBLE |= {"inference"}


@pytest.mark.parametrize(
    ("override", "setting"),
    [
        ("model.r=3", "model.r"),
        ("model.odk_layers=[5]", "model.odk_layers"),
        ("data_module.valid_size=0", "data_module.valid_size"),
        ("baseline_name=vgg", "baseline_name"),
    ],
)
def test_bad_variant_fails_fast_with_one_line(
    reproduced_repo: Path, tmp_path: Path, override: str, setting: str
):
    repo, env = copy_repo(reproduced_repo, tmp_path)
    proc = dvc("exp", "run", "-S", override, cwd=repo, env=env, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and setting in errors[0] and "allowed" in errors[0], output
    assert not list(repo.glob(".odk_state/train_*"))  # no training began


def _strip(obj: Any) -> Any:
    if not isinstance(obj, dict):
        return obj
    return {k: v for k, v in obj.items() if k not in NOT_REPRODUCIBLE}


def test_forced_rerun_reproduces_every_metric(reproduced_repo: Path, tmp_path: Path):
    repo, env = copy_repo(reproduced_repo, tmp_path)
    kinds, seeds = ("baseline", "odk", "matched"), (0, 1)
    stages = [f"train_{kind}@{seed}" for kind in kinds for seed in seeds]
    stages += [f"evaluate@{kind}-{seed}" for kind in kinds for seed in seeds] + ["compare"]
    dvc("repro", "--force", "--single-item", *stages, cwd=repo, env=env)
    files = sorted((reproduced_repo / "metrics").rglob("*.json"))
    assert len(files) >= 4 + 3 * 2 * 4  # 4 metrics files, 4 records per run
    for before in files:
        after = repo / before.relative_to(reproduced_repo)
        assert _strip(json.loads(before.read_text())) == _strip(json.loads(after.read_text()))
    for before in (reproduced_repo / "metrics/runs").rglob("predictions.npy"):
        assert before.read_bytes() == (repo / before.relative_to(reproduced_repo)).read_bytes()


def test_queued_grid_runs_good_variants_despite_a_bad_one(reproduced_repo: Path, tmp_path: Path):
    repo, env = copy_repo(reproduced_repo, tmp_path)
    dvc("exp", "run", "--queue", "-S", "model.r=2,3", cwd=repo, env=env)
    dvc("queue", "start", cwd=repo, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = dvc("queue", "status", cwd=repo, env=env).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    dvc("queue", "stop", "--kill", cwd=repo, env=env, check=False)
    assert status.count("Success") == 1 and status.count("Failed") == 1, status
    shown = json.loads(dvc("exp", "show", "--json", cwd=repo, env=env).stdout)
    assert "model.r" in json.dumps(shown) or '"r": 2' in json.dumps(shown)
