"""Provenance and atomic writes for stage outputs.

Every metrics file records what produced it (seed, dataset md5, package versions), and every
output is written to a temporary file renamed into place, so a killed stage never leaves a
half-written file that DVC would cache.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

_PACKAGES = ("odk", "torch", "torchvision", "lightning", "dvc", "dvclive", "numpy")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide a result (plus Python)."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def provenance(seed: int, dataset_md5: str) -> dict[str, Any]:
    """The fields recorded with every metrics file."""
    return {"seed": seed, "dataset_md5": dataset_md5, "versions": package_versions()}


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
