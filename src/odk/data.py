"""CIFAR splits in memory: the split arrays, batched augmentation, and the DataModule.

The whole dataset stays in memory as uint8 tensors (60,000 images are 184 MB). A batch is one
indexing operation; augmentation (random crop with 4-pixel zero padding, horizontal flip) and
normalization run on whole batches on the training device, as in KellerJordan/cifar10-airbench,
not image by image through PIL. Every random draw is a function of (seed, epoch, batch), so a
run resumed at an epoch boundary sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from odk.cifar import IMAGE_SIZE
from odk.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
PAD = 4  # pixels of zero padding around each image before the random 32x32 crop


def read_manifest(split_dir: str | Path) -> dict[str, Any]:
    """The `manifest.json` written by the split stage (sizes, classes, mean, std...)."""
    path = Path(split_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path} not found: run `python -m odk.stages.split` first") from None
    except (OSError, ValueError) as error:
        raise DataError(f"{path} is not a valid manifest: {error}") from None
    keys = ("sizes", "classes", "mean", "std")
    if not isinstance(manifest, dict) or not all(k in manifest for k in keys):
        raise DataError(f"{path} is not a valid manifest: it needs {', '.join(keys)}")
    return manifest


def load_split(split_dir: str | Path, split: str) -> tuple[Tensor, Tensor]:
    """One split as uint8 (N, 3, 32, 32) images and int64 (N,) labels, checked.

    Raises:
        DataError: the arrays are missing, corrupt or disagree with the manifest.
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not allowed; allowed: {', '.join(SPLITS)}")
    manifest = read_manifest(split_dir)
    size, num_classes = manifest["sizes"].get(split), len(manifest["classes"])
    arrays = []
    for kind in ("images", "labels"):
        path = Path(split_dir) / f"{split}_{kind}.npy"
        try:
            arrays.append(np.load(path, allow_pickle=False))
        except (OSError, ValueError, EOFError) as error:
            raise DataError(
                f"{path} is missing or corrupt ({error}): run the split stage"
            ) from None
    images, labels = arrays
    shape = (size, 3, IMAGE_SIZE, IMAGE_SIZE)
    if images.dtype != np.uint8 or images.shape != shape:
        what = f"{images.dtype} {images.shape}, expected uint8 {shape}"
        raise DataError(f"{split}_images.npy in {split_dir} is {what} (see manifest.json)")
    if labels.shape != (size,) or size == 0 or labels.min() < 0 or labels.max() >= num_classes:
        what = f"shape {labels.shape} with values outside 0..{num_classes - 1}, or not {size}"
        raise DataError(f"{split}_labels.npy in {split_dir} disagrees with manifest.json: {what}")
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def normalize(images_uint8: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """float32 images with each channel shifted by `mean` and scaled by `std` (in [0, 1] units)."""
    device = images_uint8.device
    shift = torch.as_tensor(mean, dtype=torch.float32, device=device).view(-1, 1, 1) * 255
    scale = 1 / (torch.as_tensor(std, dtype=torch.float32, device=device).view(-1, 1, 1) * 255)
    return (images_uint8.to(torch.float32) - shift).mul_(scale)  # (B, C, H, W)


def augment(images_uint8: Tensor, generator: torch.Generator) -> Tensor:
    """Random crops of the images padded by 4 zero pixels, about half of them flipped.

    Args:
        images_uint8: a (B, C, H, W) batch, on any device.
        generator: a CPU generator; the offsets and flips are drawn from it on the CPU, so
            the result does not depend on the device.
    """
    n, c, h, w = images_uint8.shape
    rows, cols = h + 2 * PAD, w + 2 * PAD
    dy, dx = torch.randint(0, 2 * PAD + 1, (2, n), generator=generator)  # (B,) crop offsets
    flip = torch.rand(n, generator=generator) < 0.5  # (B,)
    # Every output row is a run of w pixels of the padded batch, read forwards, or backwards
    # for a flipped image: both directions sit in `both`, and one index_select copies every
    # run. (Per-element indexing is 3-4x slower on the CPU.)
    flat = F.pad(images_uint8, (PAD, PAD, PAD, PAD)).view(-1)  # (B*C*rows*cols,)
    both = torch.cat([flat, flat.flip(0)])  # both[2L-1-k] == flat[k]
    runs = both.as_strided((both.numel() - w + 1, w), (1, 1))  # runs[k] = both[k:k+w]
    plane = torch.arange(n * c).view(n, c, 1) * (rows * cols)  # start of each channel
    starts = plane + (dy.view(n, 1, 1) + torch.arange(h)) * cols + dx.view(n, 1, 1)  # (B, C, h)
    starts = torch.where(flip.view(n, 1, 1), 2 * flat.numel() - w - starts, starts)
    return runs.index_select(0, starts.flatten().to(both.device)).view(n, c, h, w)


class _InMemory(Dataset):
    """A split held as tensors; `__getitems__` fetches a whole batch with one indexing op."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[Tensor, Tensor]:
        index = torch.as_tensor(indices)  # index_select: 10x faster than images[index]
        return self.images.index_select(0, index), self.labels.index_select(0, index)


def _as_batch(batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    return batch  # `__getitems__` already stacked it


class CIFARDataModule(L.LightningDataModule):
    """The train/val/test splits of `<data_dir>/splits/`, held in memory as uint8 tensors.

    Loaders yield `(uint8 images, int64 labels)`; `on_after_batch_transfer` then augments
    training batches and normalizes every batch on the training device. Training order is a
    function of (seed, epoch) only. Under DDP each process reads its own shard: the samplers
    are `DistributedSampler`s built from the trainer's world size and rank, which Lightning's
    `use_distributed_sampler` recognises and leaves alone (val/test shards are padded with a
    few repeated images when the split does not divide evenly, as Lightning's own would be).

    `num_workers` is accepted and kept for the settings' sake but unused: fetching a batch is
    one indexing op on memory (tens of microseconds), and worker processes would only add
    start-up time and an inter-process copy of every batch.
    """

    def __init__(self, data_dir: str | Path, batch_size: int, num_workers: int = 0, seed: int = 0):
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data_module.batch_size={batch_size} is not allowed; allowed: >= 1")
        self.split_dir = Path(data_dir) / "splits"
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.classes: list[str] = []
        self.num_classes = 0
        self.mean: tuple[float, ...] = ()
        self.std: tuple[float, ...] = ()
        self._splits: dict[str, _InMemory] = {}
        self._epoch, self._batch = -1, 0  # position of the next training batch, for augment

    def setup(self, stage: str | None = None) -> None:
        """Load the manifest and the splits that `stage` needs (all of them for None)."""
        manifest = read_manifest(self.split_dir)
        self.classes = list(manifest["classes"])
        self.num_classes = len(self.classes)
        self.mean, self.std = tuple(manifest["mean"]), tuple(manifest["std"])
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}
        for split in needed.get(stage or "", SPLITS):
            if split not in self._splits:
                self._splits[split] = _InMemory(*load_split(self.split_dir, split))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self._splits:
            self.setup(None)
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer else (1, 0)
        data = self._splits[split]
        # seed + epoch seeds the permutation; Lightning calls set_epoch before every epoch.
        sampler = DistributedSampler(data, world, rank, shuffle=shuffle, seed=self.seed)
        return DataLoader(data, self.batch_size, sampler=sampler, collate_fn=_as_batch)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[Tensor, Tensor]:
        """Augment training batches, then normalize every batch, on the training device.

        The result has the dtype of the trainer's precision (float32, or bfloat16/float64
        under `bf16-true`/`64-true`).
        """
        images, labels = batch
        trainer = self.trainer
        if trainer is not None and trainer.training:
            images = augment(images, self._augment_generator(trainer))
        images = normalize(images, self.mean, self.std)
        if trainer is not None:
            # Lightning converts batches to a `*-true` precision's dtype (bf16-true, 64-true)
            # before this hook, when they are still uint8: convert the float result the same way.
            images = trainer.precision_plugin.convert_input(images)
        return images, labels

    def _augment_generator(self, trainer: L.Trainer) -> torch.Generator:
        """A CPU generator seeded from (seed, epoch, batch index, rank).

        The batch index is counted here (it restarts with each epoch), since Lightning does not
        pass it to this hook; runs resume at epoch boundaries, where the count is 0 either way.
        """
        if trainer.current_epoch != self._epoch:
            self._epoch, self._batch = trainer.current_epoch, 0
        entropy = [self.seed, self._epoch, self._batch, trainer.global_rank]
        self._batch += 1
        state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(state))
