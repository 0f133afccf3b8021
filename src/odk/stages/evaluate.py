"""Stage `evaluate_baseline` / `evaluate_odk`: score one model on the full official test set.

`python -m odk.stages.evaluate baseline|odk [hydra overrides]` writes `metrics/<kind>.json`
(test accuracy, ROC-AUC, macro F1, loss, parameters, throughput, model-file size),
`metrics/<kind>_per_class.json`, and `plots/<kind>/` (confusion records and the macro-average
ROC curve for DVC, plus PNGs of the per-class ROC curves and of labelled test images).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score, precision_recall_fscore_support, roc_auc_score
from torch import nn

from odk.atomic import write_json
from odk.checkpoint import load_model
from odk.config import Config
from odk.data import load_split, normalize, read_manifest
from odk.errors import OdkError
from odk.models import count_parameters
from odk.plots import (
    confusion_records,
    macro_roc_records,
    per_class_roc,
    save_prediction_grid,
    save_roc_png,
)
from odk.runinfo import provenance
from odk.stages import KINDS, kind_main

GRID_IMAGES = 40
EVAL_BATCH = 500


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
) -> tuple[torch.Tensor, float]:
    """Logits of every image, and the throughput in images per second (warm-up excluded)."""
    model = model.to(device).eval()
    batches = images.split(EVAL_BATCH)
    model(normalize(batches[0][:8].to(device), mean, std))  # warm-up: caches, kernels
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = [
        model(normalize(b.to(device, non_blocking=True), mean, std)).float().cpu() for b in batches
    ]
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return torch.cat(out), len(images) / max(seconds, 1e-9)


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


def evaluate(cfg: Config, kind: str) -> dict[str, Any]:
    """Score `models/<kind>.ckpt` on the test split and write its metrics and plots."""
    if kind not in KINDS:
        raise OdkError(f"model kind {kind!r} is not allowed; allowed: {', '.join(KINDS)}")
    model_path = Path("models") / f"{kind}.ckpt"
    model, meta = load_model(model_path)
    split_dir = Path(cfg.data_module.data_dir) / "splits"
    manifest = read_manifest(split_dir)
    classes = manifest["classes"]
    if list(meta["classes"]) != list(classes):
        raise OdkError(f"{model_path} was trained on other classes than {split_dir} holds")
    images, labels_t = load_split(split_dir, "test")
    device = pick_device(cfg.trainer.accelerator)
    logits, throughput = predict_logits(model, images, meta["mean"], meta["std"], device)

    labels = labels_t.numpy()
    probs = torch.softmax(logits.double(), dim=1).numpy()
    headline, per_class = classification_metrics(labels, probs, classes)
    metrics = {
        **headline,
        "test_loss": float(F.cross_entropy(logits, labels_t.long())),
        "trainable_params": count_parameters(model),
        "model_file_bytes": model_path.stat().st_size,
        "inference_images_per_s": round(throughput, 1),
        "inference_device": device.type,
        "best_epoch": meta["extra"].get("epoch"),
        **provenance(cfg.seed, manifest["source_md5"]),
    }
    _write_plots(Path("plots") / kind, kind, images.numpy(), labels, probs, classes)
    write_json(Path("metrics") / f"{kind}_per_class.json", per_class)
    write_json(Path("metrics") / f"{kind}.json", metrics)
    return metrics


def _write_plots(
    out: Path,
    kind: str,
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
) -> None:
    preds = probs.argmax(1)
    curves = per_class_roc(labels, probs)
    write_json(out / "confusion.json", confusion_records(labels, preds, classes))
    write_json(out / "roc.json", macro_roc_records(curves))
    save_roc_png(out / "roc_per_class.png", curves, classes, f"{kind}: one-vs-rest ROC")
    n = min(GRID_IMAGES, len(images))
    save_prediction_grid(
        out / "predictions.png",
        images[:n],
        labels[:n],
        preds[:n],
        classes,
        f"{kind} on the first {n} test images",
    )


if __name__ == "__main__":
    kind_main(evaluate, "odk.stages.evaluate")
