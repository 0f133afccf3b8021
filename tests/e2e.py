"""Helpers for the end-to-end tests: a temporary copy of this repo, shrunk to a tiny run.

`reproduced_repo` (session-scoped) runs the real `dvc repro` once on a synthetic CIFAR-10
archive; tests that change a repository work on their own copy (`copy_repo`), so they can run
in any order.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from odk.synthetic import write_cifar_archive

REPO = Path(__file__).resolve().parents[1]
COPIED = (
    "src",
    "dvc.yaml",
    "params.yaml",
    "pyproject.toml",
    ".dvc/config",
    ".dvc/plots",
    ".dvcignore",
    ".gitignore",
)


def run(
    cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run a command, failing the test with its output if it fails."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def dvc(
    *args: str, cwd: Path, env: dict[str, str], check: bool = True, timeout: float = 900
) -> subprocess.CompletedProcess:
    """Run the installed DVC (the venv's) in `cwd`."""
    return run([sys.executable, "-m", "dvc", *args], cwd, env, check, timeout)


def test_env(repo: Path) -> dict[str, str]:
    """The environment a user's shell would have: the venv first, the copy's own code."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(repo / "src"),
        "GIT_AUTHOR_NAME": "odk test",
        "GIT_AUTHOR_EMAIL": "test@odk.invalid",
        "GIT_COMMITTER_NAME": "odk test",
        "GIT_COMMITTER_EMAIL": "test@odk.invalid",
        "DVC_NO_ANALYTICS": "1",
    }


def make_tiny_repo(
    root: Path, max_epochs: int = 1, seeds: tuple[int, ...] = (0, 1)
) -> tuple[Path, dict[str, str]]:
    """Copy the repo to `root/repo`, point it at a tiny archive and commit; no repro yet."""
    repo = root / "repo"
    for rel in COPIED:
        src, dst = REPO / rel, repo / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    archive, md5 = write_cifar_archive(
        root / "archive", "cifar10", train_per_class=10, test_per_class=5, seed=0
    )
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["dataset"].update(url=str(archive), md5=md5)
    params["data_module"].update(batch_size=32, num_workers=0)
    params["max_epochs"] = max_epochs
    params["seeds"] = list(seeds)
    params["trainer"].update(accelerator="cpu", devices=1)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = test_env(repo)
    run(["git", "init", "-q"], repo, env)
    dvc("remote", "add", "-f", "-d", "local", str(root / "remote"), cwd=repo, env=env)
    commit(repo, env, "tiny settings")
    return repo, env


def commit(repo: Path, env: dict[str, str], message: str) -> None:
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", message], repo, env)


def copy_repo(src: Path, root: Path) -> tuple[Path, dict[str, str]]:
    """A full copy (git history, DVC cache and workspace) that a test may change freely."""
    dst = root / "repo"
    shutil.copytree(src, dst, symlinks=True)
    return dst, test_env(dst)


@pytest.fixture(scope="session")
def reproduced_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny copy of the repo after a full `dvc repro` (seeds 0 and 1), results committed."""
    repo, env = make_tiny_repo(tmp_path_factory.mktemp("reproduced"))
    dvc("repro", cwd=repo, env=env)
    commit(repo, env, "tiny run")
    return repo
