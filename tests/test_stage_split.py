"""Split stage: stratified sizes, exact totals, byte-identical reruns, manifest, errors."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from odk.cifar import read_raw
from odk.config import load_config
from odk.errors import DataError, OdkError
from odk.stages.download import download
from odk.stages.split import channel_stats, split, stratified_split
from odk.synthetic import CIFAR10_CLASSES

FILES = [f"{s}_{k}.npy" for s in ("train", "val", "test") for k in ("images", "labels")]


@pytest.fixture
def downloaded(params_file: Path) -> Path:
    """params.yaml of a data folder where the download stage has run."""
    download(load_config((), params_file))
    return params_file


def _split(params: Path, *overrides: str) -> dict:
    return split(load_config(list(overrides), params))


def _files(params: Path) -> dict[str, bytes]:
    split_dir = params.parent / "data" / "splits"
    return {p.name: p.read_bytes() for p in sorted(split_dir.iterdir())}


@pytest.mark.parametrize(
    "labels, subset_fraction, valid_size, sizes",
    [
        (np.repeat(np.arange(10), 5000), 1.0, 0.1, (45000, 5000)),
        (np.repeat(np.arange(10), 5000), 0.1, 0.1, (4500, 500)),
        (np.repeat(np.arange(10), 5000), 0.5, 0.2, (20000, 5000)),
        (np.repeat(np.arange(100), 500), 1.0, 0.1, (45000, 5000)),
        (np.repeat(np.arange(100), 500), 0.1, 0.1, (4500, 500)),
        (np.repeat(np.arange(3), [7, 11, 13]), 0.5, 0.3, (11, 5)),  # uneven classes
    ],
)
def test_split_sizes_are_exact_and_stratified(labels, subset_fraction, valid_size, sizes):
    train, val = stratified_split(labels, subset_fraction, valid_size, seed=42)
    assert (len(train), len(val)) == sizes
    assert len(np.intersect1d(train, val)) == 0 and len(np.unique(train)) == len(train)
    counts = np.bincount(labels)
    kept = np.bincount(labels[np.concatenate([train, val])], minlength=len(counts))
    held = np.bincount(labels[val], minlength=len(counts))
    assert np.all(np.abs(kept - counts * subset_fraction) < 1)  # each class within one image
    assert np.all(np.abs(held - kept * valid_size) < 1)


def test_split_depends_on_the_seed_only():
    labels = np.repeat(np.arange(10), 100)
    first, again = stratified_split(labels, 0.5, 0.1, 1), stratified_split(labels, 0.5, 0.1, 1)
    other = stratified_split(labels, 0.5, 0.1, 2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])


@pytest.mark.parametrize(
    "subset_fraction, valid_size, sizes, per_class",
    [
        (1.0, 0.1, (180, 20, 100), (18, 2)),
        (0.5, 0.1, (90, 10, 100), (9, 1)),
        (0.5, 0.2, (80, 20, 100), (8, 2)),
        (1.0, 0.25, (150, 50, 100), (15, 5)),
    ],
)
def test_split_stage_writes_stratified_arrays(
    downloaded, subset_fraction, valid_size, sizes, per_class
):
    overrides = [
        f"data_module.subset_fraction={subset_fraction}",
        f"data_module.valid_size={valid_size}",
    ]
    manifest = _split(downloaded, *overrides)
    split_dir = downloaded.parent / "data" / "splits"
    assert sorted(p.name for p in split_dir.iterdir()) == sorted([*FILES, "manifest.json"])
    assert json.loads((split_dir / "manifest.json").read_text()) == manifest
    assert manifest["sizes"] == dict(zip(("train", "val", "test"), sizes, strict=True))
    assert manifest["class_counts"]["train"] == [per_class[0]] * 10
    assert manifest["class_counts"]["val"] == [per_class[1]] * 10
    for name, size in manifest["sizes"].items():
        images = np.load(split_dir / f"{name}_images.npy")
        labels = np.load(split_dir / f"{name}_labels.npy")
        assert images.dtype == np.uint8 and images.shape == (size, 3, 32, 32)
        assert (
            labels.dtype == np.uint8
            and np.bincount(labels).tolist() == manifest["class_counts"][name]
        )


def test_manifest_records_the_source_and_the_train_statistics(downloaded, cifar10_archive):
    manifest = _split(downloaded)
    raw = read_raw(downloaded.parent / "data" / "raw", "cifar10")
    train = np.load(downloaded.parent / "data" / "splits" / "train_images.npy")
    assert manifest["classes"] == list(CIFAR10_CLASSES)
    assert manifest["source_md5"] == cifar10_archive[1] and manifest["dataset"] == "cifar10"
    assert (manifest["seed"], manifest["subset_fraction"], manifest["valid_size"]) == (42, 1.0, 0.1)
    pixels = train.astype(np.float64) / 255
    np.testing.assert_allclose(manifest["mean"], pixels.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(manifest["std"], pixels.std(axis=(0, 2, 3)), rtol=1e-12)
    assert all(0 < m < 1 for m in manifest["mean"]) and all(0 < s < 1 for s in manifest["std"])
    test = np.load(downloaded.parent / "data" / "splits" / "test_images.npy")
    assert np.array_equal(test, raw.test_images)  # the whole official test set


def test_channel_stats_are_exact():
    images = np.zeros((2, 2, 1, 1), dtype=np.uint8)
    images[:, 0] = [[[0]], [[255]]]
    images[:, 1] = 51
    assert channel_stats(images) == ([0.5, 0.2], [0.5, 0.0])


def test_rerun_is_byte_identical_and_seed_dependent(downloaded):
    _split(downloaded)
    first = _files(downloaded)
    _split(downloaded)
    assert _files(downloaded) == first
    _split(downloaded, "seed=7")
    changed = {name for name, data in _files(downloaded).items() if data != first[name]}
    assert changed == {
        "train_images.npy",
        "train_labels.npy",
        "val_images.npy",
        "val_labels.npy",
        "manifest.json",
    }
    assert sorted(p.name for p in (downloaded.parent / "data").iterdir()) == ["raw", "splits"]


def test_cifar100_split(make_params, cifar100_archive):
    params = make_params(cifar100_archive, "cifar100")
    download(load_config((), params))
    manifest = _split(params)
    assert manifest["sizes"] == {"train": 900, "val": 100, "test": 200}
    assert manifest["classes"] == [f"class_{i:02d}" for i in range(100)]
    assert manifest["class_counts"]["val"] == [1] * 100


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            ["data_module.subset_fraction=0.04"],
            r"subset_fraction=0.04 leaves class 'ship' without training images \(8 images kept",
        ),
        (
            ["data_module.subset_fraction=0.05", "data_module.valid_size=0.01"],
            "valid_size=0.01 of 10 images leaves the validation set empty",
        ),
        (
            ["data_module.subset_fraction=0.05", "data_module.valid_size=0.5"],
            "leaves the validation set empty",  # each class has one image, kept for training
        ),
    ],
)
def test_split_leaving_a_set_empty_is_refused(downloaded, overrides, match):
    _split(downloaded)
    before = _files(downloaded)
    with pytest.raises(DataError, match=match):
        _split(downloaded, *overrides)
    assert _files(downloaded) == before  # the previous splits stay as they were
    assert sorted(p.name for p in (downloaded.parent / "data").iterdir()) == ["raw", "splits"]


def test_missing_raw_is_refused(params_file):
    with pytest.raises(DataError, match=r"raw not found: run `python -m odk.stages.download`"):
        _split(params_file)


def test_raw_of_another_archive_is_refused(downloaded):
    with pytest.raises(DataError, match=r"holds cifar10 \(md5 \w+\), not cifar10 \(0{32}\)"):
        _split(downloaded, "dataset.md5=" + "0" * 32)


def test_corrupt_raw_is_refused(downloaded):
    batch = downloaded.parent / "data" / "raw" / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_3 is not a CIFAR python-format pickle"):
        _split(downloaded)


@pytest.mark.filterwarnings("ignore:'odk.stages.split' found in sys.modules")
def test_command_line_with_an_override(downloaded, monkeypatch, capsys):
    monkeypatch.chdir(downloaded.parent)
    monkeypatch.setattr("sys.argv", ["split", "data_module.subset_fraction=0.5"])
    runpy.run_module("odk.stages.split", run_name="__main__")  # `python -m odk.stages.split ...`
    assert "split: 90/10/100 train/val/test images of 10 classes" in capsys.readouterr().out
    monkeypatch.setattr("sys.argv", ["split", "model.r=3"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("odk.stages.split", run_name="__main__")
    err = capsys.readouterr().err
    assert (info.value.code, err.count("\n")) == (2, 1)
    assert err.startswith("error: model.r=3 is not allowed: r must divide")


def test_a_concurrent_runs_temporary_folder_is_left_alone(downloaded, live_pid, dead_pid):
    data = downloaded.parent / "data"
    running, killed = data / f".splits.tmp-{live_pid}", data / f".splits.tmp-{dead_pid}"
    for folder in (running, killed):
        folder.mkdir()
        (folder / "train_images.npy").write_bytes(b"being written")
    _split(downloaded)
    assert (running / "train_images.npy").read_bytes() == b"being written"
    assert sorted(p.name for p in data.iterdir()) == sorted([running.name, "raw", "splits"])


def test_a_splits_folder_the_stage_did_not_write_is_refused(downloaded):
    splits = downloaded.parent / "data" / "splits"
    splits.mkdir()
    (splits / "notes.txt").write_text("mine")
    with pytest.raises(OdkError, match=f"{splits} is not this stage's output"):
        _split(downloaded)
    assert [p.name for p in splits.iterdir()] == ["notes.txt"]
