"""Remote round trips: `dvc push`, a fresh `git clone`, `dvc pull`, byte-identical outputs.

Once through a local directory remote, once through a real SSH server (Debian's
openssh-server started on 127.0.0.1 with throw-away keys, reached through dvc-ssh).
"""

from __future__ import annotations

import filecmp
import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e import copy_repo, dvc, run

pytestmark = pytest.mark.slow
OUTPUTS = ("data/raw", "data/splits", "models", "metrics", "plots")


def _same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b and files_a, (a, b)
    match, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files_a], shallow=False)
    assert not mismatch and not errors, (mismatch, errors)


def round_trip(repo: Path, env: dict[str, str], root: Path) -> None:
    """Push everything, clone, pull, and check the clone is identical and up to date."""
    pushed = dvc("push", cwd=repo, env=env)
    assert "pushed" in pushed.stdout + pushed.stderr
    clone = root / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], root, env)
    for rel in (".dvc/config.local",):
        if (repo / rel).exists():
            shutil.copy2(repo / rel, clone / rel)
    clone_env = {**env, "PYTHONPATH": str(clone / "src")}
    dvc("pull", cwd=clone, env=clone_env)
    for rel in OUTPUTS:
        _same_tree(repo / rel, clone / rel)
    status = dvc("status", cwd=clone, env=clone_env).stdout
    assert "up to date" in status, status
    repro = dvc("repro", cwd=clone, env=clone_env)
    assert "Running stage" not in repro.stdout + repro.stderr


def test_local_remote_round_trip(reproduced_repo: Path, tmp_path: Path):
    repo, env = copy_repo(reproduced_repo, tmp_path)
    round_trip(repo, env, tmp_path)


def test_default_remote_is_outside_the_repository():
    config = (Path(__file__).resolve().parents[1] / ".dvc" / "config").read_text()
    assert "remote = local" in config
    assert "url = ~/.cache/odk/dvc-remote" in config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A real sshd on 127.0.0.1 with a throw-away host key and client key."""
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(binary).exists():
        pytest.skip("sshd is not installed (apt-get install openssh-server; .ci/run does)")
    keys = tmp_path / "ssh"
    keys.mkdir(mode=0o700)
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", keys / name], check=True
        )
    (keys / "authorized_keys").write_text((keys / "client_key.pub").read_text())
    port = _free_port()
    config = keys / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {keys / 'host_key'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPidFile {keys / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
        "Subsystem sftp internal-sftp\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege-separation dir sshd insists on
    proc = subprocess.Popen(
        [binary, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"sshd could not start: {proc.stderr.read().strip()[:300]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    host_pub = (keys / "host_key.pub").read_text().split()[:2]
    (home / ".ssh" / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_pub)}\n")
    try:
        yield {"port": str(port), "key": str(keys / "client_key"), "home": str(home)}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_ssh_remote_round_trip(reproduced_repo: Path, tmp_path: Path, sshd: dict[str, str]):
    repo, env = copy_repo(reproduced_repo, tmp_path / "work")
    env = {**env, "HOME": sshd["home"]}  # known_hosts with the throw-away host key
    url = f"ssh://127.0.0.1:{sshd['port']}{tmp_path / 'ssh-remote'}"
    dvc("remote", "add", "-d", "ssh", url, cwd=repo, env=env)
    dvc("remote", "modify", "--local", "ssh", "keyfile", sshd["key"], cwd=repo, env=env)
    dvc("remote", "modify", "--local", "ssh", "user", getpass.getuser(), cwd=repo, env=env)
    run(["git", "commit", "-qam", "ssh remote"], repo, env)
    round_trip(repo, env, tmp_path / "work")
    assert any((tmp_path / "ssh-remote").rglob("*")), "nothing arrived on the SSH remote"
