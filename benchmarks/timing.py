"""Timing helpers shared by the benchmarks: interleaved medians, malloc settings, CPU load.

The benchmarks run as scripts (``python benchmarks/layer.py``), so this module is imported from
the script's own folder.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from collections.abc import Callable

import torch


def cpu_busy_fraction(seconds: float = 1.0) -> float | None:
    """Share of all CPUs busy (with anything) over ``seconds`` before the run; None off Linux."""
    try:
        with open("/proc/stat") as f:
            before = [int(v) for v in f.readline().split()[1:]]
        time.sleep(seconds)
        with open("/proc/stat") as f:
            after = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return None
    delta = [b - a for a, b in zip(before, after, strict=True)]
    return 1 - (delta[3] + delta[4]) / max(sum(delta), 1)  # idle + iowait


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory (no mmap, no trimming), as jemalloc or tcmalloc do.

    With glibc's defaults each large tensor is a fresh mmap whose pages fault in at first touch:
    ~450k faults, about a second, in every ResNet-18 step at batch 128, paid by both models and
    never by a GPU's caching allocator. Returns False where glibc is not the allocator.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return libc.mallopt(m_mmap_max, 0) == 1 and libc.mallopt(m_trim_threshold, 2**31 - 1) == 1


def median_times(
    candidates: dict[str, Callable[[], object]],
    repeats: int,
    steps: int = 1,
    warmup: int = 1,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Median wall-clock seconds per call of each candidate: ``repeats`` timings of ``steps`` calls.

    Each candidate first runs ``warmup`` calls. Repeats are interleaved and the order rotates
    every round (A B C, B C A, C A B, ...), so that a busy machine slows all candidates alike and
    no candidate always runs right after the same one: one that churns memory would otherwise
    charge the page faults of a regrown heap to its fixed successor. On CUDA each timing starts
    and ends with a synchronize, so it holds the kernels' run time, not only their launch.
    """

    def sync() -> None:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    for i in range(repeats):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            fn = candidates[name]
            sync()
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            sync()
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(ts) for name, ts in times.items()}
