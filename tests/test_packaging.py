"""Packaging and repository hygiene: metadata setuptools accepts as is, generated files ignored."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]


def test_license_is_an_spdx_expression():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"  # a TOML table is deprecated by setuptools
    assert "setuptools>=77" in project["build-system"]["requires"][0]  # first to read SPDX


@pytest.mark.parametrize("path", ["dvc_plots/index.html", "reports/experiments.md"])
def test_generated_pages_and_reports_are_git_ignored(path: str):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    proc = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
    assert proc.returncode == 0, f"{path} is not ignored by .gitignore"
