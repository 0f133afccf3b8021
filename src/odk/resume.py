"""Resume state of a training run: the folder under `.odk_state/` and its `last.ckpt`.

A run resumes only from a checkpoint written for the same settings (a fingerprint file sits
beside it) that loads as a Lightning training checkpoint with `weights_only=True`. Anything
else, a truncated file, a file holding code, a foreign dict, is reported in one line and
training starts over: a broken resume state never blocks the stage.

Under DDP, Lightning starts ranks 1..N-1 by running the same command again once rank 0 is in
`fit`; only rank 0 (global rank, as Lightning reads it from the environment) changes the
folder, so the other ranks find exactly what rank 0 decided.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from odk.checkpoint import load_error

# What Lightning's `Trainer.save_checkpoint` always writes and `fit(ckpt_path=...)` reads.
_LIGHTNING_KEYS = ("epoch", "global_step", "state_dict", "loops", "callbacks", "optimizer_states")


def global_rank() -> int:
    """This process's rank as Lightning reads it from the launcher's environment (0 if none)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def checkpoint_problem(path: Path) -> str | None:
    """Why `path` cannot be resumed from, or None if it is a readable training checkpoint."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, empty or foreign files raise several types
        return f"not a readable checkpoint ({load_error(path, exc)})"
    if not isinstance(state, dict) or any(key not in state for key in _LIGHTNING_KEYS):
        return "not a Lightning training checkpoint"
    return None


def resume_point(state_dir: Path, fingerprint: str) -> Path | None:
    """The checkpoint to resume from, or None once the state folder is ready for a fresh run.

    Args:
        state_dir: The run's state folder (`.odk_state/train_<kind>`).
        fingerprint: What the run depends on; a folder written for another one is cleared.
    """
    marker, last = state_dir / "fingerprint", state_dir / "last.ckpt"
    same_run = marker.is_file() and marker.read_bytes() == fingerprint.encode()
    if same_run and last.is_file():
        problem = checkpoint_problem(last)
        if problem is None:
            return last
        if global_rank() == 0:
            warning = f"warning: cannot resume from {last}: {problem}; training starts over"
            print(warning, file=sys.stderr)
    if global_rank() != 0:
        return None
    shutil.rmtree(state_dir, ignore_errors=True)
    state_dir.mkdir(parents=True)
    marker.write_text(fingerprint)
    return None
