"""The training stage survives interruption and reproduces exactly on the CPU.

A run killed (SIGINT, SIGTERM or SIGKILL) after its first epoch and started again resumes from
the last completed epoch and ends with the same metrics and weights as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
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


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_rerun_is_bit_identical(split_repo: Path, reference: Path, tmp_path: Path):
    repo, env = copy_repo(split_repo, tmp_path)
    run([sys.executable, "-m", "odk.stages.train", "odk"], repo, env)
    _assert_same_run(reference, repo)
    # the file itself too (another PID wrote it): DVC sees the same md5, evaluate stays cached
    assert _md5(repo / "models/odk/seed42.ckpt") == _md5(reference / "models/odk/seed42.ckpt")
    assert (_metrics(repo)["seed"], _metrics(repo)["split_seed"]) == (42, 42) and len(
        _metrics(repo)["dataset_md5"]
    ) == 32
    assert "torch" in _metrics(repo)["versions"]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _kill_after_first_epoch(repo: Path, env: dict[str, str], sig: signal.Signals) -> Path:
    """Start training, send `sig` once epoch 1 is checkpointed; return the checkpoint."""
    last = repo / ".odk_state/train_odk_seed42/last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "odk.stages.train", "odk"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A shell's background job (`make test &`, nohup) starts with SIGINT ignored, and
        # the child would inherit that: give it the default, as a terminal's Ctrl-C has.
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + 600
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0, err[-2000:]
    return last


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_killed_run_resumes_from_last_epoch(
    split_repo: Path, reference: Path, tmp_path: Path, sig: signal.Signals
):
    repo, env = copy_repo(split_repo, tmp_path)
    _kill_after_first_epoch(repo, env, sig)
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


def test_an_unreadable_resume_checkpoint_starts_the_run_over(
    split_repo: Path, reference: Path, tmp_path: Path
):
    repo, env = copy_repo(split_repo, tmp_path)
    last = _kill_after_first_epoch(repo, env, signal.SIGKILL)
    last.write_bytes(last.read_bytes()[:1000])  # a disk error, a bad copy
    rerun = run([sys.executable, "-m", "odk.stages.train", "odk"], repo, env)
    warning = f"warning: cannot resume from {last.relative_to(repo)}: not a readable checkpoint"
    line = next(line for line in rerun.stderr.splitlines() if line.startswith("warning: cannot"))
    assert line.startswith(warning) and line.endswith("; training starts over")
    assert "weights_only" not in line and "Resuming" not in rerun.stderr
    _assert_same_run(reference, repo)  # started over: the uninterrupted run's result


def test_a_killed_write_leaves_no_debris_after_the_next_run(
    split_repo: Path, tmp_path: Path, dead_pid: int
):
    repo, env = copy_repo(split_repo, tmp_path)
    debris = [
        repo / f"models/odk/.seed42.{dead_pid}.tmp.ckpt",  # a model file half copied
        repo / f"metrics/runs/odk/seed42/.train.{dead_pid}.tmp.json",
        repo / f"plots/train/odk/.seed42.tmp-{dead_pid}/metrics.json",
    ]
    for path in debris:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"partial")
    run([sys.executable, "-m", "odk.stages.train", "odk", "max_epochs=1"], repo, env)
    folders = ("models/odk", "metrics/runs/odk/seed42", "plots/train/odk")
    left = [p for folder in folders for p in (repo / folder).iterdir()]
    assert sorted(p.name for p in left) == ["seed42", "seed42.ckpt", "train.json"]


# The train stage, with copying into models/ failing as on a full disk.
FULL_DISK = """
import runpy, shutil
copy = shutil.copyfile
def copyfile(src, dst, *args, **kwargs):
    if str(dst).startswith("models"):
        raise OSError(28, "No space left on device", str(dst))
    return copy(src, dst, *args, **kwargs)
shutil.copyfile = copyfile
runpy.run_module("odk.stages.train", run_name="__main__")
"""


def _outputs(repo: Path) -> dict[str, bytes]:
    roots = [repo / "models", repo / "metrics", repo / "plots/train/odk"]
    return {
        str(p.relative_to(repo)): p.read_bytes() for r in roots for p in r.rglob("*") if p.is_file()
    }


def test_outputs_change_together_or_not_at_all(reference: Path, tmp_path: Path):
    repo, env = copy_repo(reference, tmp_path)
    before = _outputs(repo)
    args = ["odk", "--seed", "42", "learning_rate=0.002", "max_epochs=1"]  # another model
    failed = run([sys.executable, "-c", FULL_DISK, *args], repo, env, check=False)
    assert failed.returncode != 0 and "No space left on device" in failed.stderr
    assert _outputs(repo) == before  # not the new curves beside the old model and metrics
    rerun = run([sys.executable, "-m", "odk.stages.train", *args], repo, env)
    assert "Resuming" in rerun.stderr  # the finished run is published, not trained again
    after = _outputs(repo)
    assert after.keys() == before.keys()
    assert all(
        after[k] != before[k]
        for k in ("models/odk/seed42.ckpt", "metrics/runs/odk/seed42/train.json")
    )
