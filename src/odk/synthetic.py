"""Small CIFAR archives in the official python format, for tests and benchmarks.

`write_cifar_archive` writes a .tar.gz laid out like the official CIFAR-10 or CIFAR-100
"python version" (the folder, file names and pickled dict keys of `odk.cifar.LAYOUTS`) holding
learnable images: each class has its own colour and blocky pattern, each image is that pattern
shifted by a few pixels, scaled in brightness and noised, so a small network beats chance after
one epoch.
Like the originals, the pickles are Python 2 pickles whose strings load as bytes with
`encoding="bytes"` (b"data") and as str with `encoding="latin1"` (what torchvision uses).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from odk.cifar import LAYOUTS

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer")
CIFAR10_CLASSES += ("dog", "frog", "horse", "ship", "truck")


def write_cifar_archive(
    dest: Path,
    name: str = "cifar10",
    train_per_class: int = 20,
    test_per_class: int = 10,
    seed: int = 0,
) -> tuple[Path, str]:
    """Write a synthetic CIFAR archive in the official python format.

    Args:
        dest: directory to write into (created if needed); the archive gets the official
            file name (`cifar-10-python.tar.gz` or `cifar-100-python.tar.gz`).
        name: `cifar10` (10 classes) or `cifar100` (100 fine classes in 20 coarse ones).
        train_per_class: training images of each class.
        test_per_class: test images of each class.
        seed: the archive, bytes included, is a function of the arguments only.

    Returns:
        The archive's path and its md5 (hex).
    """
    if name not in LAYOUTS:
        raise ValueError(f"name={name!r} is not allowed; allowed: {', '.join(LAYOUTS)}")
    if min(train_per_class, test_per_class) < 1:
        raise ValueError("train_per_class and test_per_class must be >= 1")
    rng = np.random.default_rng(seed)
    num_classes = 10 if name == "cifar10" else 100
    canvases = _class_canvases(num_classes, rng)
    train = _labels(num_classes, train_per_class, rng)
    test = _labels(num_classes, test_per_class, rng)
    layout, files = LAYOUTS[name], {}
    key, chunks = layout.label_key, np.array_split(train, len(layout.train_files))
    if name == "cifar10":
        for i, (file, chunk) in enumerate(zip(layout.train_files, chunks, strict=True)):
            files[file] = _batch(chunk, canvases, rng, f"training batch {i + 1} of 5", key)
        files[layout.test_file] = _batch(test, canvases, rng, "testing batch 1 of 1", key)
        names = [_Py2Str(c.encode()) for c in CIFAR10_CLASSES]
        per_batch, names_key = len(train) // 5, layout.names_key.decode()
        meta = {"num_cases_per_batch": per_batch, names_key: names, "num_vis": 3072}
    else:
        title = "training batch 1 of 1"
        files[layout.train_files[0]] = _batch(train, canvases, rng, title, key, coarse=True)
        title = "testing batch 1 of 1"
        files[layout.test_file] = _batch(test, canvases, rng, title, key, coarse=True)
        fine = [_Py2Str(f"class_{i:02d}".encode()) for i in range(100)]
        coarse = [_Py2Str(f"superclass_{i:02d}".encode()) for i in range(20)]
        meta = {layout.names_key.decode(): fine, "coarse_label_names": coarse}
    files[layout.meta_file] = {_Py2Str(k.encode()): v for k, v in meta.items()}
    return _write_tar_gz(Path(dest), layout.archive, layout.folder, files)


def _class_canvases(num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Per class: a colour plus a 5x5 grid of 8-pixel blocks, on a 40x40 canvas."""
    colour = rng.uniform(50, 205, size=(num_classes, 3, 1, 1))
    blocks = rng.uniform(-50, 50, size=(num_classes, 3, 5, 5))
    return (colour + blocks.repeat(8, axis=2).repeat(8, axis=3)).astype(np.float32)


def _labels(num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class))


def _batch(
    labels: np.ndarray,
    canvases: np.ndarray,
    rng: np.random.Generator,
    title: str,
    label_key: bytes,
    coarse: bool = False,
) -> dict[Any, Any]:
    """One pickled batch: 32x32 crops of the class canvases, brightness-scaled and noised.

    The labels go under `label_key`; with `coarse`, CIFAR-100's superclasses follow them.
    """
    n = len(labels)
    dy, dx = rng.integers(0, 9, size=(2, n))  # (N,) offsets of the 32x32 crop in the canvas
    rows = (dy[:, None] + np.arange(32))[:, None, :, None]  # (N, 1, 32, 1)
    cols = (dx[:, None] + np.arange(32))[:, None, None, :]  # (N, 1, 1, 32)
    images = canvases[labels[:, None, None, None], np.arange(3)[None, :, None, None], rows, cols]
    images *= rng.uniform(0.75, 1.25, size=(n, 1, 1, 1)).astype(np.float32)
    images += rng.standard_normal(images.shape, dtype=np.float32) * 24
    data = np.clip(images.round(), 0, 255).astype(np.uint8).reshape(n, 3072)  # (N, 3*32*32)
    names = [_Py2Str(f"synthetic_{i:06d}.png".encode()) for i in range(n)]
    batch: dict[str, Any] = {"batch_label": _Py2Str(title.encode()), "data": data}
    batch[label_key.decode()] = labels.tolist()
    if coarse:
        batch["coarse_labels"] = (labels // 5).tolist()
    batch["filenames"] = names
    return {_Py2Str(k.encode()): v for k, v in batch.items()}


class _Py2Str(bytes):
    """Bytes pickled as a Python 2 `str`, as in the official CIFAR pickles."""


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler writing `_Py2Str` and array data as Python 2 strings."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_ndarray(self, obj: np.ndarray) -> None:
        reconstruct, (cls, shape, _), (version, dims, dtype, fortran, raw) = obj.__reduce__()
        state = (version, dims, dtype, fortran, _Py2Str(raw))
        self.save_reduce(reconstruct, (cls, shape, _Py2Str(b"b")), state, obj=obj)

    dispatch[_Py2Str] = save_py2_str
    dispatch[np.ndarray] = save_ndarray


def _pickle_py2(obj: Any) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def _write_tar_gz(
    dest: Path, filename: str, folder: str, files: dict[str, Any]
) -> tuple[Path, str]:
    """A reproducible .tar.gz (fixed times and owners) of `folder/<file>` pickles."""
    dest.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{filename}.", suffix=".part")
    with (
        os.fdopen(fd, "wb") as raw,
        gzip.GzipFile("", "wb", 1, raw, mtime=0) as gz,  # level 1: noise does not compress
        tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tar,
    ):
        tar.addfile(_tarinfo(folder, tarfile.DIRTYPE, 0))
        for name, content in files.items():
            payload = _pickle_py2(content)
            info = _tarinfo(f"{folder}/{name}", tarfile.REGTYPE, len(payload))
            tar.addfile(info, io.BytesIO(payload))
    path = dest / filename
    os.replace(tmp, path)
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def _tarinfo(name: str, kind: bytes, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime = kind, size, 0
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    return info
