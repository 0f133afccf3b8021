"""Stage `evaluate`: score one trained model on the full official test set.

`python -m odk.stages.evaluate baseline|odk|matched [--seed N] [hydra overrides]` scores
`models/<kind>/seed<N>.ckpt` and writes, in `metrics/runs/<kind>/seed<N>/`: `test.json` (test
accuracy, ROC-AUC, macro F1, loss, parameters, throughput, model-file size, the orthogonality
error of ODK layers), `per_class.json`, `predictions.npy` (true and predicted class of every
test image, for the paired confidence intervals of `compare`) and `roc.json` (the macro-average
ROC curve); and in `plots/eval/<kind>/seed<N>/` PNGs of the per-class ROC curves and of
labelled test images. The inference speed is timed apart from the scoring, under recorded
conditions (`odk.speed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score, precision_recall_fscore_support, roc_auc_score
from torch import nn

from odk.atomic import atomic_file, write_json
from odk.checkpoint import load_model
from odk.config import Config
from odk.data import load_split, normalize, read_manifest
from odk.errors import OdkError
from odk.models import count_parameters, orthogonality_error
from odk.plots import macro_roc_records, per_class_roc, save_prediction_grid, save_roc_png
from odk.runinfo import provenance
from odk.speed import measure_inference
from odk.stages import KINDS, Run, kind_main

GRID_IMAGES = 40
EVAL_BATCH = 500
# ODKConv2d promises W W^T == m I to 1e-5 in float32; a trained model beyond 1e-4 is broken.
MAX_ORTHOGONALITY_ERROR = 1e-4


def pick_device(accelerator: str) -> torch.device:
    """The device for inference: CUDA when available unless `trainer.accelerator` says cpu."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
) -> torch.Tensor:
    """Logits of every image, `(N, num_classes)`, in float32 on the CPU."""
    model = model.to(device).eval()
    batches = images.split(EVAL_BATCH)
    out = [
        model(normalize(b.to(device, non_blocking=True), mean, std)).float().cpu() for b in batches
    ]
    return torch.cat(out)


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]
) -> tuple[dict[str, float], dict[str, Any]]:
    """Headline metrics and the per-class table, from softmax probabilities."""
    preds = probs.argmax(1)
    if len(np.unique(labels)) < len(classes):
        raise OdkError("the test split lacks some classes: ROC-AUC (one-vs-rest) is undefined")
    headline = {
        "test_accuracy": float((preds == labels).mean()),
        "test_roc_auc": float(
            roc_auc_score(
                labels, probs, multi_class="ovr", average="macro", labels=np.arange(len(classes))
            )
        ),
        "test_f1_macro": float(f1_score(labels, preds, average="macro", zero_division=0)),
    }
    p, r, f, support = precision_recall_fscore_support(
        labels, preds, labels=np.arange(len(classes)), zero_division=0
    )
    per_class = {
        name: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    return headline, per_class


def evaluate(cfg: Config, kind: str, seed: int) -> dict[str, Any]:
    """Score `models/<kind>/seed<seed>.ckpt` on the test split; write its records and plots."""
    if kind not in KINDS:
        raise OdkError(f"model kind {kind!r} is not allowed; allowed: {', '.join(KINDS)}")
    run = Run(kind, seed)
    model_path = run.model
    model, meta = load_model(model_path)
    ortho = orthogonality_error(model)
    if ortho is not None and ortho > MAX_ORTHOGONALITY_ERROR:
        raise OdkError(
            f"{model_path}: its ODK weights are not orthogonal: max |W W^T - m I| = {ortho:.3g} "
            f"> {MAX_ORTHOGONALITY_ERROR:g} (the layer promises 1e-5); retrain it with "
            "trainer.precision=32-true and the default float32 matmul precision"
        )
    split_dir = Path(cfg.data_module.data_dir) / "splits"
    manifest = read_manifest(split_dir)
    classes = manifest["classes"]
    if list(meta["classes"]) != list(classes):
        raise OdkError(f"{model_path} was trained on other classes than {split_dir} holds")
    images, labels_t = load_split(split_dir, "test")
    device = pick_device(cfg.trainer.accelerator)
    logits = predict_logits(model, images, meta["mean"], meta["std"], device)
    speed = measure_inference(
        model, images, lambda b: normalize(b, meta["mean"], meta["std"]), device
    )

    labels = labels_t.numpy()
    probs = torch.softmax(logits.double(), dim=1).numpy()
    headline, per_class = classification_metrics(labels, probs, classes)
    metrics = {
        **headline,
        "test_loss": float(F.cross_entropy(logits, labels_t.long())),
        "trainable_params": count_parameters(model),
        "model_file_bytes": model_path.stat().st_size,
        "inference_images_per_s": speed["images_per_s"],
        "inference": {k: v for k, v in speed.items() if k != "images_per_s"},
        "best_epoch": meta["extra"].get("epoch"),
        "orthogonality_error": ortho,
        "dataset": manifest["dataset"],
        **provenance(seed, manifest["seed"], manifest["source_md5"]),
    }
    preds = probs.argmax(1)
    curves = per_class_roc(labels, probs)
    with atomic_file(run.record_dir / "predictions.npy") as tmp:
        np.save(tmp, np.stack([labels, preds], axis=1).astype(np.int16))  # (N, 2): true, predicted
    write_json(run.record_dir / "roc.json", macro_roc_records(curves))
    write_json(run.record_dir / "per_class.json", per_class)
    _write_pngs(run, images.numpy(), labels, preds, curves, classes)
    write_json(run.test_record, metrics)
    print(
        f"evaluate: {run.name}: test accuracy {metrics['test_accuracy']:.4f}, ROC-AUC "
        f"{metrics['test_roc_auc']:.4f} on {len(labels):,} images; {speed['images_per_s']:,} "
        f"images/s ({device.type}, {speed['conditions']['threads']} threads, median of "
        f"{speed['conditions']['timed_passes']} passes) -> {run.test_record}"
    )
    return metrics


def grid_indices(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """Test images for the prediction grid: as many of every class, drawn with `seed`."""
    per_class = max(1, GRID_IMAGES // num_classes)
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(num_classes)]
    return np.concatenate(chosen)


def _write_pngs(
    run: Run,
    images: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    curves: list[tuple[np.ndarray, np.ndarray]],
    classes: Sequence[str],
) -> None:
    out = run.eval_plots
    save_roc_png(out / "roc_per_class.png", curves, classes, f"{run.name}: one-vs-rest ROC")
    index = grid_indices(labels, len(classes), run.seed)
    per_class = len(index) // len(classes)
    save_prediction_grid(
        out / "predictions.png",
        images[index],
        labels[index],
        preds[index],
        classes,
        f"{run.name}: {per_class} random test images of each class",
    )


if __name__ == "__main__":
    kind_main(evaluate, "odk.stages.evaluate")
