"""Download stage: sources, md5, safe extraction, format checks, atomic output."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pickle
import runpy
import socket
import tarfile
import urllib.error
from pathlib import Path

import pytest

from odk.cifar import read_raw
from odk.config import load_config
from odk.errors import DataError, OdkError
from odk.stages import download as download_module
from odk.stages.download import download
from odk.synthetic import CIFAR10_CLASSES, write_cifar_archive


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


def test_leftovers_of_a_killed_run_are_removed(params_file, dead_pid):
    stale = params_file.parent / "data" / f".raw.tmp-{dead_pid}"
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

    def urlopen(request, timeout):
        seen.append(request.full_url)
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
            r"cannot read dataset.url=https://127.0.0.1:9/cifar-10-python.tar.gz: .*; without "
            r"network, copy cifar-10-python.tar.gz here from a machine that has it and run "
            r"`dvc exp run -S dataset.url=/path/to/cifar-10-python.tar.gz "
            r"-S dataset.md5=[0-9a-f]{32}`",
        ),
        ("{tmp}/missing.tar.gz", "archive not found"),
        ("file://{tmp}/missing.tar.gz", "archive not found"),
    ],
)
def test_unreachable_or_missing_source(params_file, url, match):
    cfg = _config(params_file, "dataset.url=" + url.format(tmp=params_file.parent))
    with pytest.raises(DataError, match=match):
        download(cfg)
    assert not (params_file.parent / "data").exists()  # no empty data/ left behind


@pytest.mark.filterwarnings("ignore:'odk.stages.download' found in sys.modules")
def test_offline_download_says_what_to_do_in_one_line(params_file, monkeypatch, capsys):
    def urlopen(request, timeout):  # what urllib raises without network (no DNS)
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setattr(download_module.urllib.request, "urlopen", urlopen)
    monkeypatch.chdir(params_file.parent)
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    monkeypatch.setattr("sys.argv", ["download", f"dataset.url='{url}'"])
    with pytest.raises(SystemExit):
        runpy.run_module("odk.stages.download", run_name="__main__")
    err = capsys.readouterr().err
    md5 = load_config([], params_file).dataset.md5
    assert err == (
        f"error: cannot read dataset.url={url}: <urlopen error [Errno -2] Name or service not "
        "known>; without network, copy cifar-10-python.tar.gz here from a machine that has it "
        "and run `dvc exp run -S dataset.url=/path/to/cifar-10-python.tar.gz -S "
        f"dataset.md5={md5}` (a re-packed copy has its own md5)\n"
    )
    assert not (params_file.parent / "data").exists()


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


def test_a_data_dir_holding_other_files_is_left_alone(tmp_path, make_params):
    params = make_params(write_cifar_archive(tmp_path / "archive", "cifar10", 2, 1))
    victim = tmp_path / "victim"
    (victim / "raw").mkdir(parents=True)
    (victim / "raw" / "thesis.txt").write_text("four years of work")
    (victim / ".raw.tmp-drafts").mkdir()  # named like a temporary, but no run's
    with pytest.raises(OdkError, match=f"{victim / 'raw'} is not this stage's output"):
        download(_config(params, f"data_module.data_dir={victim}"))
    assert (victim / "raw" / "thesis.txt").read_text() == "four years of work"
    assert sorted(p.name for p in victim.iterdir()) == [".raw.tmp-drafts", "raw"]


def test_a_live_runs_temporary_folder_is_left_alone(params_file, live_pid):
    other = params_file.parent / "data" / f".raw.tmp-{live_pid}"
    other.mkdir(parents=True)
    (other / "archive.tar.gz.part").write_bytes(b"half an archive")
    download(_config(params_file))
    assert (other / "archive.tar.gz.part").read_bytes() == b"half an archive"


def _with_extra_members(tmp_path: Path, archive: Path, extra: dict[str, bytes]) -> tuple[Path, str]:
    members = []
    with tarfile.open(archive) as tar:
        for info in tar.getmembers():
            payload = tar.extractfile(info).read() if info.isfile() else None
            members.append((info, payload))
    members += [(_member(name), payload) for name, payload in extra.items()]
    return _tar_gz(tmp_path / "bomb.tar.gz", members)


def test_only_the_files_of_the_format_are_extracted(tmp_path, make_params, cifar10_archive):
    zeros = bytes(8 * 2**20)  # gzip shrinks it ~1000x: a small archive that would fill a disk
    extra = {FOLDER + "bomb.bin": zeros, "elsewhere/bomb.bin": zeros, FOLDER + "readme.html": b"x"}
    params = make_params(_with_extra_members(tmp_path, cifar10_archive[0], extra))
    raw_dir = download(_config(params))
    assert sorted(p.name for p in (raw_dir / "cifar-10-batches-py").iterdir()) == sorted(BATCHES)
    assert sorted(p.name for p in raw_dir.iterdir()) == ["cifar-10-batches-py", "source.json"]


def test_an_oversized_member_is_refused_before_it_is_written(
    tmp_path, make_params, cifar10_archive, monkeypatch
):
    monkeypatch.setattr(download_module, "MAX_MEMBER_BYTES", 1000)
    params = make_params(cifar10_archive)
    with pytest.raises(
        DataError, match=r"member 'cifar-10-batches-py/\w+' is \d+ bytes, more than 1000"
    ):
        download(_config(params))
    assert _data_dir_listing(params) == []


def test_credentials_in_the_url_are_sent_but_never_shown(params_file, monkeypatch):
    seen = []

    def urlopen(request, timeout):
        seen.append((request.full_url, request.get_header("Authorization")))
        raise OSError("HTTP Error 401: Unauthorized")

    monkeypatch.setattr(download_module.urllib.request, "urlopen", urlopen)
    url = "https://alice:S3cr3t@mirror.example/c.tar.gz?X-Amz-Signature=f00dcafe&v=1"
    with pytest.raises(DataError) as info:
        download(_config(params_file, f"dataset.url='{url}'"))
    assert str(info.value) == (
        "cannot read dataset.url=https://***@mirror.example/c.tar.gz?X-Amz-Signature=***&v=1: "
        "HTTP Error 401: Unauthorized; without network, copy c.tar.gz here from a machine that "
        "has it and run `dvc exp run -S dataset.url=/path/to/c.tar.gz -S dataset.md5="
        f"{_config(params_file).dataset.md5}` (a re-packed copy has its own md5)"
    )
    basic = "Basic " + base64.b64encode(b"alice:S3cr3t").decode()
    assert seen == [("https://mirror.example/c.tar.gz?X-Amz-Signature=f00dcafe&v=1", basic)]


@pytest.mark.filterwarnings("ignore:'odk.stages.download' found in sys.modules")
@pytest.mark.parametrize(
    "url",
    [
        "https://alice:S3cr3t@127.0.0.1:9/c.tar.gz",  # unreachable
        "http://alice:S3cr3t@127.0.0.1:9/c.tar.gz",  # refused by the settings check
        "https://alice:S3cr3t@host:port/c.tar.gz",  # a malformed URL
    ],
)
def test_command_line_errors_redact_credentials(params_file, monkeypatch, capsys, url):
    monkeypatch.chdir(params_file.parent)
    monkeypatch.setattr("sys.argv", ["download", f"dataset.url={url}"])
    with pytest.raises(SystemExit):
        runpy.run_module("odk.stages.download", run_name="__main__")
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "S3cr3t" not in err and "alice" not in err and "***@" in err
