"""The training stage survives interruption and reproduces exactly on the CPU.

A run killed (SIGINT, SIGTERM or SIGKILL) after its first epoch and started again resumes from
the last completed epoch and ends with the same metrics and weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from e2e import copy_repo, dvc, make_tiny_repo, run

pytestmark = pytest.mark.slow
TIMING = {"training_time_s"}


@pytest.fixture(scope="module")
def split_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny repo with two epochs configured and the data stages already run."""
    repo, env = make_tiny_repo(tmp_path_factory.mktemp("split"), max_epochs=2, seeds=(42,))
    dvc("repro", "split", cwd=repo, env=env)
    return repo


@pytest.fixture(scope="module")
def reference(split_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted training run."""
    repo, env = copy_repo(split_repo, tmp_path_factory.mktemp("reference"))
    run([sys.executable, "-m", "odk.stages.train", "odk"], repo, env)
    return repo


def _metrics(repo: Path) -> dict:
    data = json.loads((repo / "metrics/runs/odk/seed42/train.json").read_text())
    return {k: v for k, v in data.items() if k not in TIMING}


def _weights(repo: Path) -> dict[str, torch.Tensor]:
    return torch.load(repo / "models/odk/seed42.ckpt", weights_only=True)["state_dict"]


def _assert_same_run(a: Path, b: Path) -> None:
    assert _metrics(a) == _metrics(b)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)


def test_rerun_is_bit_identical(split_repo: Path, reference: Path, tmp_path: Path):
    repo, env = copy_repo(split_repo, tmp_path)
    run([sys.executable, "-m", "odk.stages.train", "odk"], repo, env)
    _assert_same_run(reference, repo)
    assert (_metrics(repo)["seed"], _metrics(repo)["split_seed"]) == (42, 42) and len(
        _metrics(repo)["dataset_md5"]
    ) == 32
    assert "torch" in _metrics(repo)["versions"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_killed_run_resumes_from_last_epoch(
    split_repo: Path, reference: Path, tmp_path: Path, sig: signal.Signals
):
    repo, env = copy_repo(split_repo, tmp_path)
    last = repo / ".odk_state/train_odk_seed42/last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "odk.stages.train", "odk"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, err[-2000:]
    assert not (repo / "models/odk/seed42.ckpt").exists()  # nothing half-done published
    assert not (repo / "metrics/runs/odk/seed42/train.json").exists()

    resumed = run([sys.executable, "-m", "odk.stages.train", "odk"], repo, env)
    assert "Resuming odk/seed42 training from" in resumed.stderr
    _assert_same_run(reference, repo)
    assert not (repo / ".odk_state/train_odk_seed42").exists()  # state cleared once published


def test_changed_settings_do_not_resume_a_stale_run(split_repo: Path, tmp_path: Path):
    repo, env = copy_repo(split_repo, tmp_path)
    state = repo / ".odk_state/train_odk_seed42"
    state.mkdir(parents=True)
    (state / "fingerprint").write_text("settings of another run")
    (state / "last.ckpt").write_bytes(b"not a checkpoint")
    out = run([sys.executable, "-m", "odk.stages.train", "odk", "max_epochs=1"], repo, env)
    assert "Resuming" not in out.stderr
    assert json.loads((repo / "metrics/runs/odk/seed42/train.json").read_text())["epochs"] == 1
