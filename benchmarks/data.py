"""Benchmark: augmented training images per second, this DataModule vs torchvision's CIFAR10.

Both read the same synthetic archive in the official CIFAR-10 format, written to a temporary
folder and run through the download and split stages. torchvision: `CIFAR10` with
RandomCrop(32, 4), RandomHorizontalFlip, ToTensor and Normalize through a DataLoader with
num_workers=2 (persistent workers, one CPU thread each). Ours: `CIFARDataModule`'s loader and
its batched augmentation and normalization (`on_after_batch_transfer`), in the main process on
one CPU thread (more threads only fight over a busy CPU). Each side is warmed up by one epoch,
then timed over the next ones. Also: the resident memory that loading every split adds to a
fresh process, against the splits' raw uint8 size.

Run: `python benchmarks/data.py [--images 10000] [--batch-size 128] [--epochs 2]`.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import torch
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.datasets import CIFAR10

from odk.config import load_config
from odk.data import CIFARDataModule, read_manifest
from odk.stages.download import download
from odk.stages.split import split
from odk.synthetic import write_cifar_archive

REPO = Path(__file__).resolve().parents[1]
SPEEDUP_TARGET, MEMORY_TARGET = 10.0, 1.5


class MirrorCIFAR10(CIFAR10):
    """torchvision's CIFAR10 without its check of the official per-file md5s (md5 None)."""

    train_list = [[name, None] for name, _ in CIFAR10.train_list]
    test_list = [[name, None] for name, _ in CIFAR10.test_list]
    meta = {**CIFAR10.meta, "md5": None}


def torchvision_rate(raw_dir: Path, mean: list[float], std: list[float], args) -> float:
    """Augmented images per second through torchvision's dataset and a 2-worker DataLoader."""
    transform = T.Compose(
        [
            T.RandomCrop(32, padding=4),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    dataset = MirrorCIFAR10(str(raw_dir), train=True, transform=transform)
    loader = DataLoader(
        dataset, args.batch_size, shuffle=True, num_workers=2, persistent_workers=True
    )
    return _rate(lambda epoch: iter(loader), args.epochs)


def odk_rate(data_dir: Path, args) -> float:
    """Augmented images per second through CIFARDataModule and its batch hook, on the CPU."""
    torch.set_num_threads(1)
    dm = CIFARDataModule(data_dir, args.batch_size, seed=0)
    dm.setup("fit")
    # What the hook reads from Lightning's trainer while it trains.
    dm.trainer = SimpleNamespace(training=True, current_epoch=0, global_rank=0, world_size=1)
    loader = dm.train_dataloader()

    def epoch_batches(epoch: int):
        dm.trainer.current_epoch = epoch
        loader.sampler.set_epoch(epoch)
        return (dm.on_after_batch_transfer(batch, 0) for batch in loader)

    return _rate(epoch_batches, args.epochs)


def _rate(epoch_batches, epochs: int) -> float:
    for _ in epoch_batches(0):  # warm-up: worker start-up, caches, allocator
        pass
    seen, start = 0, time.perf_counter()
    for epoch in range(1, epochs + 1):
        for images, _ in epoch_batches(epoch):
            seen += len(images)
    return seen / (time.perf_counter() - start)


def loaded_memory(data_dir: Path) -> tuple[int, int]:
    """Resident memory that loading every split adds to this process, and their uint8 size."""
    gc.collect()
    before = psutil.Process().memory_info().rss
    dm = CIFARDataModule(data_dir, 128)
    dm.setup()
    after = psutil.Process().memory_info().rss
    raw = sum(read_manifest(dm.split_dir)["sizes"].values()) * 3 * 32 * 32
    return after - before, raw


def _memory_in_fresh_process(data_dir: Path) -> tuple[int, int]:
    # A fresh process: memory freed by the stages above would otherwise be reused and hidden.
    command = [sys.executable, __file__, "--memory-of", str(data_dir)]
    used, raw = subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()
    return int(used), int(raw)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="training images (10 classes)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after a warm-up one")
    parser.add_argument("--memory-of", type=Path, help=argparse.SUPPRESS)  # internal
    args = parser.parse_args()
    if args.memory_of:
        print(*loaded_memory(args.memory_of))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        archive, md5 = write_cifar_archive(Path(tmp), "cifar10", args.images // 10, 100, seed=0)
        overrides = [f"dataset.url={archive}", f"dataset.md5={md5}", f"data_module.data_dir={tmp}"]
        cfg = load_config(overrides, REPO / "params.yaml")
        download(cfg)
        manifest = split(cfg)
        used, raw = _memory_in_fresh_process(Path(tmp))
        theirs = torchvision_rate(Path(tmp) / "raw", manifest["mean"], manifest["std"], args)
        ours = odk_rate(Path(tmp), args)
    speedup, memory = ours / theirs, used / raw
    print(f"\n{args.images} synthetic CIFAR-10 training images, batch {args.batch_size}, ", end="")
    print(f"torch {torch.__version__}, {psutil.cpu_count()} CPUs")
    print(f"torchvision CIFAR10 + DataLoader(num_workers=2): {theirs:>10,.0f} images/s")
    print(f"odk CIFARDataModule (in memory, batched):        {ours:>10,.0f} images/s")
    verdicts = [speedup >= SPEEDUP_TARGET, memory <= MEMORY_TARGET]
    print(f"speed-up: {speedup:.1f}x (target >= {SPEEDUP_TARGET:g}x): {_verdict(verdicts[0])}")
    print(
        f"resident memory of the loaded splits: {used / 2**20:.1f} MiB for {raw / 2**20:.1f} MiB "
        f"of uint8 images: {memory:.2f}x (target <= {MEMORY_TARGET:g}x): {_verdict(verdicts[1])}"
    )
    return 0 if all(verdicts) else 1


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


if __name__ == "__main__":
    sys.exit(main())
