"""The CIFAR "python version" format: where its files are, and reading them without running code.

The official archives (`cifar-10-python.tar.gz`, `cifar-100-python.tar.gz`) hold one folder of
pickled dicts: training batches, a test batch and a meta file naming the classes; the images
are uint8 rows of 1024 red, 1024 green and 1024 blue values. `LAYOUTS` says where each dataset
keeps them, `read_raw` reads an extracted folder into arrays, and the pickles are loaded by an
unpickler that only builds plain containers and numpy arrays, so an archive cannot run code.
The download stage fetches and extracts, the split stage reads, `odk.synthetic` writes the same
layout; no torch here, so those stay light.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from odk.errors import DataError

IMAGE_SIZE = 32  # CIFAR resolution: the ResNet's first conv is 3x3 stride 1, no pooling


class Layout(NamedTuple):
    """Where the official "python version" archive keeps its files and keys."""

    archive: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes

    @property
    def files(self) -> tuple[str, ...]:
        """Every file of the format, training batches first."""
        return (*self.train_files, self.test_file, self.meta_file)


LAYOUTS = {
    "cifar10": Layout(
        "cifar-10-python.tar.gz",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        b"labels",
        b"label_names",
    ),
    "cifar100": Layout(
        "cifar-100-python.tar.gz",
        "cifar-100-python",
        ("train",),
        "test",
        "meta",
        b"fine_labels",
        b"fine_label_names",
    ),
}


class RawCifar(NamedTuple):
    """The official train and test sets: uint8 (N, 3, 32, 32) images, int64 labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]


def read_raw(raw_dir: Path, name: str) -> RawCifar:
    """Read an extracted official CIFAR "python version" folder from `raw_dir`.

    Raises:
        DataError: a file is missing or is not in the official format.
    """
    layout = LAYOUTS[name]
    folder, label_key = Path(raw_dir) / layout.folder, layout.label_key
    missing = [f for f in layout.files if not (folder / f).is_file()]
    if missing:
        what = f"{folder} lacks {', '.join(missing)}"
        raise DataError(f"not the official {name} python format: {what}")
    names = _load_pickle(folder / layout.meta_file).get(layout.names_key)
    if not isinstance(names, list) or not names or not all(isinstance(n, bytes) for n in names):
        where = f"{folder / layout.meta_file} under {layout.names_key!r}"
        raise DataError(f"not the official {name} python format: no class names in {where}")
    classes = [n.decode("latin1") for n in names]
    train = [_read_batch(folder / f, label_key, len(classes)) for f in layout.train_files]
    test_images, test_labels = _read_batch(folder / layout.test_file, label_key, len(classes))
    train_images = np.concatenate([images for images, _ in train])
    train_labels = np.concatenate([labels for _, labels in train])
    return RawCifar(train_images, train_labels, test_images, test_labels, classes)


def _read_batch(path: Path, label_key: bytes, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path)
    data, labels = batch.get(b"data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path}: b'data' is not a uint8 (N, 3072) array")
    if (
        data.shape[1] != 3 * IMAGE_SIZE**2
        or not isinstance(labels, list)
        or len(labels) != len(data)
    ):
        raise DataError(f"{path}: expected (N, 3072) images and N labels under {label_key!r}")
    labels_array = np.asarray(labels, dtype=np.int64)
    if len(data) == 0 or labels_array.min() < 0 or labels_array.max() >= num_classes:
        raise DataError(f"{path}: empty, or labels outside 0..{num_classes - 1}")
    # rows are 1024 red, 1024 green, 1024 blue
    return data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE), labels_array


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: an archive cannot run code."""

    _reconstruct = np.empty(0).__reduce__()[0]  # numpy's own, whatever its module path
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,  # the official pickles
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,  # numpy >= 2 pickles
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # protocol-2 bytes
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR pickle")
        return self.ALLOWED[module, name]


def _load_pickle(path: Path) -> dict[Any, Any]:
    try:
        with open(path, "rb") as f:
            content = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as error:  # unpickling corrupt bytes raises almost any type
        raise DataError(f"{path} is not a CIFAR python-format pickle: {error}") from None
    if not isinstance(content, dict):
        raise DataError(f"{path} is not a CIFAR python-format pickle: not a dict")
    return content
