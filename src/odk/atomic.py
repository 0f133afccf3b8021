"""Atomic outputs: a file or folder appears complete, in one rename, or not at all.

Every stage writes through these helpers, so a failed or killed stage never leaves a
half-written model, metrics file or split that DVC would cache. Temporary names are hidden
siblings of the target (same filesystem, so the rename is atomic) that carry the writer's PID
and keep the target's suffix, so writers that choose a format by extension (matplotlib, ONNX)
still work. Files get the usual umask-based permissions, not `mkstemp`'s private 0600.

Several runs may write the same outputs at once: a run removes only the temporaries of dead
processes (a killed run's debris), never those of a live one. A folder is swapped with its
replacement in one step where the OS allows (Linux `renameat2(RENAME_EXCHANGE)`), so readers
never see it missing; and a folder that holds files but lacks the stage's marker file is not
the stage's to replace, so it is refused rather than deleted.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from odk.errors import OdkError

_RETRIES = 5  # a concurrent writer may create or swap the folder between two of our steps
try:
    _LIBC: Any = ctypes.CDLL(None, use_errno=True)  # for renameat2
except OSError:  # no C library to ask (unusual platforms): two renames instead
    _LIBC = None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this machine (another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale(target: str | Path) -> list[Path]:
    """Remove the temporaries that dead processes left next to `target`; return them.

    A temporary of a process that is still running (another run writing the same output)
    is left alone, and so is anything not named like one of ours.
    """
    target = Path(target)
    stem, suffix, name = (re.escape(v) for v in (target.stem, target.suffix, target.name))
    # files: .<stem>.<pid>.tmp<suffix>; folders: .<name>.tmp-<pid> and .<name>.tmp-old-<pid>
    pattern = re.compile(rf"\.{stem}\.(\d+)\.tmp{suffix}|\.{name}\.tmp-(?:old-)?(\d+)")
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in target.parent.iterdir():
            found = pattern.fullmatch(entry.name)
            if found is None:
                continue
            pid = int(next(g for g in found.groups() if g is not None))
            if pid != os.getpid() and not pid_alive(pid):
                _remove(entry)
                removed.append(entry)
    return removed


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_owned(final: str | Path, marker: str) -> None:
    """Refuse a folder that a stage would replace but did not write (no `marker` file in it).

    A missing or empty folder is fine. Stages call this before any long work.

    Raises:
        OdkError: `final` holds files but not `marker`, or is not a folder at all.
    """
    final = Path(final)
    if not (final.exists() or final.is_symlink()):
        return
    if final.is_dir() and ((final / marker).is_file() or not any(final.iterdir())):
        return
    what = "a file, not a folder" if not final.is_dir() else f"holds files but no {marker}"
    raise OdkError(
        f"{final} is not this stage's output ({what}); refusing to replace it: move it away "
        "or choose another data_module.data_dir"
    )


@contextmanager
def atomic_dir(final: str | Path, marker: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling folder of `final` that replaces it only if the block succeeds.

    Args:
        final: The output folder.
        marker: A file every version of this output holds (`source.json`, `manifest.json`):
            an existing `final` without it is refused (see `check_owned`), not replaced.

    Folders above `final` that this call creates are removed again if the block fails (and
    nothing else has been put in them).
    """
    final = Path(final)
    if marker is not None:
        check_owned(final, marker)
    created = [p for p in reversed(final.parents) if not p.exists()]  # outermost first
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    _remove(tmp)  # this PID's own leftover, from a process that had it before
    tmp.mkdir(mode=0o777 & ~_umask())
    try:
        yield tmp
        if marker is not None:
            check_owned(final, marker)  # it may have appeared while we worked
        _move_into_place(tmp, final)
        created = []
    finally:
        _remove(tmp)  # after a swap: the previous version
        for folder in reversed(created):  # a failed run leaves no empty `data/` behind
            with contextlib.suppress(OSError):  # not empty: another run is using it
                folder.rmdir()


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename folder `tmp` to `final`; a previous `final` ends up at `tmp`."""
    for _ in range(_RETRIES):
        try:
            if not (final.exists() or final.is_symlink()):
                os.rename(tmp, final)
                return
            if _exchange(tmp, final):
                return
            old = final.parent / f".{final.name}.tmp-old-{os.getpid()}"
            os.rename(final, old)  # no atomic swap here: a short moment without `final`
            try:
                os.rename(tmp, final)
            except OSError:
                os.rename(old, final)  # the previous version back in place
                raise
            os.rename(old, tmp)  # removed with the temporary folder
            return
        except OSError as error:  # another run created, swapped or removed it meanwhile
            if error.errno not in (errno.ENOENT, errno.EEXIST, errno.ENOTEMPTY):
                raise
    raise OdkError(f"{final} kept changing under other runs writing it; run the stage again")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux `renameat2`); False where that is not available."""
    renameat2 = getattr(_LIBC, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # kernel or filesystem lacks it
        return False
    raise OSError(code, os.strerror(code), str(b))


class StagedOutputs:
    """Temporaries of several outputs of one stage, published together at the end."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack

    def file(self, path: str | Path) -> Path:
        """A temporary path for the file `path`."""
        return self._stack.enter_context(atomic_file(path))

    def dir(self, path: str | Path, marker: str | None = None) -> Path:
        """A temporary folder for the folder `path` (see `atomic_dir`)."""
        return self._stack.enter_context(atomic_dir(path, marker))

    def json(self, path: str | Path, obj: Any) -> None:
        """Stage `obj` as indented JSON for `path`."""
        self.file(path).write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


@contextmanager
def atomic_outputs() -> Iterator[StagedOutputs]:
    """Stage several outputs; each replaces its target only once all are written.

    Nothing is replaced if the block fails. The renames then follow one another (in reverse
    order of staging), so outputs of the old and the new run sit side by side only for that
    moment; if one rename fails, the outputs staged before it are not replaced either.
    """
    with ExitStack() as stack:
        yield StagedOutputs(stack)


def write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write `obj` as indented JSON, atomically."""
    return write_text(path, json.dumps(obj, indent=2) + "\n")
