"""Fetch a MovieLens release from its publisher, check the published checksum, unpack it.

    movierec data download ml-latest-small --dest data

GroupLens publishes ``<name>.zip`` beside ``<name>.zip.md5``; the archive is downloaded to a
temporary file, its MD5 compared with the published one, and only then unpacked (member paths
checked) into a temporary directory that is renamed into place. A corrupted or interrupted
download leaves nothing behind. ``--base-url`` (or ``MOVIEREC_DATA_URL``) points at a mirror.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from movierec.errors import DownloadError

BASE_URL = "https://files.grouplens.org/datasets/movielens"
RELEASES = ("ml-latest-small", "ml-100k", "ml-1m", "ml-25m")
CHUNK = 1 << 20


def download(
    name: str, dest: Path, base_url: str | None = None, show_progress: bool = True
) -> Path:
    """Download and unpack release ``name`` to ``dest/name``; returns that folder."""
    if name not in RELEASES:
        raise DownloadError(f"unknown release {name!r}; choose one of {', '.join(RELEASES)}")
    base = (base_url or os.environ.get("MOVIEREC_DATA_URL") or BASE_URL).rstrip("/")
    target = dest / name
    if target.exists():
        raise DownloadError(f"{target} already exists; remove it to download again")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{name}.download-", dir=dest) as tmp:
        archive = Path(tmp) / f"{name}.zip"
        published = _fetch(f"{base}/{name}.zip.md5").decode("ascii", "replace").split()
        if not published:
            raise DownloadError(f"{base}/{name}.zip.md5 is empty")
        got = _fetch_to(f"{base}/{name}.zip", archive, show_progress)
        if got != published[0].lower():
            raise DownloadError(
                f"{base}/{name}.zip: MD5 {got}, but the publisher says {published[0]} "
                "(corrupted download; nothing was kept)"
            )
        unpacked = Path(tmp) / "unpacked"
        _unzip(archive, unpacked)
        inner = unpacked / name
        os.rename(inner if inner.is_dir() else unpacked, target)
    return target


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data: bytes = response.read()
            return data
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"cannot fetch {url}: {e}") from None


def _fetch_to(url: str, path: Path, show_progress: bool) -> str:
    """Stream ``url`` into ``path``; returns its MD5 (hex)."""
    md5 = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, path.open("wb") as f:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=path.name,
                      disable=not show_progress) as bar:  # fmt: skip
                while chunk := response.read(CHUNK):
                    f.write(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"cannot fetch {url}: {e}") from None
    return md5.hexdigest()


def _unzip(archive: Path, out: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():
                p = PurePosixPath(member)
                if p.is_absolute() or ".." in p.parts:
                    raise DownloadError(f"{archive.name}: unsafe member path {member!r}")
            z.extractall(out)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{archive.name}: not a zip archive ({e})") from None
    if not out.exists():
        raise DownloadError(f"{archive.name}: empty archive")
    shutil.rmtree(out / "__MACOSX", ignore_errors=True)
