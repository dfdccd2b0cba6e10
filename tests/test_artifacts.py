"""The artifact format: round trip, and refusal of anything missing, damaged or foreign."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from movierec import artifacts
from movierec.artifacts import (
    Histories,
    Movie,
    read_artifacts,
    read_manifest,
    write_artifacts,
)
from movierec.errors import ArtifactError


def tiny(out: Path, n: int = 5, dim: int = 4) -> dict:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    histories = Histories(
        user_ids=np.array([3, 9], dtype=np.int64),
        indptr=np.array([0, 2, 3], dtype=np.int64),
        rows=np.array([0, 1, 4], dtype=np.int32),
        ratings=np.array([4, 5, 1], dtype=np.float32),
    )
    movies = [Movie(10 + i, f"Movie {i} (2000)", ("Drama",), 2000) for i in range(n)]
    return write_artifacts(
        out,
        movies=movies,
        vectors=vectors,
        index=index,
        histories=histories,
        settings={"dim": dim},
        aggregation={"method": "mean"},
    )


def test_round_trip(tmp_path: Path) -> None:
    manifest = tiny(tmp_path / "a")
    loaded = read_artifacts(tmp_path / "a")
    assert loaded.manifest == manifest
    assert loaded.model_version == manifest["model_version"]
    assert loaded.movies[2] == Movie(12, "Movie 2 (2000)", ("Drama",), 2000)
    assert loaded.movie_ids.tolist() == [10, 11, 12, 13, 14]
    assert loaded.vectors.shape == (5, 4) and loaded.index.ntotal == 5
    rows, ratings = loaded.histories.lookup(3)
    assert rows.tolist() == [0, 1] and ratings.tolist() == [4.0, 5.0]
    assert loaded.histories.lookup(4) is None
    assert manifest["counts"] == {"movies": 5, "users": 2, "ratings": 3}
    assert manifest["index"] == {
        "type": "IndexFlatIP",
        "metric": "inner_product",
        "dim": 4,
        "ntotal": 5,
    }
    assert set(manifest["files"]) == set(artifacts.DATA_FILES)


def test_nothing_is_pickled(tmp_path: Path) -> None:
    tiny(tmp_path / "a")
    with np.load(tmp_path / "a" / artifacts.HISTORIES, allow_pickle=False) as npz:
        assert all(npz[k].dtype != object for k in npz.files)
    np.load(tmp_path / "a" / artifacts.VECTORS, allow_pickle=False)


@pytest.mark.parametrize("name", artifacts.DATA_FILES)
def test_a_flipped_bit_anywhere_is_refused(tmp_path: Path, name: str) -> None:
    tiny(tmp_path / "a")
    path = tmp_path / "a" / name
    data = bytearray(path.read_bytes())
    for offset in (0, len(data) // 2, len(data) - 1):  # header, body, tail
        shutil.copytree(tmp_path / "a", tmp_path / "b", dirs_exist_ok=True)
        flipped = bytearray(data)
        flipped[offset] ^= 0x10
        (tmp_path / "b" / name).write_bytes(flipped)
        with pytest.raises(ArtifactError, match=f"{name}: sha256 does not match"):
            read_artifacts(tmp_path / "b")


@pytest.mark.parametrize("name", artifacts.DATA_FILES)
def test_missing_or_truncated_files_are_refused(tmp_path: Path, name: str) -> None:
    tiny(tmp_path / "a")
    path = tmp_path / "a" / name
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(ArtifactError, match="truncated"):
        read_artifacts(tmp_path / "a")
    path.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        read_artifacts(tmp_path / "a")


def test_bad_manifests(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no such directory"):
        read_manifest(tmp_path / "nope")
    tiny(tmp_path / "a")
    mpath = tmp_path / "a" / artifacts.MANIFEST
    manifest = json.loads(mpath.read_text())
    mpath.write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(ArtifactError, match="format_version 99; this movierec reads version 1"):
        read_artifacts(tmp_path / "a")
    mpath.write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        read_artifacts(tmp_path / "a")
    mpath.unlink()
    with pytest.raises(ArtifactError, match="manifest.json: missing"):
        read_artifacts(tmp_path / "a")


def test_index_that_does_not_match_the_manifest_is_refused(tmp_path: Path) -> None:
    """A consistent-looking artifact whose index facts disagree with the manifest."""
    tiny(tmp_path / "a")
    mpath = tmp_path / "a" / artifacts.MANIFEST
    manifest = json.loads(mpath.read_text())
    manifest["index"]["type"] = "IndexHNSWFlat"
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="index.faiss: loaded"):
        read_artifacts(tmp_path / "a")


def test_failed_write_keeps_the_previous_artifact(tmp_path: Path, monkeypatch) -> None:
    first = tiny(tmp_path / "a")

    def crash(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(faiss, "write_index", crash)
    with pytest.raises(OSError, match="disk full"):
        tiny(tmp_path / "a")
    assert read_artifacts(tmp_path / "a").model_version == first["model_version"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]  # no half-written leftovers


def test_rewrite_replaces_in_place(tmp_path: Path) -> None:
    tiny(tmp_path / "a", n=5)
    tiny(tmp_path / "a", n=7)
    assert read_artifacts(tmp_path / "a").index.ntotal == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_refuses_to_replace_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "precious.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not an artifact directory"):
        tiny(tmp_path / "a")
    assert (tmp_path / "a" / "precious.txt").read_text() == "keep me"


KILL_MID_EXPORT = """
import os, signal, sys
from pathlib import Path
import faiss
from tests.test_artifacts import tiny

def die(*args):  # the vectors and movies are written; the process dies before the index
    os.kill(os.getpid(), signal.SIGKILL)

faiss.write_index = die
tiny(Path(sys.argv[1]), n=9)
"""


def test_killed_mid_export_leaves_the_previous_artifact(tmp_path: Path) -> None:
    first = tiny(tmp_path / "a")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", KILL_MID_EXPORT, str(tmp_path / "a")], cwd=root, timeout=60
    )
    assert result.returncode == -signal.SIGKILL
    assert read_artifacts(tmp_path / "a").model_version == first["model_version"]
    leftovers = [p for p in tmp_path.iterdir() if p.name != "a"]
    assert [p.name.startswith(".a.tmp-") for p in leftovers] == [True]  # hidden, incomplete
    with pytest.raises(ArtifactError, match="missing"):
        read_artifacts(leftovers[0])  # no manifest: nothing would ever load it
