"""The artifact format: round trip, and refusal of anything missing, damaged or foreign."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import faiss
import numpy as np
import pytest

from movierec import artifacts
from movierec.artifacts import (
    Histories,
    MeanAggregation,
    Movie,
    read_artifacts,
    read_manifest,
    write_artifacts,
)
from movierec.errors import ArtifactError


def tiny(out: Path, n: int = 5, dim: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
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
        aggregation=MeanAggregation(like_threshold=3.5, append_one=False),
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
    assert manifest["counts"] == {"movies": 5, "catalogue": 5, "users": 2, "ratings": 3}
    assert manifest["ids"] == {"users": "int", "movies": "int"}
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
    with pytest.raises(ArtifactError, match="format_version 99; this movierec reads version 2"):
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
    with pytest.raises(ArtifactError, match="cannot write the artifact .disk full.; disk full"):
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


# --- a producer with valid checksums but bad content ------------------------------------------


def resign(folder: Path) -> None:
    """Recompute the manifest's sizes, checksums and model_version, as a buggy or malicious
    producer would after writing bad content: only the reader's checks of meaning remain."""
    mpath = folder / artifacts.MANIFEST
    manifest = json.loads(mpath.read_text())
    files = {
        name: {"bytes": (folder / name).stat().st_size,
               "sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest()}
        for name in artifacts.DATA_FILES
    }  # fmt: skip
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    manifest.update(files=files, model_version=f"{manifest['created_at']}-{digest[:12]}")
    mpath.write_text(json.dumps(manifest))


def edit_manifest(folder: Path, **changes: object) -> None:
    mpath = folder / artifacts.MANIFEST
    manifest = json.loads(mpath.read_text())
    for dotted, value in changes.items():
        *path, key = dotted.split("__")
        target = manifest
        for p in path:
            target = target[p]
        if value is DELETE:
            del target[key]
        else:
            target[key] = value
    mpath.write_text(json.dumps(manifest))


DELETE = object()


def nan_vectors(folder: Path) -> None:
    vectors = np.load(folder / artifacts.VECTORS)
    vectors[1, 2] = np.nan
    np.save(folder / artifacts.VECTORS, vectors)


def duplicate_ids(folder: Path) -> None:
    movies = json.loads((folder / artifacts.MOVIES).read_text())
    movies[1]["movie_id"] = movies[0]["movie_id"]
    (folder / artifacts.MOVIES).write_text(json.dumps(movies))


def wrong_json_types(folder: Path) -> None:
    movies = json.loads((folder / artifacts.MOVIES).read_text())
    movies[2]["genres"] = "Drama"
    (folder / artifacts.MOVIES).write_text(json.dumps(movies))


def compressed_histories(folder: Path) -> None:
    with np.load(folder / artifacts.HISTORIES) as npz:
        arrays = {k: npz[k] for k in npz.files}
    with open(folder / artifacts.HISTORIES, "wb") as f:
        np.savez_compressed(f, **arrays)


def huge_npy_header(folder: Path) -> None:
    """A 5 x 4 array whose header claims 10^9 x 64 floats (256 GB)."""
    path = folder / artifacts.VECTORS
    path.write_bytes(_npy_claiming(path.read_bytes(), (10**9, 64)))


def _npy_claiming(data: bytes, shape: tuple[int, ...]) -> bytes:
    header_len = int.from_bytes(data[8:10], "little")
    header = data[10 : 10 + header_len].decode("latin-1")
    new = header.replace("(5, 4)", repr(shape)).rstrip("\n ")
    new = new + " " * (header_len - len(new) - 1) + "\n"
    assert len(new) == header_len
    return data[:10] + new.encode("latin-1") + data[10 + header_len :]


def huge_faiss_vector(folder: Path) -> None:
    """The index's stored-vectors length field claims 2^36 floats (256 GB)."""
    path = folder / artifacts.INDEX
    data = bytearray(path.read_bytes())
    floats = 5 * 4  # n x d, stored as a count of floats
    offset = len(data) - floats * 4 - 8
    assert int.from_bytes(data[offset : offset + 8], "little") == floats
    data[offset : offset + 8] = (2**36).to_bytes(8, "little")
    path.write_bytes(bytes(data))


def negative_npy_shape(folder: Path) -> None:
    """(-5, -4) holds the same 20 floats as (5, 4): only a sign check catches it."""
    path = folder / artifacts.VECTORS
    path.write_bytes(_npy_claiming(path.read_bytes(), (-5, -4)))


def deeply_nested_json(folder: Path) -> None:
    (folder / artifacts.MOVIES).write_text("[" * 200_000 + "]" * 200_000)


def _edit_movies(folder: Path, **fields: object) -> None:
    movies = json.loads((folder / artifacts.MOVIES).read_text())
    movies[0].update(fields)
    (folder / artifacts.MOVIES).write_text(json.dumps(movies))


def implausible_year(folder: Path) -> None:
    _edit_movies(folder, year=10**12)  # numpy's int32 years would overflow


def id_beyond_int64(folder: Path) -> None:
    _edit_movies(folder, movie_id=2**70)


def string_id_with_nul(folder: Path) -> None:
    """Fixed-width id arrays strip a trailing NUL: 'm0\\0' would answer as 'm0'."""
    movies = json.loads((folder / artifacts.MOVIES).read_text())
    for i, m in enumerate(movies):
        m["movie_id"] = f"m{i}"
    movies[1]["movie_id"] = "m0\u0000"
    (folder / artifacts.MOVIES).write_text(json.dumps(movies))
    edit_manifest(folder, ids__movies="str")


def _replace_index(folder: Path, change) -> None:  # type: ignore[no-untyped-def]
    index = faiss.read_index(str(folder / artifacts.INDEX))
    index = change(index) or index
    faiss.write_index(index, str(folder / artifacts.INDEX))
    edit_manifest(folder, index=artifacts._index_facts(index))


def eight_bit_quantizer(folder: Path) -> None:
    """An IndexScalarQuantizer of 8-bit codes: its codes are not the float16 the reader
    checks for finiteness."""
    vectors = np.load(folder / artifacts.VECTORS)
    sq = faiss.IndexScalarQuantizer(4, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq.train(vectors)
    sq.add(vectors)
    _replace_index(folder, lambda _: sq)


def _hnsw(folder: Path) -> faiss.Index:
    return artifacts.build_index(np.load(folder / artifacts.VECTORS), "hnsw", hnsw_m=4)


def huge_ef_search(folder: Path) -> None:
    """An HNSW file whose stored search depth makes every search walk 10^9 candidates."""

    def deepen(_: object) -> faiss.Index:
        index = _hnsw(folder)
        index.hnsw.efSearch = 10**9
        return index

    _replace_index(folder, deepen)


def hnsw_link_out_of_range(folder: Path) -> None:
    """A graph link naming a vector that does not exist (FAISS's reader checks the links)."""

    def spoil(_: object) -> faiss.Index:
        index = _hnsw(folder)
        links = faiss.rev_swig_ptr(index.hnsw.neighbors.data(), index.hnsw.neighbors.size())
        links[0] = 10**6
        return index

    _replace_index(folder, spoil)


BAD_CONTENT = {
    "negative npy shape": (negative_npy_shape, "negative shape"),
    "JSON nested 200,000 deep": (deeply_nested_json, "nested too deeply"),
    "year 10^12": (implausible_year, "not plausible"),
    "integer id beyond int64": (id_beyond_int64, "not a valid int id"),
    "string id holding NUL": (string_id_with_nul, "not a valid str id"),
    "8-bit scalar quantizer": (eight_bit_quantizer, "must store float16"),
    "HNSW efSearch 10^9": (huge_ef_search, "efSearch 1000000000 outside"),
    "HNSW link out of range": (hnsw_link_out_of_range, "out of range"),
    "NaN vectors": (nan_vectors, "not all finite"),
    "duplicated movie ids": (duplicate_ids, "appears twice"),
    "genres not a list": (wrong_json_types, "not a valid catalogue"),
    "compressed npz": (compressed_histories, "compressed"),
    "npy header claiming 256 GB": (huge_npy_header, "header claims shape"),
    "FAISS vector claiming 256 GB": (huge_faiss_vector, "not a readable FAISS index"),
}


@pytest.mark.parametrize("case", BAD_CONTENT)
def test_valid_checksums_with_bad_content_are_refused_in_bounded_memory(
    tmp_path: Path, case: str
) -> None:
    tiny(tmp_path / "a")
    spoil, message = BAD_CONTENT[case]
    spoil(tmp_path / "a")
    resign(tmp_path / "a")
    # In a child process: peak memory must stay bounded, and the refusal is one line.
    script = (
        "import resource, sys\n"
        "from movierec.artifacts import read_artifacts\n"
        "from movierec.errors import ArtifactError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    read_artifacts(sys.argv[1])\n"
        "    print('LOADED')\n"
        "except ArtifactError as e:\n"
        "    print('REFUSED', e)\n"
        "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
        "print('GROWN_KB', grown)\n"
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "a")], cwd=root,
                         capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    lines = out.splitlines()
    assert lines[0].startswith("REFUSED") and message in lines[0], out
    assert int(lines[-1].split()[1]) < 100_000, out  # under 100 MB, not the claimed GBs


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"aggregation__method": "median"}, "aggregation.method 'median' is not one of"),
        ({"aggregation__append_one": DELETE}, "missing append_one"),
        ({"aggregation__like_threshold": "3.5"}, "aggregation.like_threshold must be a finite"),
        ({"counts__movies": "5"}, "'counts' must hold"),
        ({"counts__catalogue": 7}, "6 movies|5 movies, manifest says 7"),
        ({"ids__movies": "uuid"}, "'ids' must say"),
        ({"dim": 10**6}, "dim 1000000 outside"),
        ({"model_version": "20260101T000000Z-000000000000"}, "does not name the files"),
        ({"files__vectors.npy__bytes": 10**12}, "more than the counts allow"),
        ({"settings": []}, "field 'settings' is missing or not a JSON object"),
    ],
)
def test_manifest_fields_are_checked_for_meaning(
    tmp_path: Path, changes: dict, message: str
) -> None:
    tiny(tmp_path / "a")
    edit_manifest(tmp_path / "a", **changes)
    if "model_version" not in changes and "files__vectors.npy__bytes" not in changes:
        resign(tmp_path / "a")
    with pytest.raises(ArtifactError, match=message):
        read_artifacts(tmp_path / "a")


def test_als_without_regularization_is_refused(tmp_path: Path) -> None:
    """lambda = 0 can leave the fold-in's system singular: every such Recommend would fail."""
    tiny(tmp_path / "a")
    edit_manifest(tmp_path / "a", aggregation={"method": "als", "like_threshold": 3.5,
                                               "alpha": 1.0, "inline_stars": 4.0,
                                               "regularization": 0.0})  # fmt: skip
    resign(tmp_path / "a")
    with pytest.raises(ArtifactError, match="regularization, alpha and inline_stars > 0"):
        read_artifacts(tmp_path / "a")


def test_a_fifo_in_place_of_a_file_is_refused_not_waited_on(tmp_path: Path) -> None:
    """Opening a FIFO for reading blocks until a writer comes: a reload would hang."""
    tiny(tmp_path / "a")
    os.remove(tmp_path / "a" / artifacts.HISTORIES)
    os.mkfifo(tmp_path / "a" / artifacts.HISTORIES)
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            read_artifacts(tmp_path / "a")
        except BaseException as e:
            outcome.append(e)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "the reader waited on the FIFO"
    assert isinstance(outcome[0], ArtifactError) and "not a regular file" in str(outcome[0])


def test_als_manifest_missing_a_key_is_refused(tmp_path: Path) -> None:
    tiny(tmp_path / "a")
    edit_manifest(tmp_path / "a", aggregation={"method": "als", "like_threshold": 3.5,
                                               "alpha": 1.0, "inline_stars": 4.0})  # fmt: skip
    with pytest.raises(ArtifactError, match="missing regularization"):
        read_artifacts(tmp_path / "a")


# --- loading while the directory changes ------------------------------------------------------


def test_a_loaded_model_does_not_depend_on_its_files(tmp_path: Path) -> None:
    tiny(tmp_path / "a", seed=0)
    tiny(tmp_path / "b", seed=1)
    loaded = read_artifacts(tmp_path / "a")
    before = np.array(loaded.vectors)
    assert not isinstance(loaded.vectors, np.memmap) and not isinstance(
        loaded.vectors.base, np.memmap
    )
    shutil.copy(tmp_path / "b" / artifacts.VECTORS, tmp_path / "a" / artifacts.VECTORS)
    assert np.array_equal(loaded.vectors, before)  # another model's file copied over it
    (tmp_path / "a" / artifacts.VECTORS).write_bytes(b"")  # truncated: no SIGBUS
    assert np.array_equal(loaded.vectors, before)


def _fingerprint(a) -> tuple:  # type: ignore[no-untyped-def]
    stored = a.index.reconstruct_n(0, a.index.ntotal)
    return (a.vectors.tobytes(), stored.tobytes(), tuple(m.movie_id for m in a.movies))


def test_switching_the_directory_during_loads_never_mixes_two_models(tmp_path: Path) -> None:
    """Loads race a symlink flipping between two same-sized models: each load is one model
    whole, under its own version, or refused; never one model's vectors with the other's
    index."""
    models = {}
    for seed, name in ((0, "a"), (1, "b")):
        tiny(tmp_path / name, n=400, dim=32, seed=seed)
        loaded = read_artifacts(tmp_path / name)
        models[loaded.model_version] = _fingerprint(loaded)
    current = tmp_path / "current"
    current.symlink_to(tmp_path / "a")
    stop = threading.Event()

    def flip() -> None:
        targets = [tmp_path / "a", tmp_path / "b"]
        i = 0
        while not stop.is_set():
            i += 1
            (tmp_path / "next").symlink_to(targets[i % 2])
            (tmp_path / "next").replace(current)

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    loads, refused, deadline = 0, 0, time.monotonic() + 10
    try:
        while loads < 150 and time.monotonic() < deadline:
            try:
                loaded = read_artifacts(current)
            except ArtifactError:
                refused += 1
                continue
            loads += 1
            assert _fingerprint(loaded) == models[loaded.model_version]
    finally:
        stop.set()
        flipper.join(timeout=10)
    assert loads >= 20, (loads, refused)


# --- what exports leave behind ----------------------------------------------------------------


def test_artifacts_are_readable_by_other_users(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        tiny(tmp_path / "a")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o755
    for f in (tmp_path / "a").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_abandoned_temporary_directories_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    abandoned = tmp_path / f".a.tmp-{dead}-x1y2"
    alive = tmp_path / f".a.tmp-{os.getpid()}-busy"  # a concurrent export in progress
    for d in (abandoned, alive):
        d.mkdir()
        (d / "vectors.npy").write_bytes(b"x" * 1000)
    tiny(tmp_path / "a")
    assert not abandoned.exists() and alive.exists()
