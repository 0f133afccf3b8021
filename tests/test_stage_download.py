"""Download stage: sources, md5, safe extraction, format checks, atomic output."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import runpy
import tarfile
from pathlib import Path

import pytest

from odk.config import load_config
from odk.errors import DataError
from odk.stages import download as download_module
from odk.stages.download import download, read_raw
from odk.synthetic import CIFAR10_CLASSES


def _config(params: Path, *overrides: str):
    return load_config(list(overrides), params)


def _data_dir_listing(params: Path) -> list[str]:
    data_dir = params.parent / "data"
    return sorted(p.name for p in data_dir.iterdir()) if data_dir.exists() else []


def _tar_gz(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> tuple[Path, str]:
    with tarfile.open(path, "w:gz") as tar:
        for info, payload in members:
            info.size = len(payload) if payload is not None else 0
            tar.addfile(info, io.BytesIO(payload) if payload is not None else None)
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize("scheme", ["path", "file://"])
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_download_extracts_the_official_folder(
    make_params, cifar10_archive, cifar100_archive, scheme, name
):
    archive = cifar10_archive if name == "cifar10" else cifar100_archive
    params = make_params(archive, name)
    url = str(archive[0]) if scheme == "path" else archive[0].as_uri()
    raw_dir = download(_config(params, f"dataset.url={url}"))
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    assert sorted(p.name for p in raw_dir.iterdir()) == sorted([folder, "source.json"])
    assert json.loads((raw_dir / "source.json").read_text()) == {"dataset": name, "md5": archive[1]}
    data = read_raw(raw_dir, name)
    assert data.train_images.shape == ((200 if name == "cifar10" else 1000), 3, 32, 32)
    assert data.classes == (
        list(CIFAR10_CLASSES) if name == "cifar10" else [f"class_{i:02d}" for i in range(100)]
    )
    assert _data_dir_listing(params) == ["raw"]  # no temporary file or folder left


def test_rerun_replaces_raw_with_the_same_content(params_file):
    cfg = _config(params_file)
    raw_dir = download(cfg)
    before = {p.relative_to(raw_dir): p.read_bytes() for p in raw_dir.rglob("*") if p.is_file()}
    download(cfg)
    after = {p.relative_to(raw_dir): p.read_bytes() for p in raw_dir.rglob("*") if p.is_file()}
    assert before == after and _data_dir_listing(params_file) == ["raw"]


def test_md5_mismatch_names_both_and_leaves_nothing(params_file, cifar10_archive):
    wrong = "0" * 32
    with pytest.raises(DataError) as info:
        download(_config(params_file, f"dataset.md5={wrong}"))
    assert f"expected {wrong} (dataset.md5), got {cifar10_archive[1]}" in str(info.value)
    assert _data_dir_listing(params_file) == []


def test_a_failed_run_keeps_the_previous_raw(params_file):
    raw_dir = download(_config(params_file))
    with pytest.raises(DataError, match="md5 mismatch"):
        download(_config(params_file, "dataset.md5=" + "0" * 32))
    assert read_raw(raw_dir, "cifar10").train_images.shape == (200, 3, 32, 32)
    assert _data_dir_listing(params_file) == ["raw"]


def test_leftovers_of_a_killed_run_are_removed(params_file):
    stale = params_file.parent / "data" / ".raw.tmp-killed"
    (stale / "cifar-10-batches-py").mkdir(parents=True)
    download(_config(params_file))
    assert _data_dir_listing(params_file) == ["raw"]


class _CtrlC:
    """A progress bar on which the user presses Ctrl-C after the first chunk is written."""

    def __init__(self, **kwargs) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int) -> None:
        raise KeyboardInterrupt


def test_interrupted_fetch_leaves_nothing(params_file, monkeypatch):
    monkeypatch.setattr(download_module, "tqdm", _CtrlC)
    with pytest.raises(KeyboardInterrupt):
        download(_config(params_file))
    assert _data_dir_listing(params_file) == []


class _Response(io.BytesIO):
    """What urlopen returns, reduced to what the download reads."""

    def __init__(self, payload: bytes, length: int) -> None:
        super().__init__(payload)
        self.headers = {"Content-Length": str(length)}


@pytest.mark.parametrize("cut", [0, 1000])
def test_https_download_is_checked_for_completeness(params_file, cifar10_archive, monkeypatch, cut):
    payload = cifar10_archive[0].read_bytes()
    seen = []

    def urlopen(url, timeout):
        seen.append(url)
        return _Response(payload[: len(payload) - cut], len(payload))

    monkeypatch.setattr(download_module.urllib.request, "urlopen", urlopen)
    cfg = _config(params_file, "dataset.url=https://mirror.example/cifar-10-python.tar.gz")
    if cut:
        with pytest.raises(DataError, match=f"incomplete: {len(payload) - cut} of {len(payload)}"):
            download(cfg)
        assert _data_dir_listing(params_file) == []
    else:
        assert (download(cfg) / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert seen == ["https://mirror.example/cifar-10-python.tar.gz"]


@pytest.mark.parametrize(
    "url, match",
    [
        (
            "https://127.0.0.1:9/cifar-10-python.tar.gz",
            "cannot read dataset.url=https://127.0.0.1:9",
        ),
        ("{tmp}/missing.tar.gz", "archive not found"),
        ("file://{tmp}/missing.tar.gz", "archive not found"),
    ],
)
def test_unreachable_or_missing_source(params_file, url, match):
    cfg = _config(params_file, "dataset.url=" + url.format(tmp=params_file.parent))
    with pytest.raises(DataError, match=match):
        download(cfg)
    assert _data_dir_listing(params_file) == []


def _archive_with(tmp_path: Path, members) -> tuple[Path, str]:
    return _tar_gz(tmp_path / "archive.tar.gz", members)


def _truncated(tmp_path: Path, archive: Path) -> tuple[Path, str]:
    path = tmp_path / "truncated.tar.gz"
    path.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    return path, hashlib.md5(path.read_bytes()).hexdigest()


def _not_a_tar(tmp_path: Path, archive: Path) -> tuple[Path, str]:
    path = tmp_path / "noise.tar.gz"
    path.write_bytes(b"not an archive at all" * 100)
    return path, hashlib.md5(path.read_bytes()).hexdigest()


class _Exploit:
    def __reduce__(self):
        return (exec, ("open('EXPLOITED', 'w').close()",))


FOLDER = "cifar-10-batches-py/"
BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


@pytest.mark.parametrize(
    "members, match",
    [
        ([(_member("/tmp/evil"), b"x")], "unsafe member '/tmp/evil'"),
        ([(_member("../evil"), b"x")], "unsafe member '../evil'"),
        ([(_member("cifar/../../evil"), b"x")], "unsafe member"),
        ([(_member("link", tarfile.SYMTYPE, "/etc/passwd"), None)], "links and devices refused"),
        ([(_member("hard", tarfile.LNKTYPE, "/etc/passwd"), None)], "links and devices refused"),
        ([(_member("dev", tarfile.CHRTYPE), None)], "links and devices refused"),
        ([(_member("fifo", tarfile.FIFOTYPE), None)], "links and devices refused"),
        ([(_member("cifar-10-batches-bin/data_batch_1.bin"), b"x")], "lacks data_batch_1"),
        ([(_member(FOLDER + f), b"garbage") for f in BATCHES], "not a CIFAR python-format pickle"),
        ([(_member(FOLDER + f), pickle.dumps(_Exploit())) for f in BATCHES], "is not allowed"),
        ([(_member(FOLDER + f), pickle.dumps({b"x": 1})) for f in BATCHES], "no class names"),
    ],
)
def test_bad_archive_is_refused(tmp_path, make_params, members, match, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = make_params(_archive_with(tmp_path, members))
    with pytest.raises(DataError, match=match):
        download(_config(params))
    assert not (tmp_path.parent / "evil").exists() and not (tmp_path / "EXPLOITED").exists()
    assert _data_dir_listing(params) == []


@pytest.mark.parametrize("damage, match", [(_truncated, "truncated"), (_not_a_tar, "readable")])
def test_damaged_archive_with_matching_md5_is_refused(
    tmp_path, make_params, cifar10_archive, damage, match
):
    params = make_params(damage(tmp_path, cifar10_archive[0]))
    with pytest.raises(DataError, match=match):
        download(_config(params))
    assert _data_dir_listing(params) == []


def test_archive_of_the_other_dataset_is_refused(make_params, cifar10_archive):
    params = make_params(cifar10_archive, "cifar100")
    with pytest.raises(DataError, match="not the official cifar100 python format: .* lacks train"):
        download(_config(params))


@pytest.mark.filterwarnings("ignore:'odk.stages.download' found in sys.modules")
def test_command_line_reports_errors_in_one_line(params_file, monkeypatch, capsys):
    monkeypatch.chdir(params_file.parent)
    monkeypatch.setattr("sys.argv", ["download", "dataset.md5=" + "0" * 32])
    with pytest.raises(SystemExit) as info:  # what `python -m odk.stages.download ...` runs
        runpy.run_module("odk.stages.download", run_name="__main__")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: md5 mismatch for ") and err.count("\n") == 1
