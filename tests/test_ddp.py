"""Several processes train together: Lightning's DDP on the CPU (gloo), two ranks.

The real train stage runs with `trainer.accelerator=cpu trainer.devices=2 trainer.strategy=ddp`
(Lightning starts rank 1 by running the same command again). A `sitecustomize` on the test's
PYTHONPATH records, in every process of the run, which training images each rank fetched and
which outputs it wrote, so the test sees the ranks from outside.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from e2e import copy_repo, dvc, make_tiny_repo, run

pytestmark = pytest.mark.slow
DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
TRAIN = [sys.executable, "-m", "odk.stages.train", "odk", "--seed", "0", *DDP]

RECORDER = """
import json, os
if os.environ.get("ODK_TEST_TRACE"):
    import odk.atomic, odk.data
    rank = os.environ.get("LOCAL_RANK", "0")  # Lightning sets it for the ranks it starts
    def log(**record):
        with open(os.path.join(os.environ["ODK_TEST_TRACE"], f"rank{rank}.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\\n")
    atomic_file, atomic_dir = odk.atomic.atomic_file, odk.atomic.atomic_dir
    def traced_file(path, *args):
        log(wrote=str(path))
        return atomic_file(path, *args)
    def traced_dir(path, *args, **kwargs):
        log(wrote=str(path))
        return atomic_dir(path, *args, **kwargs)
    odk.atomic.atomic_file, odk.atomic.atomic_dir = traced_file, traced_dir
    getitems = odk.data._InMemory.__getitems__
    def traced_getitems(self, indices):
        log(split_size=len(self), indices=[int(i) for i in indices])
        return getitems(self, indices)
    odk.data._InMemory.__getitems__ = traced_getitems
"""


@pytest.fixture(scope="module")
def split_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny repo (90 training images, two epochs) with the data stages run."""
    repo, env = make_tiny_repo(tmp_path_factory.mktemp("ddp_split"), max_epochs=2)
    dvc("repro", "split", cwd=repo, env=env)
    return repo


def _traced_env(repo: Path, env: dict[str, str], trace: Path) -> dict[str, str]:
    hooks = trace.parent / "hooks"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(RECORDER)
    trace.mkdir()
    return {**env, "PYTHONPATH": f"{repo / 'src'}{os.pathsep}{hooks}", "ODK_TEST_TRACE": str(trace)}


@pytest.fixture(scope="module")
def ddp_run(split_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An uninterrupted two-rank run: the repo and its trace folder."""
    root = tmp_path_factory.mktemp("ddp_run")
    repo, env = copy_repo(split_repo, root)
    trace = root / "trace"
    run(TRAIN, repo, _traced_env(repo, env, trace))
    return repo, trace


def _records(trace: Path, rank: int) -> list[dict]:
    path = trace / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_ddp_training_finishes_and_only_rank_zero_writes(ddp_run: tuple[Path, Path]):
    repo, trace = ddp_run
    written = {r["wrote"] for r in _records(trace, 0) if "wrote" in r}
    outputs = {"models/odk/seed0.ckpt", "metrics/runs/odk/seed0/train.json"}
    outputs.add("plots/train/odk/seed0")
    assert outputs <= written
    assert [r for r in _records(trace, 1) if "wrote" in r] == []  # rank 1 wrote nothing
    metrics = json.loads((repo / "metrics/runs/odk/seed0/train.json").read_text())
    assert metrics["epochs"] == 2 and metrics["best_epoch"] in (1, 2)
    assert torch.load(repo / "models/odk/seed0.ckpt", weights_only=True)["format"] == "odk-model"
    assert (repo / "plots/train/odk/seed0/metrics.json").is_file()
    assert not (repo / ".odk_state").exists()


def test_ddp_ranks_see_disjoint_shards(ddp_run: tuple[Path, Path]):
    _, trace = ddp_run
    epochs = {}
    for rank in (0, 1):
        seen = [i for r in _records(trace, rank) if r.get("split_size") == 90 for i in r["indices"]]
        assert len(seen) == 2 * 45  # two epochs of half the 90 training images each
        epochs[rank] = [seen[:45], seen[45:]]
    for epoch in range(2):
        first, second = set(epochs[0][epoch]), set(epochs[1][epoch])
        assert not first & second and first | second == set(range(90))
    assert epochs[0][0] != epochs[0][1]  # reshuffled every epoch


def test_a_ddp_run_killed_after_an_epoch_resumes(
    split_repo: Path, ddp_run: tuple[Path, Path], tmp_path: Path
):
    repo, env = copy_repo(split_repo, tmp_path)
    last = repo / ".odk_state/train_odk_seed0/last.ckpt"
    # Its own session: the kill takes both ranks, as a lost machine would.
    proc = subprocess.Popen(TRAIN, cwd=repo, env=env, start_new_session=True)
    deadline = time.monotonic() + 600
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (repo / "models/odk/seed0.ckpt").exists()

    resumed = run(TRAIN, repo, env)
    assert "Resuming odk/seed0 training from" in resumed.stderr
    reference, _ = ddp_run
    timing = {"training_time_s"}
    got, expected = (
        json.loads((r / "metrics/runs/odk/seed0/train.json").read_text()) for r in (repo, reference)
    )
    assert {k: v for k, v in got.items() if k not in timing} == {
        k: v for k, v in expected.items() if k not in timing
    }
    weights = [
        torch.load(r / "models/odk/seed0.ckpt", weights_only=True)["state_dict"]
        for r in (repo, reference)
    ]
    for key in weights[1]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0, msg=key)
