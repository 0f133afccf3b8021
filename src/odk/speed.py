"""Inference speed that two models can be compared on: same threads, warm-up, median, conditions.

Each `evaluate` run times its model alone, in its own process, perhaps while the machine does
other work, so one timed pass means little. Here a fixed batch of test images goes through the
model `WARMUP_PASSES` times untimed (allocations, kernel selection, caches), then
`TIMED_PASSES` times timed; the speed is the batch size over the median pass. The CPU thread
count is set explicitly for the measurement (every core the process may use) and restored
after. The conditions are recorded with the number, and `compare` divides two speeds only when
their conditions are equal. The machine's load (1-minute average) is recorded too, as a
warning sign: it is not a condition, since no run can choose it. `benchmarks/step.py` times
the two models side by side in one process, interleaved, for a closer comparison.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from odk.guards import cpu_count

BATCH = 256
WARMUP_PASSES = 2
TIMED_PASSES = 5


def device_name(device: torch.device) -> str:
    """The GPU's or CPU's model name (`platform.processor()` is empty on most Linux systems)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@torch.inference_mode()
def measure_inference(
    model: nn.Module,
    images: torch.Tensor,
    prepare: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
) -> dict[str, Any]:
    """Images per second of `model` in eval mode on up to `BATCH` of `images`.

    Args:
        model: The network (moved to `device` and set to eval mode).
        images: Test images (uint8); the first `BATCH` are used.
        prepare: Turns a batch on `device` into the model's input (normalization).
        device: Where to run.

    Returns:
        `images_per_s` (batch size over the median timed pass), `pass_s` (the timed passes'
        seconds, sorted), `conditions` (what must match for two speeds to be compared) and
        `load_average` (the machine's 1-minute load when timing started, or None).
    """
    model = model.to(device).eval()
    batch = prepare(images[:BATCH].to(device))
    threads_before = torch.get_num_threads()
    threads = cpu_count()
    torch.set_num_threads(threads)
    try:
        for _ in range(WARMUP_PASSES):
            model(batch)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        seconds = []
        for _ in range(TIMED_PASSES):
            _sync(device)
            start = time.perf_counter()
            model(batch)
            _sync(device)
            seconds.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads_before)
    conditions = {
        "device": device.type,
        "device_name": device_name(device),
        "threads": threads,
        "batch_size": len(batch),
        "warmup_passes": WARMUP_PASSES,
        "timed_passes": TIMED_PASSES,
        "statistic": "median",
        "torch": torch.__version__,
    }
    return {
        "images_per_s": round(len(batch) / max(statistics.median(seconds), 1e-9), 1),
        "pass_s": sorted(float(f"{s:.6g}") for s in seconds),
        "conditions": conditions,
        "load_average": None if load is None else round(load, 2),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
