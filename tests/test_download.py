"""`movierec data download` against a local HTTP server serving archives built here."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from movierec.errors import DownloadError
from trainer.download import download
from trainer.movielens import load

U_DATA = "1\t10\t4\t881250949\n1\t20\t5\t881250950\n2\t10\t3\t881250951\n"
U_ITEM = (
    "10|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
    "20|GoldenEye (1995)|01-Jan-1995||http://x|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n"
)


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "mirror"
    root.mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def publish(root: Path, name: str, members: dict[str, str], md5: str | None = None) -> None:
    archive = root / f"{name}.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for member, text in members.items():
            z.writestr(member, text)
    digest = md5 or hashlib.md5(archive.read_bytes()).hexdigest()
    (root / f"{name}.zip.md5").write_text(f"{digest}  {name}.zip\n")


def test_download_checks_and_unpacks(mirror: tuple[str, Path], tmp_path: Path) -> None:
    url, root = mirror
    publish(root, "ml-100k", {"ml-100k/u.data": U_DATA, "ml-100k/u.item": U_ITEM})
    folder = download("ml-100k", tmp_path / "data", url, show_progress=False)
    assert folder == tmp_path / "data" / "ml-100k"
    data = load(folder)
    assert data.layout == "100k" and len(data.ratings) == 3
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["ml-100k"]  # no leftovers
    with pytest.raises(DownloadError, match="already exists"):
        download("ml-100k", tmp_path / "data", url, show_progress=False)


def test_a_corrupted_download_is_refused_and_nothing_kept(
    mirror: tuple[str, Path], tmp_path: Path
) -> None:
    url, root = mirror
    publish(root, "ml-100k", {"ml-100k/u.data": U_DATA}, md5="0" * 32)
    with pytest.raises(DownloadError, match="MD5 .* publisher says 0{32} \\(corrupted"):
        download("ml-100k", tmp_path / "data", url, show_progress=False)
    assert list((tmp_path / "data").iterdir()) == []


def test_unsafe_or_missing_archives(mirror: tuple[str, Path], tmp_path: Path) -> None:
    url, root = mirror
    publish(root, "ml-1m", {"../evil.txt": "x"})
    with pytest.raises(DownloadError, match="unsafe member path '../evil.txt'"):
        download("ml-1m", tmp_path / "data", url, show_progress=False)
    assert not (tmp_path / "evil.txt").exists()
    with pytest.raises(DownloadError, match="cannot fetch .*ml-25m.zip.md5"):
        download("ml-25m", tmp_path / "data", url, show_progress=False)
    with pytest.raises(DownloadError, match="unknown release 'ml-2'"):
        download("ml-2", tmp_path / "data", url, show_progress=False)
