"""Resume state: a broken checkpoint is reported in one line and the run starts over."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from odk import resume
from odk.resume import resume_point

FINGERPRINT = "settings-hash"


def _lightning_checkpoint(path: Path) -> None:
    state = {"epoch": 0, "global_step": 3, "state_dict": {"w": torch.ones(2)}, "loops": {}}
    torch.save({**state, "callbacks": {}, "optimizer_states": []}, path)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo EXPLOITED",))


def _truncated(path: Path) -> None:
    _lightning_checkpoint(path)
    path.write_bytes(path.read_bytes()[:100])


DAMAGES = {
    "truncated": (_truncated, "not a readable checkpoint (damaged or truncated? RuntimeError: "),
    "empty": (lambda p: p.write_bytes(b""), "not a readable checkpoint (empty file)"),
    "code": (
        lambda p: torch.save({"epoch": _Exploit()}, p),
        "not a readable checkpoint (it refers to posix.system, which could run code; refused)",
    ),
    "foreign": (lambda p: torch.save({"weights": torch.ones(1)}, p), "not a Lightning training"),
}


def _state(tmp_path: Path, fingerprint: str = FINGERPRINT) -> Path:
    state_dir = tmp_path / ".odk_state" / "train_odk"
    state_dir.mkdir(parents=True)
    (state_dir / "fingerprint").write_text(fingerprint)
    return state_dir


@pytest.mark.parametrize("damage", DAMAGES)
def test_an_unreadable_checkpoint_is_reported_and_the_run_starts_over(tmp_path, capsys, damage):
    state_dir = _state(tmp_path)
    write, reason = DAMAGES[damage]
    write(state_dir / "last.ckpt")
    (state_dir / "dvclive").mkdir()
    assert resume_point(state_dir, FINGERPRINT) is None
    captured = capsys.readouterr()
    last = state_dir / "last.ckpt"
    assert captured.err.startswith(f"warning: cannot resume from {last}: {reason}")
    assert captured.err.endswith("; training starts over\n") and captured.err.count("\n") == 1
    assert "weights_only" not in captured.err and "EXPLOITED" not in captured.out + captured.err
    assert sorted(p.name for p in state_dir.iterdir()) == ["fingerprint"]  # a fresh folder


def test_a_readable_checkpoint_of_the_same_settings_resumes(tmp_path, capsys):
    state_dir = _state(tmp_path)
    _lightning_checkpoint(state_dir / "last.ckpt")
    assert resume_point(state_dir, FINGERPRINT) == state_dir / "last.ckpt"
    assert capsys.readouterr().err == ""


def test_other_settings_start_over_silently(tmp_path, capsys):
    state_dir = _state(tmp_path, "another run")
    _lightning_checkpoint(state_dir / "last.ckpt")
    assert resume_point(state_dir, FINGERPRINT) is None
    assert (state_dir / "fingerprint").read_text() == FINGERPRINT
    assert not (state_dir / "last.ckpt").exists() and capsys.readouterr().err == ""


def test_a_binary_fingerprint_file_is_just_another_run(tmp_path):
    state_dir = _state(tmp_path)
    (state_dir / "fingerprint").write_bytes(b"\xff\xfe\x00")
    assert resume_point(state_dir, FINGERPRINT) is None


def test_other_ranks_read_the_state_but_never_change_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(resume, "global_rank", lambda: 1)
    state_dir = _state(tmp_path)
    _lightning_checkpoint(state_dir / "last.ckpt")
    assert resume_point(state_dir, FINGERPRINT) == state_dir / "last.ckpt"
    (state_dir / "last.ckpt").write_bytes(b"")  # rank 0 would have cleared it
    assert resume_point(state_dir, FINGERPRINT) is None
    assert (state_dir / "last.ckpt").exists() and capsys.readouterr().err == ""
    fresh = tmp_path / "fresh"
    assert resume_point(fresh, FINGERPRINT) is None and not fresh.exists()
