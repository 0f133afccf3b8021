"""What a training stage shows: its own lines and a progress bar; curves with x = epoch.

The real stage runs as a user runs it (`python -m odk.stages.train`) on a tiny repository, with
one and with three training batches per epoch: the learning curves must hold one value per
epoch, at x = 1, 2, whatever the number of batches (Lightning's own step would give 1, 2 and
3, 6).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from e2e import copy_repo, dvc, make_tiny_repo, run

pytestmark = pytest.mark.slow
CURVES = ("train/loss", "train/acc", "val/loss", "val/acc")
PROGRESS = re.compile(r"^(Epoch [12]/2 .*━.*|\s+(val|train)/\w+: [\d.]+)\s*$")


@pytest.fixture(scope="module")
def split_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny repo (90 training images, batches of 32: 3 per epoch), data stages run."""
    repo, env = make_tiny_repo(tmp_path_factory.mktemp("split"), max_epochs=2, seeds=(42,))
    dvc("repro", "split", cwd=repo, env=env)
    return repo


@pytest.fixture(scope="module", params=[1, 3])
def trained(request, split_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """A training run with 1 or 3 batches per epoch: (repo, stdout, stderr)."""
    repo, env = copy_repo(split_repo, tmp_path_factory.mktemp(f"batches{request.param}"))
    limit = f"trainer.limit_train_batches={request.param}"
    proc = run([sys.executable, "-m", "odk.stages.train", "baseline", limit], repo, env)
    return repo, proc.stdout, proc.stderr


def test_every_learning_curve_has_one_value_per_epoch(trained):
    repo, _, _ = trained
    for curve in CURVES:
        table = repo / "plots/train/baseline/seed42/plots/metrics" / f"{curve}.tsv"
        lines = table.read_text().splitlines()
        assert lines[0] == f"step\t{curve.split('/')[1]}"
        assert [line.split("\t")[0] for line in lines[1:]] == ["1", "2"], curve


def test_the_stage_prints_what_it_does_its_progress_and_its_result(trained):
    _, out, err = trained
    assert err == ""  # no device summary, tips, model table or warnings
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0] == (
        "train: baseline/seed42: dense resnet18, 11,173,962 trainable parameters; 90 training "
        "and 10 validation images; 2 epochs on 1 cpu device"
    )
    assert re.fullmatch(
        r"train: baseline/seed42 done in [\d.]+ s: best validation accuracy [\d.]+ at epoch "
        r"[12] of 2 -> models/baseline/seed42.ckpt",
        lines[-1],
    )
    progress = lines[1:-1]
    assert progress and all(PROGRESS.match(line) for line in progress), progress
    assert any(line.startswith("Epoch 2/2 ") for line in progress)  # counted from 1
