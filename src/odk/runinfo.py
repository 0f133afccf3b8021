"""Provenance: what produced a result (seed, dataset md5, package versions).

Every run's records (`metrics/runs/<kind>/seed<N>/*.json`) carry these fields, so a number
can be traced to its inputs; the DVC metrics files hold metrics only.
"""

from __future__ import annotations

import platform
from importlib import metadata
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


def provenance(seed: int, split_seed: int, dataset_md5: str) -> dict[str, Any]:
    """The fields recorded with every run: training seed, split seed, data, package versions."""
    return {
        "seed": seed,
        "split_seed": split_seed,
        "dataset_md5": dataset_md5,
        "versions": package_versions(),
    }
