"""Split loading, batched augmentation and normalization, and the in-memory DataModule."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.plugins.precision import (
    DoublePrecision,
    HalfPrecision,
    MixedPrecision,
    Precision,
)
from torch.utils.data import DistributedSampler

from odk.data import CIFARDataModule, augment, load_split, normalize, read_manifest
from odk.errors import ConfigError, DataError

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)


@pytest.fixture
def data_copy(cifar10_data: Path, tmp_path: Path) -> Path:
    """A copy of the session's data folder that a test may damage."""
    return Path(shutil.copytree(cifar10_data, tmp_path / "data"))


def _trainer(training: bool = True, epoch: int = 0, rank: int = 0, world: int = 1, precision=None):
    """What the DataModule reads from Lightning's trainer."""
    return SimpleNamespace(
        training=training,
        current_epoch=epoch,
        global_rank=rank,
        world_size=world,
        precision_plugin=precision or Precision(),
    )


def _module(data_dir: Path, batch_size: int = 32, seed: int = 0, **trainer) -> CIFARDataModule:
    dm = CIFARDataModule(data_dir, batch_size, seed=seed)
    dm.setup()
    dm.trainer = _trainer(**trainer) if trainer else None
    return dm


def _reference_augment(images: torch.Tensor, seed: int) -> torch.Tensor:
    """Crop and flip image by image, drawing from the generator as `augment` does."""
    generator = torch.Generator().manual_seed(seed)
    dy, dx = torch.randint(0, 9, (2, len(images)), generator=generator)
    flip = torch.rand(len(images), generator=generator) < 0.5
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    h, w = images.shape[2:]
    crops = [padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(len(images))]
    return torch.stack([c.flip(2) if f else c for c, f in zip(crops, flip, strict=True)])


@pytest.mark.parametrize("split, size", [("train", 180), ("val", 20), ("test", 100)])
def test_load_split(cifar10_data, split, size):
    images, labels = load_split(cifar10_data / "splits", split)
    assert images.dtype == torch.uint8 and images.shape == (size, 3, 32, 32)
    assert labels.dtype == torch.int64 and labels.shape == (size,)
    assert (
        np.bincount(labels.numpy()).tolist()
        == read_manifest(cifar10_data / "splits")["class_counts"][split]
    )


@pytest.mark.parametrize(
    "damage, match",
    [
        (
            lambda d: (d / "manifest.json").unlink(),
            "manifest.json not found: run `python -m odk.stages.split`",
        ),
        (lambda d: (d / "manifest.json").write_text("{"), "not a valid manifest"),
        (lambda d: (d / "manifest.json").write_text("{}"), "it needs sizes, classes, mean, std"),
        (lambda d: (d / "val_images.npy").unlink(), "val_images.npy is missing or corrupt"),
        (
            lambda d: (d / "val_labels.npy").write_bytes(b"garbage"),
            "val_labels.npy is missing or corrupt",
        ),
        (
            lambda d: np.save(d / "val_images.npy", np.zeros((20, 3, 32, 32), np.float32)),
            "is float32",
        ),
        (
            lambda d: np.save(d / "val_images.npy", np.zeros((19, 3, 32, 32), np.uint8)),
            r"\(19, 3, 32, 32\)",
        ),
        (lambda d: np.save(d / "val_labels.npy", np.full(20, 10, np.uint8)), "values outside 0..9"),
        (
            lambda d: np.save(d / "val_labels.npy", np.zeros(21, np.uint8)),
            "disagrees with manifest",
        ),
    ],
)
def test_damaged_split_is_refused(data_copy, damage, match):
    damage(data_copy / "splits")
    with pytest.raises(DataError, match=match):
        load_split(data_copy / "splits", "val")


def test_unknown_split_name(cifar10_data):
    with pytest.raises(ValueError, match="split='dev' is not allowed; allowed: train, val, test"):
        load_split(cifar10_data / "splits", "dev")


def test_normalize_uses_the_manifest_units():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    out = normalize(images, MEAN, STD)
    expected = (images.double() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(
        3, 1, 1
    )
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected.float(), rtol=1e-6, atol=1e-6)


def test_normalized_train_split_has_zero_mean_unit_std(cifar10_data):
    manifest = read_manifest(cifar10_data / "splits")
    images, _ = load_split(cifar10_data / "splits", "train")
    out = normalize(images, manifest["mean"], manifest["std"]).double()
    torch.testing.assert_close(
        out.mean((0, 2, 3)), torch.zeros(3, dtype=torch.double), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        out.std((0, 2, 3), correction=0), torch.ones(3, dtype=torch.double), atol=1e-5, rtol=0
    )
    low = (0 - torch.tensor(manifest["mean"])) / torch.tensor(manifest["std"])
    high = (1 - torch.tensor(manifest["mean"])) / torch.tensor(manifest["std"])
    assert torch.all(out.amin((0, 2, 3)) >= low - 1e-5) and torch.all(
        out.amax((0, 2, 3)) <= high + 1e-5
    )


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (64, 3, 32, 32), (5, 1, 16, 24)])
@pytest.mark.parametrize("seed", [0, 1])
def test_augment_is_a_padded_crop_and_flip(shape, seed):
    images = torch.randint(0, 256, shape, dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(seed))
    assert out.dtype == torch.uint8 and out.shape == shape
    assert torch.equal(out, _reference_augment(images, seed))


def test_augment_is_deterministic_and_varied():
    images = torch.randint(1, 256, (2048, 3, 32, 32), dtype=torch.uint8)  # 0 only from padding
    first = augment(images, torch.Generator().manual_seed(3))
    assert torch.equal(first, augment(images, torch.Generator().manual_seed(3)))
    assert not torch.equal(first, augment(images, torch.Generator().manual_seed(4)))
    generator = torch.Generator().manual_seed(3)
    dy, dx = torch.randint(0, 9, (2, 2048), generator=generator)
    flips = torch.rand(2048, generator=generator) < 0.5
    assert len(set(zip(dy.tolist(), dx.tolist(), strict=True))) == 81  # every offset occurs
    assert 0.45 < flips.float().mean() < 0.55
    zero_rows = (first == 0).all(dim=(1, 3)).sum(1)  # padding rows shown, per image
    torch.testing.assert_close(zero_rows, (dy - 4).abs())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_augment_does_not_depend_on_the_device():
    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    on_gpu = augment(images.cuda(), torch.Generator().manual_seed(0))
    assert on_gpu.is_cuda and torch.equal(
        on_gpu.cpu(), augment(images, torch.Generator().manual_seed(0))
    )


def test_datamodule_setup(cifar10_data):
    dm = CIFARDataModule(cifar10_data, 32, num_workers=4, seed=0)
    dm.setup("fit")
    manifest = read_manifest(cifar10_data / "splits")
    assert dm.split_dir == cifar10_data / "splits"
    assert (dm.classes, dm.num_classes) == (manifest["classes"], 10)
    assert (list(dm.mean), list(dm.std)) == (manifest["mean"], manifest["std"])
    assert dm.train_dataloader().num_workers == 0  # documented: in-memory batches need none


@pytest.mark.parametrize("split, size", [("train", 180), ("val", 20), ("test", 100)])
@pytest.mark.parametrize("batch_size", [32, 64, 1000])
def test_loaders_yield_every_image_once_in_uint8_batches(cifar10_data, split, size, batch_size):
    dm = _module(cifar10_data, batch_size)
    batches = list(getattr(dm, f"{split}_dataloader")())
    assert [len(b[1]) for b in batches] == [
        min(batch_size, size - i) for i in range(0, size, batch_size)
    ]
    assert all(x.dtype == torch.uint8 and y.dtype == torch.int64 for x, y in batches)
    images, labels = load_split(cifar10_data / "splits", split)
    seen = Counter((x.numpy().tobytes(), int(y)) for b in batches for x, y in zip(*b, strict=True))
    assert seen == Counter(
        (x.numpy().tobytes(), int(y)) for x, y in zip(images, labels, strict=True)
    )
    if split != "train":  # evaluation keeps the stored order
        assert torch.equal(torch.cat([b[0] for b in batches]), images)


def _order(dm: CIFARDataModule, epoch: int) -> torch.Tensor:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)  # as Lightning does before every epoch
    return torch.cat([labels for _, labels in loader])


def test_training_order_is_a_function_of_seed_and_epoch(cifar10_data):
    resumed = _module(cifar10_data, seed=5)
    assert torch.equal(_order(_module(cifar10_data, seed=5), 3), _order(resumed, 3))
    assert not torch.equal(_order(resumed, 3), _order(resumed, 4))
    assert not torch.equal(_order(resumed, 3), _order(_module(cifar10_data, seed=6), 3))


def test_distributed_ranks_read_disjoint_shards(cifar10_data):
    shards = [
        _module(cifar10_data, 1000, training=True, rank=r, world=2).train_dataloader()
        for r in (0, 1)
    ]
    assert all(isinstance(loader.sampler, DistributedSampler) for loader in shards)
    indices = [list(loader.sampler) for loader in shards]
    assert len(indices[0]) == len(indices[1]) == 90
    assert sorted(indices[0] + indices[1]) == list(range(180))


def test_training_batches_are_augmented_then_normalized(cifar10_data):
    dm = _module(cifar10_data, seed=1, training=True, epoch=2)
    batch = next(iter(dm.train_dataloader()))
    first, second = dm.on_after_batch_transfer(batch, 0), dm.on_after_batch_transfer(batch, 0)
    assert first[0].dtype == torch.float32 and torch.equal(first[1], batch[1])
    assert not torch.equal(first[0], second[0])  # batch 0 and batch 1 of the epoch differ
    again = _module(cifar10_data, seed=1, training=True, epoch=2)  # e.g. a resumed run
    assert torch.equal(again.on_after_batch_transfer(batch, 0)[0], first[0])
    assert not torch.equal(normalize(batch[0], dm.mean, dm.std), first[0])


@pytest.mark.parametrize("trainer", [{"training": False}, {}])
def test_evaluation_batches_are_only_normalized(cifar10_data, trainer):
    dm = _module(cifar10_data, **trainer)
    images, labels = next(iter(dm.val_dataloader()))
    out, out_labels = dm.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(out, normalize(images, dm.mean, dm.std)) and torch.equal(out_labels, labels)


@pytest.mark.parametrize(
    "precision, dtype",
    [
        (HalfPrecision("bf16-true"), torch.bfloat16),
        (DoublePrecision(), torch.float64),
        (MixedPrecision("bf16-mixed", "cpu"), torch.float32),  # autocast casts inside the model
    ],
)
@pytest.mark.parametrize("training", [True, False])
def test_batches_take_the_dtype_of_a_true_precision(cifar10_data, precision, dtype, training):
    dm = _module(cifar10_data, training=training, precision=precision)
    images, labels = next(iter(dm.train_dataloader()))
    out, out_labels = dm.on_after_batch_transfer((images, labels), 0)
    assert out.dtype == dtype and torch.equal(out_labels, labels)


def test_bad_batch_size():
    with pytest.raises(ConfigError, match="data_module.batch_size=0 is not allowed"):
        CIFARDataModule("data", 0)


class _Probe(L.LightningModule):
    """Records what each training batch looks like once the DataModule's hook has run."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(3 * 32 * 32, 10)
        self.seen: list[tuple[int, torch.dtype, torch.Tensor]] = []
        self.validated: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        images, labels = batch
        self.seen.append((self.current_epoch, images.dtype, labels.clone()))
        return torch.nn.functional.cross_entropy(self.layer(images.flatten(1)), labels)

    def validation_step(self, batch, batch_idx):
        self.validated.append(batch[0])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit(data_dir: Path) -> _Probe:
    probe = _Probe()
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(probe, datamodule=CIFARDataModule(data_dir, 64, seed=3))
    return probe


def test_lightning_runs_the_hooks_and_reshuffles_each_epoch(cifar10_data):
    first, second = _fit(cifar10_data), _fit(cifar10_data)
    assert [(epoch, dtype) for epoch, dtype, _ in first.seen] == [(0, torch.float32)] * 3 + [
        (1, torch.float32)
    ] * 3
    orders = [
        torch.cat([labels for e, _, labels in run.seen if e == epoch])
        for run in (first, second)
        for epoch in (0, 1)
    ]
    assert torch.equal(orders[0], orders[2]) and torch.equal(orders[1], orders[3])  # same seed
    assert not torch.equal(orders[0], orders[1])  # set_epoch reached the sampler
    manifest = read_manifest(cifar10_data / "splits")
    images, _ = load_split(cifar10_data / "splits", "val")
    expected = normalize(images, manifest["mean"], manifest["std"])  # in order, not augmented
    assert len(first.validated) == 2 and all(torch.equal(v, expected) for v in first.validated)
