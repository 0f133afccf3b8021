"""End-to-end: the real `dvc repro` and `dvc exp run` on a tiny synthetic CIFAR-10 archive.

The repository is copied into a temporary git repo, `params.yaml` is pointed at an archive
written by `odk.synthetic` and shrunk to one short epoch, and the whole pipeline runs as a
user would run it. Slow (about a minute on 2 CPU cores), so it is marked `slow`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from e2e import copy_repo, dvc

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_repo(reproduced_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """This module's own copy of the reproduced repo (the last test changes it)."""
    return copy_repo(reproduced_repo, tmp_path_factory.mktemp("pipeline"))


def load(repo: Path, rel: str) -> dict:
    return json.loads((repo / rel).read_text())


def test_repro_writes_every_contract_key(pipeline_repo):
    repo, _ = pipeline_repo
    for kind in ("baseline", "odk"):
        metrics = load(repo, f"metrics/{kind}.json")
        for key in (
            "test_accuracy",
            "test_roc_auc",
            "trainable_params",
            "test_f1_macro",
            "test_loss",
            "inference_images_per_s",
            "model_file_bytes",
            "seed",
            "dataset_md5",
            "versions",
        ):
            assert key in metrics, (kind, key)
        assert 0.0 <= metrics["test_accuracy"] <= 1.0
        assert 0.0 <= metrics["test_roc_auc"] <= 1.0
        per_class = load(repo, f"metrics/{kind}_per_class.json")
        assert len(per_class) == 10 and {"precision", "recall", "f1"} <= set(per_class["cat"])
        train = load(repo, f"metrics/train_{kind}.json")
        assert train["training_time_s"] > 0 and train["best_epoch"] == 0
    assert load(repo, "metrics/baseline.json")["trainable_params"] == 11_173_962
    compare = load(repo, "metrics/compare.json")
    assert {"accuracy_delta", "roc_auc_delta", "params_ratio", "within_tolerance"} <= set(compare)
    base, odk = load(repo, "metrics/baseline.json"), load(repo, "metrics/odk.json")
    assert compare["accuracy_delta"] == pytest.approx(odk["test_accuracy"] - base["test_accuracy"])
    assert compare["params_ratio"] == pytest.approx(
        odk["trainable_params"] / base["trainable_params"], rel=1e-5
    )
    assert compare["params_ratio"] < 0.5
    assert (repo / "metrics/compare.md").read_text().startswith("# ODK vs baseline")
    assert "test accuracy" in (repo / "metrics/compare.csv").read_text()


def test_repro_writes_every_plot(pipeline_repo):
    repo, env = pipeline_repo
    for kind in ("baseline", "odk"):
        for rel in ("confusion.json", "roc.json", "roc_per_class.png", "predictions.png"):
            assert (repo / "plots" / kind / rel).stat().st_size > 0
        curve = repo / f"plots/train/{kind}/plots/metrics/val/acc.tsv"
        assert curve.read_text().splitlines()[0].split("\t")[-1] == "acc"
    assert (repo / "plots/compare/val_accuracy.png").stat().st_size > 0
    out = dvc("plots", "show", "--json", cwd=repo, env=env).stdout
    rendered = json.loads(out)["data"]
    assert {
        "Confusion matrix, ODK",
        "ROC curve, macro average of one-vs-rest",
        "Validation accuracy per step",
        "plots/odk/predictions.png",
    } <= set(rendered)
    assert "errors" not in json.dumps(rendered)


def test_metrics_show_and_repro_is_a_noop(pipeline_repo):
    repo, env = pipeline_repo
    shown = dvc("metrics", "show", "--json", cwd=repo, env=env).stdout
    assert "test_roc_auc" in shown and "within_tolerance" in shown
    status = dvc("status", cwd=repo, env=env).stdout
    assert "up to date" in status, status


def test_exp_run_retrains_only_odk_and_metrics_diff_shows_it(pipeline_repo):
    repo, env = pipeline_repo
    proc = dvc("exp", "run", "-S", "model.r=2", cwd=repo, env=env)
    log = proc.stdout + proc.stderr
    assert "Running stage 'train_odk'" in log
    assert "Running stage 'train_baseline'" not in log
    assert "Running stage 'evaluate@baseline'" not in log
    diff = json.loads(dvc("metrics", "diff", "--json", cwd=repo, env=env).stdout)
    assert "trainable_params" in diff["metrics/odk.json"]
    change = diff["metrics/odk.json"]["trainable_params"]
    assert change["new"] < change["old"]  # r=2 halves the orthogonal blocks' free entries
    assert (
        "metrics/baseline.json" not in diff or "test_accuracy" not in diff["metrics/baseline.json"]
    )
