"""Shared fixtures: small synthetic CIFAR archives, params files pointing at them, split data.

The archives are in the official python format (`odk.synthetic`), so the real download and
split stages run on them; the params files are the repository's params.yaml with the dataset
and data folder redirected into pytest's temporary directory.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from odk.config import load_config
from odk.stages.download import download
from odk.stages.split import split
from odk.synthetic import write_cifar_archive

# tests/e2e.py: the `reproduced_repo` fixture and helpers of the end-to-end tests
pytest_plugins = ["e2e"]

REPO = Path(__file__).resolve().parents[1]
Archive = tuple[Path, str]  # (path, md5)


def write_params(path: Path, archive: Archive, data_dir: Path, name: str = "cifar10") -> Path:
    """Write the repository's params.yaml to `path`, pointed at `archive` and `data_dir`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"].update(name=name, url=str(archive[0]), md5=archive[1])
    params["data_module"]["data_dir"] = str(data_dir)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def cifar10_archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """A CIFAR-10 archive of 20 training and 10 test images per class."""
    return write_cifar_archive(tmp_path_factory.mktemp("cifar10"), "cifar10", 20, 10)


@pytest.fixture(scope="session")
def cifar100_archive(tmp_path_factory: pytest.TempPathFactory) -> Archive:
    """A CIFAR-100 archive of 10 training and 2 test images per fine class."""
    return write_cifar_archive(tmp_path_factory.mktemp("cifar100"), "cifar100", 10, 2)


@pytest.fixture
def make_params(tmp_path: Path) -> Callable[..., Path]:
    """`make_params(archive, name="cifar10")`: a params.yaml using `tmp_path/data`."""

    def make(archive: Archive, name: str = "cifar10") -> Path:
        return write_params(tmp_path / "params.yaml", archive, tmp_path / "data", name)

    return make


@pytest.fixture
def params_file(make_params: Callable[..., Path], cifar10_archive: Archive) -> Path:
    """A params.yaml pointed at the CIFAR-10 archive, with `data_dir` in `tmp_path`."""
    return make_params(cifar10_archive)


@pytest.fixture(scope="session")
def cifar10_data(tmp_path_factory: pytest.TempPathFactory, cifar10_archive: Archive) -> Path:
    """A data folder holding raw/ and splits/ (180/20/100 images) of the CIFAR-10 archive.

    Shared by the whole session: tests must not change it.
    """
    root = tmp_path_factory.mktemp("cifar10_data")
    cfg = load_config((), write_params(root / "params.yaml", cifar10_archive, root / "data"))
    download(cfg)
    split(cfg)
    return root / "data"


@pytest.fixture
def dead_pid() -> int:
    """The PID of a process that has exited (as a killed run's would be)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The PID of a running process (as another run's would be), stopped afterwards."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc.pid
    proc.kill()
    proc.wait()
