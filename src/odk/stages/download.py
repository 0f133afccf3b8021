"""Download stage: fetch the CIFAR archive, verify its md5, extract it safely to data/raw.

The archive (`dataset.url`: https, file:// or a local path) streams into a `.part` file that
is renamed only once complete and matching `dataset.md5`. Members are checked before
extraction (no absolute paths, no `..`, no links or devices), only the files of the official
"python version" layout (`odk.cifar`) are extracted (each at most `MAX_MEMBER_BYTES`, so a gzip
bomb cannot fill the disk), the result must be that layout (checked by reading it, not by the
official per-file checksums, so a re-packed mirror works), and `<data_dir>/raw/` appears in one
rename, complete or not at all; the previous one stays until then. A `<data_dir>/raw` that this
stage did not write (no `source.json`) is refused, not replaced. Credentials in `dataset.url`
(`https://user:password@host/...`) are sent as HTTP Basic auth and never shown.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import shutil
import tarfile
import urllib.parse
import urllib.request
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO

from tqdm import tqdm

from odk.atomic import atomic_dir, check_owned
from odk.cifar import LAYOUTS, read_raw
from odk.config import Config
from odk.errors import DataError, redact
from odk.stages import main_entry

SOURCE = "source.json"  # the raw folder's marker: what it was extracted from
# The largest file of the official archives is CIFAR-100's `train`, 155 MB; they hold 8 members.
MAX_MEMBER_BYTES = 256 * 2**20
MAX_MEMBERS = 1000


def download(cfg: Config) -> Path:
    """Fetch `dataset.url`, check its md5 and format, and extract it to `<data_dir>/raw/`.

    Returns:
        The raw folder: the official extracted folder plus `source.json` (dataset, md5).
    """
    name, url, md5 = cfg.dataset.name, cfg.dataset.url, cfg.dataset.md5.lower()
    raw_dir = Path(cfg.data_module.data_dir) / "raw"
    check_owned(raw_dir, SOURCE)  # before the download, not after it
    with atomic_dir(raw_dir, marker=SOURCE) as tmp:
        archive = fetch(url, tmp / "archive.tar.gz", md5)
        layout = LAYOUTS[name]
        members = [f"{layout.folder}/{f}" for f in layout.files]
        extract(archive, tmp / "extracted", redact(url, url), members)
        archive.unlink()
        data = read_raw(tmp / "extracted", name)
        os.rename(tmp / "extracted" / layout.folder, tmp / layout.folder)
        shutil.rmtree(tmp / "extracted")
        source = {"dataset": name, "md5": md5}
        (tmp / SOURCE).write_text(json.dumps(source, indent=2) + "\n")
    sizes = f"{len(data.train_labels)} train and {len(data.test_labels)} test images"
    print(f"download: {name} ({sizes}, {len(data.classes)} classes) in {raw_dir}")
    return raw_dir


def fetch(url: str, dest: Path, md5: str) -> Path:
    """Copy `url` to `dest` through `dest.part`, renamed only once complete with this md5.

    Raises:
        DataError: the source is missing or unreachable, the copy incomplete, the md5 wrong.
    """
    part = dest.with_name(dest.name + ".part")
    digest, copied = hashlib.md5(), 0
    try:
        with _open(url) as (stream, total), open(part, "wb") as out:
            bar = tqdm(total=total, unit="B", unit_scale=True, desc="download", disable=None)
            with bar:
                while chunk := stream.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                    copied += len(chunk)
    except (OSError, ValueError, http.client.HTTPException) as error:
        part.unlink(missing_ok=True)
        why = redact(f"cannot read dataset.url={url}: {error}", url)
        if url.startswith("https://"):  # offline, blocked or moved: say what works instead
            name = PurePosixPath(urllib.parse.urlsplit(url).path).name or "the archive"
            why += (
                f"; without network, copy {name} here from a machine that has it and run "
                f"`dvc exp run -S dataset.url=/path/to/{name} -S dataset.md5={md5}` "
                "(a re-packed copy has its own md5)"
            )
        raise DataError(why) from None
    shown = redact(url, url)
    if total is not None and copied != total:
        part.unlink()
        raise DataError(f"download of {shown} incomplete: {copied} of {total} bytes")
    if digest.hexdigest() != md5:
        part.unlink()
        got = f"expected {md5} (dataset.md5), got {digest.hexdigest()}"
        raise DataError(f"md5 mismatch for {shown}: {got}; a corrupt copy or another archive")
    os.replace(part, dest)
    return dest


@contextmanager
def _open(url: str) -> Iterator[tuple[IO[bytes], int | None]]:
    """The source as a byte stream, with its size when known."""
    if url.startswith("https://"):
        with urllib.request.urlopen(_request(url), timeout=60) as response:
            length = response.headers.get("Content-Length")
            yield response, int(length) if length and length.isdigit() else None
        return
    if url.startswith("file://"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))
    else:
        path = Path(url).expanduser()
    if not path.is_file():
        raise DataError(redact(f"dataset.url={url}: archive not found ({path} is not a file)", url))
    with open(path, "rb") as f:
        yield f, path.stat().st_size


def _request(url: str) -> urllib.request.Request:
    """An https request; credentials in the URL (`user:password@`) go in a Basic auth header."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None:
        return urllib.request.Request(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    userinfo = (
        f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
    )
    token = base64.b64encode(userinfo.encode()).decode()
    bare = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return urllib.request.Request(bare, headers={"Authorization": f"Basic {token}"})


def extract(
    archive: Path, dest: Path, label: str = "", keep: Collection[str] | None = None
) -> None:
    """Extract a .tar.gz into `dest` after checking every member is a plain file or folder.

    Args:
        archive: The .tar.gz file.
        dest: Folder to extract into.
        label: How the archive is named in messages (default: its path).
        keep: The member paths to extract (default: all); others are checked, not written.
            A kept file larger than `MAX_MEMBER_BYTES` is refused, so a small archive cannot
            fill the disk (a gzip bomb).

    Raises:
        DataError: an unsafe or oversized member, or a corrupt archive.
    """
    label = label or str(archive)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = []
            for member in tar:  # reads the whole archive, so truncation shows here
                _check_member(member, label)
                members.append(member)
                if len(members) > MAX_MEMBERS:
                    raise DataError(f"{label} holds more than {MAX_MEMBERS} members: refused")
            chosen = [m for m in members if keep is None or _posix(m.name) in keep]
            for member in chosen:
                if member.size > MAX_MEMBER_BYTES:
                    raise DataError(
                        f"{label}: member {member.name!r} is {member.size} bytes, more than "
                        f"{MAX_MEMBER_BYTES} (no file of the official archives is): refused"
                    )
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(dest, members=chosen, **safe)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(
            f"{label} is not a readable .tar.gz (truncated or corrupt?): {error}"
        ) from None


def _posix(name: str) -> str:
    return str(PurePosixPath(name.replace("\\", "/")))


def _check_member(member: tarfile.TarInfo, label: str) -> None:
    path = PurePosixPath(_posix(member.name))
    if path.is_absolute() or ".." in path.parts or ":" in member.name:
        raise DataError(f"unsafe member {member.name!r} in {label}: absolute path or '..'")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"unsafe member {member.name!r} in {label}: links and devices refused")


if __name__ == "__main__":
    main_entry(download)
