"""Split stage: data/raw to stratified train/val/test uint8 arrays and a manifest.

From the official training set, `subset_fraction` of each class is kept and `valid_size` of
that subset is held out for validation, drawn at random with `seed`. Per-class counts are
apportioned so that the totals are exact (45,000/5,000 by default, 4,500/500 for a 0.1 subset)
and every class keeps a training image. The test set is the whole official test set. The
manifest records the sizes, class names, source md5 and the train split's per-channel mean and
std (exact, from pixel histograms), so identical inputs give byte-identical outputs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from odk.atomic import atomic_dir, check_owned
from odk.cifar import read_raw
from odk.config import Config
from odk.errors import DataError
from odk.stages import main_entry

SPLITS = ("train", "val", "test")
MANIFEST = "manifest.json"  # the splits folder's marker


def split(cfg: Config) -> dict[str, Any]:
    """Split `<data_dir>/raw/` into stratified train/val/test arrays in `<data_dir>/splits/`.

    Returns:
        The manifest written to `splits/manifest.json`.
    """
    data_dir, dm = Path(cfg.data_module.data_dir), cfg.data_module
    check_owned(data_dir / "splits", MANIFEST)  # a folder of the user's is not replaced
    md5 = _check_source(data_dir / "raw", cfg.dataset.name, cfg.dataset.md5.lower())
    raw = read_raw(data_dir / "raw", cfg.dataset.name)
    train, val = stratified_split(raw.train_labels, dm.subset_fraction, dm.valid_size, cfg.seed)
    _check_split(raw.train_labels, train, val, raw.classes, dm.subset_fraction, dm.valid_size)
    arrays = {
        "train": (raw.train_images[train], raw.train_labels[train]),
        "val": (raw.train_images[val], raw.train_labels[val]),
        "test": (raw.test_images, raw.test_labels),
    }
    mean, std = channel_stats(arrays["train"][0])
    num_classes = len(raw.classes)
    manifest = {
        "dataset": cfg.dataset.name,
        "source_md5": md5,
        "seed": cfg.seed,
        "subset_fraction": dm.subset_fraction,
        "valid_size": dm.valid_size,
        "sizes": {s: len(arrays[s][1]) for s in SPLITS},
        "class_counts": {
            s: np.bincount(arrays[s][1], minlength=num_classes).tolist() for s in SPLITS
        },
        "classes": raw.classes,
        "mean": mean,
        "std": std,
    }
    label_type = np.uint8 if num_classes <= 256 else np.int64
    with atomic_dir(data_dir / "splits", marker=MANIFEST) as tmp:
        for name, (images, labels) in arrays.items():
            np.save(tmp / f"{name}_images.npy", np.ascontiguousarray(images))
            np.save(tmp / f"{name}_labels.npy", labels.astype(label_type))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    sizes = "/".join(str(n) for n in manifest["sizes"].values())
    print(f"split: {sizes} train/val/test images of {num_classes} classes in {data_dir / 'splits'}")
    return manifest


def stratified_split(
    labels: np.ndarray, subset_fraction: float, valid_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and validation images, drawn per class with `seed`.

    Args:
        labels: the class of each image of the official training set.
        subset_fraction: the fraction of each class kept.
        valid_size: the fraction of the kept images held out for validation; a class keeps
            at least one training image when it can.

    Returns:
        Sorted train indices and sorted validation indices.
    """
    # RandomState, not default_rng: numpy guarantees its stream, so splits survive upgrades.
    rng = np.random.RandomState(seed)
    counts = np.bincount(labels)
    kept = _apportion(counts, subset_fraction, cap=counts)
    held = _apportion(kept, valid_size, cap=np.maximum(kept - 1, 0))
    train, val = [], []
    for c in range(len(counts)):
        chosen = rng.permutation(np.flatnonzero(labels == c))[: kept[c]]
        val.append(chosen[: held[c]])
        train.append(chosen[held[c] :])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _apportion(counts: np.ndarray, fraction: float, cap: np.ndarray) -> np.ndarray:
    """Per-class shares of round(total * fraction), proportional to counts, each <= cap.

    Shares start at floor(count * fraction); the remaining units go to the largest remainders
    (ties to the lower class), so the total is exact whatever the class sizes.
    """
    exact = counts * fraction
    shares = np.minimum(np.floor(exact).astype(np.int64), cap)
    target = math.floor(counts.sum() * fraction + 0.5)
    for c in np.argsort(-(exact - np.floor(exact)), kind="stable"):
        if shares.sum() >= target:
            break
        if shares[c] < cap[c]:
            shares[c] += 1
    return shares


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images, in [0, 1] pixel units.

    Computed from integer histograms, so the result is exact and the same on every machine.
    """
    mean, std = [], []
    values = np.arange(256, dtype=np.int64)
    for c in range(images.shape[1]):
        hist = np.bincount(images[:, c].ravel(), minlength=256).astype(np.int64)
        n, s, ss = int(hist.sum()), int(hist @ values), int(hist @ values**2)
        mean.append(s / (n * 255))
        std.append(math.sqrt((ss * n - s * s) / (n * n * 255**2)))
    return mean, std


def _check_source(raw_dir: Path, name: str, md5: str) -> str:
    """The md5 of the archive `raw_dir` came from, which must be the configured one."""
    try:
        source = json.loads((raw_dir / "source.json").read_text())
    except (OSError, ValueError):
        raise DataError(f"{raw_dir} not found: run `python -m odk.stages.download` first") from None
    if (source.get("dataset"), source.get("md5")) != (name, md5):
        held = f"{source.get('dataset')} (md5 {source.get('md5')})"
        raise DataError(f"{raw_dir} holds {held}, not {name} ({md5}): run the download stage")
    return md5


def _check_split(
    labels: np.ndarray, train: np.ndarray, val: np.ndarray, classes: list[str], f: float, v: float
) -> None:
    """Stop on a split that leaves a class without training images or no validation set."""
    in_train = np.bincount(labels[train], minlength=len(classes))
    if (in_train == 0).any():
        missing = classes[int(np.argmin(in_train))]
        kept = len(train) + len(val)
        why = f"leaves class {missing!r} without training images ({kept} images kept in all)"
        raise DataError(f"data_module.subset_fraction={f} {why}; raise subset_fraction")
    if len(val) == 0:
        why = f"of {len(train)} images leaves the validation set empty"
        raise DataError(f"data_module.valid_size={v} {why}; raise valid_size or subset_fraction")


if __name__ == "__main__":
    main_entry(split)
