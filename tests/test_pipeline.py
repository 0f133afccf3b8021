"""End-to-end: the real `dvc repro` and `dvc exp run` on a tiny synthetic CIFAR-10 archive.

The repository is copied into a temporary git repo, `params.yaml` is pointed at an archive
written by `odk.synthetic`, shrunk to one short epoch and two training seeds, and the whole
pipeline runs as a user would run it. Slow (minutes on 2 CPU cores), so it is marked `slow`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from odk.offline_plots import remote_references
from odk.stats import VERDICTS

from e2e import copy_repo, dvc

pytestmark = pytest.mark.slow
KINDS = ("baseline", "odk", "matched")
SEEDS = (0, 1)
MODEL_KEYS = {
    "test_accuracy",
    "test_accuracy_std",
    "test_roc_auc",
    "test_f1_macro",
    "trainable_params",
    "inference_images_per_s",
    "training_time_s",
    "n_seeds",
}
TABLE_ONLY = {"test_loss", "model_file_bytes", "best_val_acc"}  # compare.md/.csv, run records


@pytest.fixture(scope="module")
def pipeline_repo(reproduced_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """This module's own copy of the reproduced repo (the last test changes it)."""
    return copy_repo(reproduced_repo, tmp_path_factory.mktemp("pipeline"))


def load(repo: Path, rel: str) -> dict:
    return json.loads((repo / rel).read_text())


def test_every_model_runs_once_per_seed(pipeline_repo):
    repo, _ = pipeline_repo
    for kind in KINDS:
        for seed in SEEDS:
            assert (repo / f"models/{kind}/seed{seed}.ckpt").stat().st_size > 0
            record = f"metrics/runs/{kind}/seed{seed}"
            train, test = load(repo, f"{record}/train.json"), load(repo, f"{record}/test.json")
            assert (train["seed"], test["seed"], test["split_seed"]) == (seed, seed, 42)
            assert len(test["dataset_md5"]) == 32 and "torch" in test["versions"]
            assert train["training_time_s"] > 0 and train["best_epoch"] == 1  # as on the curves
            timing = test["inference"]["conditions"]
            assert timing["threads"] >= 1 and timing["timed_passes"] == 5
            assert test["inference_images_per_s"] > 0 and set(test) | set(train) >= TABLE_ONLY
            per_class = load(repo, f"{record}/per_class.json")
            assert len(per_class) == 10 and {"precision", "recall", "f1"} <= set(per_class["cat"])
            predictions = np.load(repo / record / "predictions.npy")
            assert predictions.shape == (50, 2)  # 5 test images per class
            assert np.mean(predictions[:, 0] == predictions[:, 1]) == test["test_accuracy"]
    # the seeds really differ: different initial weights give different models
    a, b = (repo / f"models/baseline/seed{s}.ckpt" for s in SEEDS)
    assert a.read_bytes() != b.read_bytes()


def test_model_metrics_are_means_over_seeds(pipeline_repo):
    repo, _ = pipeline_repo
    for kind in KINDS:
        metrics = load(repo, f"metrics/{kind}.json")
        assert set(metrics) >= MODEL_KEYS and not set(metrics) & TABLE_ONLY, kind
        accs = [
            load(repo, f"metrics/runs/{kind}/seed{s}/test.json")["test_accuracy"] for s in SEEDS
        ]
        assert metrics["test_accuracy"] == pytest.approx(np.mean(accs), abs=1e-6)
        assert metrics["test_accuracy_std"] == pytest.approx(np.std(accs, ddof=1), abs=1e-6)
        assert metrics["n_seeds"] == 2 and "versions" not in metrics  # provenance: in the runs
    assert load(repo, "metrics/baseline.json")["trainable_params"] == 11_173_962
    odk, matched = load(repo, "metrics/odk.json"), load(repo, "metrics/matched.json")
    assert 0 < odk["orthogonality_error"] < 1e-5
    assert matched["stage_widths"] == [64, 128, 69, 138]
    assert abs(matched["trainable_params"] / odk["trainable_params"] - 1) <= 0.02


def test_compare_gives_the_verdict_with_its_interval(pipeline_repo):
    repo, _ = pipeline_repo
    compare = load(repo, "metrics/compare.json")
    base, odk = load(repo, "metrics/baseline.json"), load(repo, "metrics/odk.json")
    assert compare["seeds"] == list(SEEDS) and compare["n_seeds"] == 2
    delta = odk["test_accuracy"] - base["test_accuracy"]
    assert compare["accuracy_delta"] == pytest.approx(delta, abs=1e-5)
    low, high = compare["accuracy_delta_ci95"]
    assert low <= compare["accuracy_delta"] <= high
    assert "t-interval over 2 seeds" in compare["ci_method"]
    margin = -compare["max_accuracy_drop"]
    expected = "non-inferior" if low > margin else "inferior" if high < margin else "inconclusive"
    assert compare["verdict"] == expected
    low, high = compare["matched_accuracy_delta_ci95"]
    assert low <= compare["matched_accuracy_delta"] <= high
    assert compare["params_ratio"] < 0.5 and 0.98 <= compare["matched_params_ratio"] <= 1.02
    text = (repo / "metrics/compare.md").read_text()
    assert f"**{compare['verdict']}.** With 2 training seeds, ODK's test accuracy" in text
    assert "test accuracy" in (repo / "metrics/compare.csv").read_text()


def test_repro_writes_every_plot(pipeline_repo):
    repo, env = pipeline_repo
    for kind in KINDS:
        for seed in SEEDS:
            for name in ("roc_per_class.png", "predictions.png"):
                assert (repo / f"plots/eval/{kind}/seed{seed}/{name}").stat().st_size > 0
            curve = repo / f"plots/train/{kind}/seed{seed}/plots/metrics/val/acc.tsv"
            lines = curve.read_text().splitlines()
            assert lines[0] == "step\tacc" and [x.split("\t")[0] for x in lines[1:]] == ["1"]
    curve = load(repo, "plots/compare/val_acc.json")
    assert [r["epoch"] for r in curve] == [1] and set(curve[0]) == {"epoch", *KINDS}
    confusion = load(repo, "plots/compare/confusion_odk.json")
    assert len(confusion) == 10 * 10  # every cell of the square matrix
    assert sum(cell["images"] for cell in confusion) == 2 * 50  # pooled over seeds
    out = dvc("plots", "show", "--json", cwd=repo, env=env).stdout
    rendered = json.loads(out)["data"]
    assert {
        "Confusion matrix, ODK (all seeds)",
        "ROC curve, macro average of one-vs-rest (mean over seeds)",
        "Validation accuracy per epoch (mean over seeds)",
        "plots/eval/odk/seed1/predictions.png",
    } <= set(rendered)
    assert "errors" not in json.dumps(rendered)
    shown = dvc("plots", "show", cwd=repo, env=env)  # the page a user opens
    assert "failed" not in shown.stdout + shown.stderr
    page = (repo / "dvc_plots/index.html").read_text()
    assert remote_references(page) == [] and "vegaEmbed(" in page  # renders offline


def test_metrics_show_and_repro_is_a_noop(pipeline_repo):
    repo, env = pipeline_repo
    shown = dvc("metrics", "show", "--json", cwd=repo, env=env).stdout
    # DVC shows numbers and booleans; the verdict's words and the lists stay in the files
    assert "test_roc_auc" in shown and "accuracy_delta_ci95_low" in shown
    assert "orthogonality_error" in shown and "matched_params_ratio" in shown
    assert json.loads((repo / "metrics/compare.json").read_text())["verdict"] in VERDICTS
    status = dvc("status", cwd=repo, env=env).stdout
    assert "up to date" in status, status


def test_r_variant_retrains_odk_and_control_and_reuses_every_baseline_run(pipeline_repo):
    repo, env = pipeline_repo
    proc = dvc("exp", "run", "-S", "model.r=2", cwd=repo, env=env)
    log = proc.stdout + proc.stderr
    for seed in SEEDS:
        assert f"Running stage 'train_odk@{seed}'" in log
        assert f"Running stage 'train_matched@{seed}'" in log  # re-matched to the new count
        assert f"Running stage 'train_baseline@{seed}'" not in log
        assert f"Running stage 'evaluate@baseline-{seed}'" not in log
    diff = json.loads(dvc("metrics", "diff", "--json", cwd=repo, env=env).stdout)
    change = diff["metrics/odk.json"]["trainable_params"]
    assert change["new"] < change["old"]  # r=2 halves the orthogonal blocks' free entries
    assert (
        "metrics/baseline.json" not in diff or "test_accuracy" not in diff["metrics/baseline.json"]
    )
    matched = load(repo, "metrics/matched.json")
    assert abs(matched["trainable_params"] / change["new"] - 1) <= 0.02


def test_exp_show_of_one_variant_fits_in_40_columns(pipeline_repo):
    repo, env = pipeline_repo  # HEAD and the model.r=2 experiment of the test above
    table = dvc("exp", "show", "--only-changed", "--md", cwd=repo, env=env).stdout
    header = [cell.strip() for cell in table.splitlines()[0].strip("|").split("|")]
    print(table)
    assert "model.r" in header and len(header) <= 40, header
    assert not [c for c in header if "versions" in c or "md5" in c]  # provenance: not metrics


def test_a_third_seed_trains_only_the_new_runs(pipeline_repo):
    repo, env = pipeline_repo
    proc = dvc("exp", "run", "-S", "seeds=[0,1,2]", "-S", "model.r=1", cwd=repo, env=env)
    log = proc.stdout + proc.stderr
    for kind in KINDS:
        assert f"Running stage 'train_{kind}@2'" in log
        assert f"Running stage 'train_{kind}@0'" not in log  # from the run cache
    assert load(repo, "metrics/compare.json")["n_seeds"] == 3
