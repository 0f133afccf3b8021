"""Atomic outputs: debris of dead runs removed, live runs' temporaries and foreign folders kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from odk.atomic import atomic_dir, atomic_file, atomic_outputs, check_owned, remove_stale
from odk.errors import OdkError


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_file_write_removes_dead_runs_temporaries_only(tmp_path, dead_pid, live_pid):
    target = tmp_path / "models" / "odk.ckpt"
    target.parent.mkdir()
    (target.parent / f".odk.{dead_pid}.tmp.ckpt").write_bytes(b"half a model")  # killed run
    (target.parent / f".odk.{live_pid}.tmp.ckpt").write_bytes(b"being written")  # running
    (target.parent / ".odk.notes.tmp.ckpt").write_bytes(b"not ours")
    with atomic_file(target) as tmp:
        tmp.write_bytes(b"model")
    assert target.read_bytes() == b"model"
    assert _listing(target.parent) == sorted(
        [".odk.notes.tmp.ckpt", f".odk.{live_pid}.tmp.ckpt", "odk.ckpt"]
    )


def test_a_folder_write_removes_dead_runs_temporaries_only(tmp_path, dead_pid, live_pid):
    final = tmp_path / "data" / "splits"
    for name in (
        f".splits.tmp-{dead_pid}",
        f".splits.tmp-old-{dead_pid}",
        f".splits.tmp-{live_pid}",
    ):
        (final.parent / name).mkdir(parents=True)
        (final.parent / name / "train_images.npy").write_bytes(b"x")
    (final.parent / ".splits.tmp-mine").mkdir()  # not a PID: not ours
    with atomic_dir(final) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert _listing(final.parent) == sorted(
        [".splits.tmp-mine", f".splits.tmp-{live_pid}", "splits"]
    )
    assert (final.parent / f".splits.tmp-{live_pid}" / "train_images.npy").read_bytes() == b"x"


def test_remove_stale_names_what_it_removed(tmp_path, dead_pid):
    debris = tmp_path / f".raw.tmp-{dead_pid}"
    debris.mkdir()
    assert remove_stale(tmp_path / "raw") == [debris] and not debris.exists()


def test_a_folder_is_replaced_whole_and_leaves_nothing_behind(tmp_path):
    final = tmp_path / "splits"
    for content in ("old", "new"):
        with atomic_dir(final, marker="manifest.json") as tmp:
            (tmp / "manifest.json").write_text(content)
            (tmp / content).write_text(content)
    assert _listing(tmp_path) == ["splits"]
    assert _listing(final) == ["manifest.json", "new"]


def test_a_failed_folder_write_removes_the_folders_it_created(tmp_path):
    (tmp_path / "kept").mkdir()
    for final in (tmp_path / "data/deep/raw", tmp_path / "kept/data/raw"):
        with pytest.raises(OSError, match="offline"), atomic_dir(final, marker="source.json"):
            raise OSError("offline")
    assert _listing(tmp_path) == ["kept"] and _listing(tmp_path / "kept") == []


def test_a_created_folder_that_others_use_is_kept(tmp_path):
    final = tmp_path / "data/raw"
    with pytest.raises(OSError), atomic_dir(final, marker="source.json"):
        (tmp_path / "data/splits").mkdir()  # another stage writes there meanwhile
        raise OSError("offline")
    assert _listing(tmp_path / "data") == ["splits"]


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_folder_the_stage_did_not_write_is_refused(tmp_path, kind):
    final = tmp_path / "victim" / "raw"
    if kind == "folder":
        final.mkdir(parents=True)
        (final / "thesis.txt").write_text("four years of work")
    else:
        final.parent.mkdir()
        final.write_text("four years of work")
    match = f"{final} is not this stage's output"
    with pytest.raises(OdkError, match=match) as info, atomic_dir(final, "source.json") as tmp:
        (tmp / "source.json").write_text("{}")
    assert "move it away or choose another data_module.data_dir" in str(info.value)
    thesis = final / "thesis.txt" if kind == "folder" else final
    assert thesis.read_text() == "four years of work"
    assert _listing(final.parent) == ["raw"]


def test_an_empty_or_own_folder_may_be_replaced(tmp_path):
    (tmp_path / "empty").mkdir()
    check_owned(tmp_path / "empty", "manifest.json")
    check_owned(tmp_path / "missing", "manifest.json")
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "manifest.json").write_text("{}")
    check_owned(tmp_path / "own", "manifest.json")


def _outputs(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def test_staged_outputs_change_together_or_not_at_all(tmp_path):
    def publish(version: str, fail: bool = False) -> None:
        with atomic_outputs() as out:
            out.file(tmp_path / "models" / "odk.ckpt").write_text(version)
            (out.dir(tmp_path / "plots") / "acc.tsv").write_text(version)
            if fail:
                raise OSError(28, "No space left on device")
            out.json(tmp_path / "metrics" / "train.json", {"version": version})

    publish("v1")
    first = _outputs(tmp_path)
    with pytest.raises(OSError, match="No space"):
        publish("v2", fail=True)
    assert _outputs(tmp_path) == first  # the model and plots of v2 were written, not published
    publish("v3")
    assert _outputs(tmp_path) == {
        "metrics/train.json": '{\n  "version": "v3"\n}\n',
        "models/odk.ckpt": "v3",
        "plots/acc.tsv": "v3",
    }
    assert all(not p.name.startswith(".") for p in tmp_path.rglob("*"))  # no temporaries left
