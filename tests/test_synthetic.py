"""Synthetic archives: the official CIFAR python format, deterministic, learnable."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import CIFAR10, CIFAR100

from odk.synthetic import CIFAR10_CLASSES, write_cifar_archive

LAYOUT = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch"),
    "cifar100": ("cifar-100-python", ["train"], "test"),
}
LABELS = {"cifar10": "labels", "cifar100": "fine_labels"}


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _arrays(archive: Path, name: str, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    members, (folder, _, _) = _members(archive), LAYOUT[name]
    batches = [pickle.loads(members[f"{folder}/{f}"], encoding="bytes") for f in files]
    key = LABELS[name].encode()
    images = np.concatenate([b[b"data"] for b in batches])
    return images, np.concatenate([b[key] for b in batches])


def test_archive_and_md5_are_a_function_of_the_arguments(tmp_path, cifar10_archive):
    path, md5 = write_cifar_archive(tmp_path / "again", "cifar10", 20, 10)
    assert md5 == cifar10_archive[1] == hashlib.md5(path.read_bytes()).hexdigest()
    assert path.read_bytes() == cifar10_archive[0].read_bytes()
    assert path.name == "cifar-10-python.tar.gz"
    assert write_cifar_archive(tmp_path / "other", "cifar10", 20, 10, seed=1)[1] != md5
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == [path.name]  # no leftovers


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_archive_has_the_official_layout_and_keys(name, cifar10_archive, cifar100_archive):
    archive = cifar10_archive[0] if name == "cifar10" else cifar100_archive[0]
    folder, train_files, test_file = LAYOUT[name]
    meta_file = "batches.meta" if name == "cifar10" else "meta"
    expected = {f"{folder}/{f}" for f in [*train_files, test_file, meta_file]}
    assert set(_members(archive)) == expected
    raw = _members(archive)[f"{folder}/{test_file}"]
    as_bytes, as_str = pickle.loads(raw, encoding="bytes"), pickle.loads(raw, encoding="latin1")
    assert {b"data", LABELS[name].encode(), b"filenames", b"batch_label"} <= set(as_bytes)
    assert set(as_str) == {k.decode() for k in as_bytes}  # Python 2 strings, as torchvision reads
    assert as_bytes[b"data"].dtype == np.uint8 and as_bytes[b"data"].shape[1] == 3072
    if name == "cifar100":
        assert as_bytes[b"coarse_labels"] == [label // 5 for label in as_bytes[b"fine_labels"]]


@pytest.mark.parametrize("name, per_class", [("cifar10", (20, 10)), ("cifar100", (10, 2))])
def test_every_class_has_its_share(name, per_class, cifar10_archive, cifar100_archive):
    archive = cifar10_archive[0] if name == "cifar10" else cifar100_archive[0]
    _, train_files, test_file = LAYOUT[name]
    for files, count in zip([train_files, [test_file]], per_class, strict=True):
        images, labels = _arrays(archive, name, files)
        assert np.bincount(labels).tolist() == [count] * (10 if name == "cifar10" else 100)
        assert len(np.unique(images, axis=0)) == len(images)  # no two images alike


@pytest.mark.parametrize("dataset", [CIFAR10, CIFAR100])
def test_torchvision_reads_it(tmp_path, dataset, cifar10_archive, cifar100_archive):
    archive = cifar10_archive[0] if dataset is CIFAR10 else cifar100_archive[0]
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path, filter="data")

    class Mirror(dataset):  # the official per-file md5s do not apply to a synthetic archive
        train_list = [[f, None] for f, _ in dataset.train_list]
        test_list = [[f, None] for f, _ in dataset.test_list]
        meta = {**dataset.meta, "md5": None}

    train, test = Mirror(str(tmp_path), train=True), Mirror(str(tmp_path), train=False)
    assert len(train) == (200 if dataset is CIFAR10 else 1000)
    assert len(test) == (100 if dataset is CIFAR10 else 200)
    cifar100_classes = [f"class_{i:02d}" for i in range(100)]
    assert train.classes == (list(CIFAR10_CLASSES) if dataset is CIFAR10 else cifar100_classes)
    assert train[0][0].size == (32, 32)


@pytest.mark.parametrize("name, chance", [("cifar10", 0.1), ("cifar100", 0.01)])
def test_images_are_learnable(name, chance, cifar10_archive, cifar100_archive):
    archive = cifar10_archive[0] if name == "cifar10" else cifar100_archive[0]
    _, train_files, test_file = LAYOUT[name]
    x, y = _arrays(archive, name, train_files)
    xt, yt = _arrays(archive, name, [test_file])
    centroids = np.stack([x[y == c].mean(0) for c in range(y.max() + 1)])
    distances = (centroids**2).sum(1)[None] - 2 * xt.astype(np.float64) @ centroids.T  # (N, K)
    predicted = distances.argmin(1)
    assert (predicted == yt).mean() > 5 * chance


@pytest.mark.parametrize(
    "kwargs, match",
    [({"name": "mnist"}, "name='mnist' is not allowed"), ({"train_per_class": 0}, ">= 1")],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_cifar_archive(tmp_path, **kwargs)
