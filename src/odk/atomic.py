"""Atomic outputs: a file or folder appears complete, in one rename, or not at all.

Every stage writes through these helpers, so a failed or killed stage never leaves a
half-written model, metrics file or split that DVC would cache. Temporary names are hidden
siblings of the target (same filesystem, so the rename is atomic) and keep the target's
suffix, so writers that choose a format by extension (matplotlib, ONNX) still work. Files get
the usual umask-based permissions, not `mkstemp`'s private 0600.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling folder of `final` that replaces it only if the block succeeds.

    A killed run's hidden `.<name>.tmp-*` leftovers are removed by the next run.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{final.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    tmp.mkdir(mode=0o777 & ~_umask())
    old = final.parent / f".{final.name}.tmp-old-{os.getpid()}"
    try:
        yield tmp
        if final.exists():
            os.rename(final, old)  # moved aside, so that the rename below is a single step
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing left once renamed


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")
