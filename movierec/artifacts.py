"""The artifact directory: the only thing the trainer and the server share.

Layout (format version 2)::

    manifest.json    format_version, model_version, settings, training, aggregation, id kinds,
                     counts, index facts, and the size and sha256 of every other file
                     (written last)
    movies.json      the catalogue: [{"movie_id", "title", "genres": [...], "year"}, ...]; the
                     first counts.movies entries are the indexed rows (row i = entry i), the
                     rest are catalogued movies without a vector
    vectors.npy      float32 (movies, dim): what a query aggregates, row i = movies[i]
    index.faiss      FAISS inner-product index whose id i is row i; its dimension is dim, or
                     dim + 1 when the aggregation appends a 1 (the extra dimension is a bias)
    histories.npz    each user's training history as CSR: user_ids, indptr, rows, ratings

Ids are the user's own: integers (MovieLens) or strings (UUIDs, SKUs), one kind per artifact
for users and one for movies, recorded in ``manifest["ids"]``.

Reader and writer live side by side and check the same rules. The reader resolves the
directory once, reads every file once into memory, verifies the sha256 of exactly the bytes it
then parses, and checks that the manifest's model_version names that content: a directory
switched or rewritten during a load can fail the load, never mix two models, and a loaded model
does not depend on the files afterwards. Every claim a file makes about sizes is bounded by its
real size before anything is allocated (an .npy header, a FAISS vector length, a zip member),
and every field and array is checked for meaning (finite numbers, unique ids, consistent
shapes). Nothing is pickled. Imports stay light (stdlib, numpy, faiss): the server never pulls
in torch or pandas.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import stat
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import faiss
import numpy as np
import numpy.typing as npt

from movierec.errors import ArtifactError
from movierec.ids import MAX_ID_CHARS, IdKind, Key, as_key

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
MOVIES = "movies.json"
VECTORS = "vectors.npy"
INDEX = "index.faiss"
HISTORIES = "histories.npz"
DATA_FILES = (MOVIES, VECTORS, INDEX, HISTORIES)
HISTORY_ARRAYS = ("user_ids", "indptr", "rows", "ratings")
INDEX_TYPES = {"flat": "IndexFlatIP", "fp16": "IndexScalarQuantizer", "hnsw": "IndexHNSWFlat"}
MAX_DIM = 4096
MAX_EF_SEARCH = 4096  # an HNSW file's search depth (or the catalogue's size, if larger)
MIN_YEAR, MAX_YEAR = 0, 9999  # a catalogue's years (0 or null: unknown)
_MAX_MANIFEST_BYTES = 1 << 20
_MAX_MOVIE_JSON_BYTES = 4096  # per catalogue entry, for the size bound of movies.json

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Movie:
    movie_id: Key
    title: str
    genres: tuple[str, ...]
    year: int | None = None


@dataclass(frozen=True)
class Histories:
    """Users' training histories in CSR form: user ``user_ids[u]`` watched catalogue rows
    ``rows[indptr[u]:indptr[u + 1]]`` with ``ratings`` alongside. ``user_ids`` is sorted and
    holds int64 ids, or fixed-width strings for data with string user ids. Artifacts store
    each user's rows ascending (``by_row``), so a history is also the sorted set the server
    excludes, without a sort per request."""

    user_ids: npt.NDArray[Any]
    indptr: IntArray
    rows: npt.NDArray[np.int32]
    ratings: FloatArray

    def lookup(self, user_id: Key) -> tuple[npt.NDArray[np.int32], FloatArray] | None:
        """(rows, ratings) of one user, or None for a user the model does not know."""
        key = as_key(user_id, id_kind(self.user_ids))
        if key is None:
            return None
        u = int(np.searchsorted(self.user_ids, key))
        if u == len(self.user_ids) or self.user_ids[u] != key:
            return None
        start, stop = self.indptr[u], self.indptr[u + 1]
        return self.rows[start:stop], self.ratings[start:stop]

    @property
    def num_ratings(self) -> int:
        return len(self.rows)

    def by_row(self) -> Histories:
        """The same histories with each user's entries ordered by row."""
        user = np.repeat(np.arange(len(self.user_ids)), np.diff(self.indptr))
        order = np.lexsort((self.rows, user))
        return Histories(self.user_ids, self.indptr, self.rows[order], self.ratings[order])


@dataclass(frozen=True)
class MeanAggregation:
    """The query is the normalised (weighted) mean of the history's vectors; with
    ``append_one`` a constant 1 follows, scoring the index's last dimension as a bias."""

    method: ClassVar[str] = "mean"
    like_threshold: float  # a training history's ratings >= this are aggregated
    append_one: bool


@dataclass(frozen=True)
class AlsAggregation:
    """The query is ALS's least-squares fold-in of the history over the item factors:
    (Y'Y + regularization I + sum (c-1) y y')^-1 sum c y, with c = alpha * stars."""

    method: ClassVar[str] = "als"
    like_threshold: float
    regularization: float
    alpha: float
    inline_stars: float  # the stars an inline history's movies count as


Aggregation = MeanAggregation | AlsAggregation
_AGGREGATIONS: dict[str, type[MeanAggregation] | type[AlsAggregation]] = {
    "mean": MeanAggregation,
    "als": AlsAggregation,
}


@dataclass(frozen=True)
class Artifacts:
    manifest: dict[str, Any]
    aggregation: Aggregation
    movies: list[Movie]  # the indexed rows: row i is movies[i]
    unindexed: list[Movie]  # catalogued movies without a vector
    movie_ids: npt.NDArray[Any]  # row -> id (int64, or fixed-width str), the inverse of row_of
    vectors: FloatArray
    index: faiss.Index
    histories: Histories

    @property
    def model_version(self) -> str:
        return str(self.manifest["model_version"])

    @property
    def movie_kind(self) -> IdKind:
        kind: IdKind = self.manifest["ids"]["movies"]
        return kind


# --- ids -------------------------------------------------------------------------------------


def id_kind(ids: npt.NDArray[Any]) -> IdKind:
    """'int' for an int64 id array, 'str' for a fixed-width string one."""
    return "str" if ids.dtype.kind == "U" else "int"


def id_array(ids: Sequence[Key], kind: IdKind) -> npt.NDArray[Any]:
    """Ids as the array the artifact stores: int64, or fixed-width unicode."""
    if kind == "int":
        return np.array(ids, dtype=np.int64)
    return np.array(ids, dtype=f"<U{max([1, *map(len, ids)])}")  # type: ignore[arg-type]


# --- writing ---------------------------------------------------------------------------------


def write_artifacts(
    out: Path,
    *,
    movies: Sequence[Movie],
    vectors: FloatArray,
    index: faiss.Index,
    histories: Histories,
    settings: Mapping[str, Any],
    aggregation: Aggregation,
    training: Mapping[str, Any] | None = None,
    unindexed: Sequence[Movie] = (),
) -> dict[str, Any]:
    """Write a complete artifact directory at ``out`` and return its manifest.

    ``movies`` are the indexed rows, ``unindexed`` catalogued movies without a vector.
    ``settings`` are the knobs the model was trained with; ``training`` is what happened
    (loss per epoch, world size, settings chosen automatically and why): JSON values only.

    Everything is written to a temporary sibling directory and renamed into place, so a crash
    never leaves a half-written artifact; an existing ``out`` is replaced only once the new one
    is complete. Temporary directories left by killed exports are removed.
    """
    catalogue = [*movies, *unindexed]
    kinds = {"users": id_kind(histories.user_ids), "movies": _movie_kind(catalogue)}
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    histories = histories.by_row()
    _check_catalogue(catalogue, kinds["movies"], "movies")
    _check_arrays(vectors, index, histories, len(movies), aggregation, kinds["users"], "")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        # mkdtemp makes 0700; a server running as another user (the container) must read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        with open(tmp / MOVIES, "w", encoding="utf-8") as f:
            json.dump([_movie_to_json(m) for m in catalogue], f, ensure_ascii=False)
        np.save(tmp / VECTORS, vectors)
        faiss.write_index(index, str(tmp / INDEX))
        with open(tmp / HISTORIES, "wb") as f:
            np.savez(f, **{name: getattr(histories, name) for name in HISTORY_ARRAYS})
        files = {
            name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256_file(tmp / name)}
            for name in DATA_FILES
        }
        created = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        manifest = {
            "format_version": FORMAT_VERSION,
            "model_version": _model_version(created, files),
            "created_at": created,
            "settings": dict(settings),
            "training": dict(training or {}),
            "aggregation": {"method": aggregation.method, **dataclasses.asdict(aggregation)},
            "ids": kinds,
            "counts": {
                "movies": len(movies),
                "catalogue": len(catalogue),
                "users": len(histories.user_ids),
                "ratings": histories.num_ratings,
            },
            "dim": int(vectors.shape[1]),
            "index": _index_facts(index),
            "files": files,
        }
        _write_json_synced(tmp / MANIFEST, manifest)
        _fsync_dir(tmp)
        _replace_dir(tmp, out)
    except (OSError, RuntimeError) as e:  # a full disk, a file-size limit (FAISS: RuntimeError)
        shutil.rmtree(tmp, ignore_errors=True)
        reason = str(e).strip().splitlines()[-1][:200]
        raise ArtifactError(
            f"{out}: cannot write the artifact ({reason}); disk full? Nothing was replaced"
        ) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


# --- reading ---------------------------------------------------------------------------------


def read_manifest(path: Path) -> dict[str, Any]:
    """Read and check the manifest alone (cheap; no data file is touched)."""
    with _Directory(path) as d:
        return _parse_manifest(d.read(MANIFEST, _MAX_MANIFEST_BYTES), d.root / MANIFEST)[0]


def read_artifacts(path: Path) -> Artifacts:
    """Load an artifact directory, refusing anything incomplete, corrupt or inconsistent."""
    try:
        return _read_artifacts(path)
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as e:
        # a backstop: every check above names its file; whatever slipped past them is still
        # a bad artifact, refused in one line, never a traceback in a reload
        raise ArtifactError(f"{path}: not a valid artifact ({type(e).__name__}: {e})") from None


def _read_artifacts(path: Path) -> Artifacts:
    with _Directory(path) as d:
        raw = d.read(MANIFEST, _MAX_MANIFEST_BYTES)
        manifest, aggregation = _parse_manifest(raw, d.root / MANIFEST)
        data = {name: d.read_verified(name, manifest["files"][name]) for name in DATA_FILES}
        root = d.root
    kinds, counts = manifest["ids"], manifest["counts"]
    try:
        catalogue = [_movie_from_json(m) for m in _loads(data.pop(MOVIES), root / MOVIES)]
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{root / MOVIES}: not a valid catalogue ({e})") from None
    if len(catalogue) != counts["catalogue"]:
        raise ArtifactError(
            f"{root / MOVIES}: {len(catalogue)} movies, manifest says {counts['catalogue']}"
        )
    _check_catalogue(catalogue, kinds["movies"], str(root / MOVIES))
    vectors = _parse_npy(data.pop(VECTORS), root / VECTORS)
    arrays = _parse_npz(data.pop(HISTORIES), root / HISTORIES)
    index = _parse_index(data.pop(INDEX), root / INDEX)
    histories = Histories(**arrays)
    n = counts["movies"]
    _check_arrays(vectors, index, histories, n, aggregation, kinds["users"], f"{root}: ")
    facts = _index_facts(index)
    if facts != manifest["index"]:
        raise ArtifactError(f"{root / INDEX}: loaded {facts}, manifest says {manifest['index']}")
    if vectors.shape[1] != manifest["dim"]:
        raise ArtifactError(f"{root / VECTORS}: dimension {vectors.shape[1]} != {manifest['dim']}")
    if (len(histories.user_ids), histories.num_ratings) != (counts["users"], counts["ratings"]):
        raise ArtifactError(f"{root / HISTORIES}: user or rating count differs from the manifest")
    movies = catalogue[:n]
    return Artifacts(
        manifest=manifest,
        aggregation=aggregation,
        movies=movies,
        unindexed=catalogue[n:],
        movie_ids=id_array([m.movie_id for m in movies], kinds["movies"]),
        vectors=vectors,
        index=index,
        histories=histories,
    )


class _Directory:
    """An artifact directory resolved and opened once: every file is opened relative to the
    same directory, so a symlink flip or a directory exchange mid-load cannot mix models."""

    def __init__(self, path: Path) -> None:
        try:
            self.root = Path(path).resolve(strict=True)
            self._fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise ArtifactError(f"{path}: not an artifact directory (no such directory)") from None
        except NotADirectoryError:
            raise ArtifactError(f"{path}: not an artifact directory (not a directory)") from None

    def __enter__(self) -> _Directory:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)

    def read(self, name: str, limit: int, size: int | None = None) -> bytearray:
        """The whole file, refused if larger than ``limit`` (or not exactly ``size``)."""
        path = self.root / name
        try:
            # O_NONBLOCK: a FIFO planted under an artifact's name must not hang the open
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=self._fd)
        except FileNotFoundError:
            what = "is this an artifact directory?" if name == MANIFEST else "incomplete artifact"
            raise ArtifactError(f"{path}: missing ({what})") from None
        except OSError as e:
            raise ArtifactError(f"{path}: cannot be opened ({e.strerror})") from None
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ArtifactError(f"{path}: not a regular file")
            actual = info.st_size
            if size is not None and actual != size:
                raise ArtifactError(
                    f"{path}: {actual} bytes, manifest says {size} (truncated or replaced)"
                )
            if actual > limit:
                raise ArtifactError(f"{path}: {actual} bytes, more than the {limit} allowed")
            buffer = bytearray(actual)
            got = f.readinto(buffer)
            if got != actual or f.read(1):
                raise ArtifactError(f"{path}: changed size while being read")
        return buffer

    def read_verified(self, name: str, expected: Mapping[str, Any]) -> bytearray:
        data = self.read(name, expected["bytes"], expected["bytes"])
        if hashlib.sha256(data).hexdigest() != expected["sha256"]:
            raise ArtifactError(f"{self.root / name}: sha256 does not match the manifest (corrupt)")
        return data


def _parse_manifest(raw: bytes | bytearray, where: Path) -> tuple[dict[str, Any], Aggregation]:
    """The manifest, every field checked, and its aggregation as a type."""
    manifest = _loads(raw, where)
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{where}: expected a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(
            f"{where}: format_version {version!r}; this movierec reads version {FORMAT_VERSION}"
            + (" (retrain to upgrade)" if version == 1 else "")
        )
    fields: dict[str, type] = {
        "model_version": str, "created_at": str, "settings": dict, "training": dict,
        "aggregation": dict, "ids": dict, "counts": dict, "dim": int, "index": dict,
        "files": dict,
    }  # fmt: skip
    for key, kind in fields.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise ArtifactError(f"{where}: field {key!r} is missing or not a {_name(kind)}")
    ids = manifest["ids"]
    if set(ids) != {"users", "movies"} or not set(ids.values()) <= {"int", "str"}:
        raise ArtifactError(f"{where}: 'ids' must say 'int' or 'str' for users and movies")
    counts = manifest["counts"]
    if set(counts) != {"movies", "catalogue", "users", "ratings"} or not all(
        _is_count(v) for v in counts.values()
    ):
        raise ArtifactError(f"{where}: 'counts' must hold movies, catalogue, users, ratings >= 0")
    if not counts["movies"] <= counts["catalogue"] or counts["movies"] < 1:
        raise ArtifactError(f"{where}: 'counts' has no indexed movie or more than the catalogue")
    if not 1 <= manifest["dim"] <= MAX_DIM:
        raise ArtifactError(f"{where}: dim {manifest['dim']} outside 1..{MAX_DIM}")
    files = manifest["files"]
    for name in DATA_FILES:
        entry = files.get(name)
        if (
            not isinstance(entry, dict)
            or not _is_count(entry.get("bytes"))
            or not isinstance(entry.get("sha256"), str)
        ):
            raise ArtifactError(f"{where}: no size and checksum recorded for {name}")
    for name, limit in _size_limits(counts, manifest["dim"]).items():
        if files[name]["bytes"] > limit:
            raise ArtifactError(
                f"{where}: {name} is {files[name]['bytes']} bytes, more than the counts allow "
                f"({limit})"
            )
    if manifest["model_version"] != _model_version(manifest["created_at"], files):
        raise ArtifactError(f"{where}: model_version does not name the files it lists")
    return manifest, _parse_aggregation(manifest["aggregation"], where)


def _size_limits(counts: Mapping[str, int], dim: int) -> dict[str, int]:
    """The most bytes each file may hold given the manifest's counts: a generous bound that
    no honest file nears, checked before a byte is read."""
    n, slack = counts["movies"], 1 << 20
    return {
        MOVIES: counts["catalogue"] * _MAX_MOVIE_JSON_BYTES + slack,
        VECTORS: n * dim * 4 + slack,
        INDEX: n * ((dim + 1) * 8 + 4096) + slack,  # flat, fp16, or HNSW's links
        HISTORIES: counts["users"] * (4 * MAX_ID_CHARS + 16) + counts["ratings"] * 8 + slack,
    }


def _parse_aggregation(raw: Mapping[str, Any], where: Path) -> Aggregation:
    method = raw.get("method")
    cls = _AGGREGATIONS.get(method) if isinstance(method, str) else None
    if cls is None:
        raise ArtifactError(
            f"{where}: aggregation.method {method!r} is not one of {', '.join(_AGGREGATIONS)}"
        )
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    given = {k: v for k, v in raw.items() if k != "method"}
    if set(given) != set(fields):
        missing, extra = set(fields) - set(given), set(given) - set(fields)
        raise ArtifactError(
            f"{where}: aggregation {method!r} needs {', '.join(sorted(fields))}"
            + (f"; missing {', '.join(sorted(missing))}" if missing else "")
            + (f"; unknown {', '.join(sorted(extra))}" if extra else "")
        )
    for key, kind in fields.items():
        value = given[key]
        ok = (
            isinstance(value, bool)
            if kind == "bool"
            else isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value)
        )  # fmt: skip
        if not ok:
            raise ArtifactError(f"{where}: aggregation.{key} must be a finite {kind}")
    aggregation = cls(**given)
    if isinstance(aggregation, AlsAggregation) and (
        aggregation.regularization <= 0 or aggregation.alpha <= 0 or aggregation.inline_stars <= 0
    ):
        # regularization > 0 keeps the fold-in's system positive definite (solvable)
        raise ArtifactError(f"{where}: als needs regularization, alpha and inline_stars > 0")
    return aggregation


def _parse_npy(data: bytes | bytearray, where: Path) -> npt.NDArray[Any]:
    """An .npy file from memory, refusing a header whose shape the bytes do not hold
    (numpy's own reader allocates the claimed shape first) and anything pickled."""
    f = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(f)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }[version]
        shape, fortran, dtype = read_header(f, max_header_size=10_000)
    except (ValueError, KeyError, SyntaxError) as e:
        raise ArtifactError(f"{where}: not a valid .npy array ({e})") from None
    if dtype.hasobject or dtype.kind not in "fiuU" or fortran:
        raise ArtifactError(f"{where}: array of type {dtype} is not allowed here")
    if any(d < 0 for d in shape):
        raise ArtifactError(f"{where}: header claims a negative shape {shape}")
    count = math.prod(shape)
    offset = f.tell()
    if offset + count * dtype.itemsize != len(data):
        raise ArtifactError(f"{where}: header claims shape {shape}, the file holds other sizes")
    array: npt.NDArray[Any] = np.frombuffer(data, dtype, count, offset).reshape(shape)
    return array


def _parse_npz(data: bytes | bytearray, where: Path) -> dict[str, npt.NDArray[Any]]:
    """The histories' .npz from memory: stored (uncompressed) members only, exactly the
    expected ones, each parsed as a bounded .npy."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            members = z.infolist()
            names = sorted(m.filename for m in members)
            if names != sorted(f"{a}.npy" for a in HISTORY_ARRAYS):
                raise ArtifactError(f"{where}: holds {names}, expected {list(HISTORY_ARRAYS)}")
            arrays = {}
            for m in members:
                if m.compress_type != zipfile.ZIP_STORED or m.file_size > len(data):
                    raise ArtifactError(f"{where}: {m.filename} is compressed or oversized")
                arrays[m.filename[:-4]] = _parse_npy(z.read(m), where / m.filename)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as e:
        raise ArtifactError(f"{where}: not a valid .npz ({e})") from None
    return arrays


_faiss_limit = threading.Lock()


def _parse_index(data: bytes | bytearray, where: Path) -> faiss.Index:
    """A FAISS index from memory, with FAISS's own cap on any vector it reads set to the
    file's size: a header claiming more cannot make it allocate more than the file holds."""
    with _faiss_limit:  # the cap is process-wide
        previous = faiss.get_deserialization_vector_byte_limit()
        faiss.set_deserialization_vector_byte_limit(len(data))
        try:
            index = faiss.deserialize_index(np.frombuffer(data, np.uint8))
        except RuntimeError as e:
            reason = str(e).strip().splitlines()[-1][:200]
            raise ArtifactError(f"{where}: not a readable FAISS index ({reason})") from None
        finally:
            faiss.set_deserialization_vector_byte_limit(previous)
    return index


def _check_catalogue(catalogue: Sequence[Movie], kind: IdKind, where: str) -> None:
    ids = set()
    for m in catalogue:
        if kind == "int":
            ok = isinstance(m.movie_id, int) and not isinstance(m.movie_id, bool)
        else:
            ok = isinstance(m.movie_id, str) and len(m.movie_id) > 0
        if not ok or as_key(m.movie_id, kind) != m.movie_id:
            raise ArtifactError(f"{where}: movie id {m.movie_id!r:.80} is not a valid {kind} id")
        if m.year is not None and not MIN_YEAR <= m.year <= MAX_YEAR:
            raise ArtifactError(f"{where}: movie {m.movie_id!r}: year {m.year} is not plausible")
        if m.movie_id in ids:
            raise ArtifactError(f"{where}: movie id {m.movie_id!r} appears twice")
        ids.add(m.movie_id)


def _check_arrays(
    vectors: npt.NDArray[Any],
    index: faiss.Index,
    histories: Histories,
    n: int,
    aggregation: Aggregation,
    user_kind: str,
    where: str,
) -> None:
    """What the vectors, index and histories must satisfy, for the writer and the reader."""

    def fail(message: str) -> None:
        raise ArtifactError(f"{where}{message}")

    if vectors.dtype != np.float32 or vectors.ndim != 2 or vectors.shape[0] != n:
        fail(f"vectors: expected float32 ({n}, dim), got {vectors.dtype} {vectors.shape}")
    if not _all_finite(vectors):
        fail("vectors: not all finite (NaN or infinity)")
    facts = _index_facts(index)
    if facts["type"] not in INDEX_TYPES.values() or facts["metric"] != "inner_product":
        fail(f"index: must be an inner-product {', '.join(INDEX_TYPES.values())}, got {facts}")
    append_one = isinstance(aggregation, MeanAggregation) and aggregation.append_one
    if index.ntotal != n or index.d != vectors.shape[1] + append_one:
        fail(f"index: {index.ntotal} x {index.d} for {n} movies of dim {vectors.shape[1]}")
    _check_index_parts(faiss.downcast_index(index), fail)
    if not _all_finite(_stored_vectors(index)):
        fail("index: not all stored vectors are finite")
    h = histories
    if id_kind(h.user_ids) != user_kind or (
        user_kind == "int" and h.user_ids.dtype != np.int64
    ):  # fmt: skip
        fail(f"histories: user_ids of type {h.user_ids.dtype} are not {user_kind} ids")
    if user_kind == "str" and h.user_ids.dtype.itemsize > 4 * MAX_ID_CHARS:
        fail(f"histories: user ids longer than {MAX_ID_CHARS} characters")
    if (h.indptr.dtype.str, h.rows.dtype.str, h.ratings.dtype.str) != ("<i8", "<i4", "<f4"):
        fail("histories: indptr, rows and ratings must be int64, int32 and float32")
    if h.user_ids.ndim != 1 or h.indptr.ndim != 1 or h.rows.ndim != 1 or h.ratings.ndim != 1:
        fail("histories: arrays must be 1-d")
    if len(h.indptr) != len(h.user_ids) + 1 or h.indptr[0] != 0 or h.indptr[-1] != len(h.rows):
        fail("histories: indptr does not match user_ids and rows")
    if len(h.ratings) != len(h.rows) or np.any(np.diff(h.indptr) < 0):
        fail("histories: inconsistent CSR arrays")
    if len(h.rows) and (h.rows.min() < 0 or h.rows.max() >= n):
        fail("histories: a row is outside the catalogue")
    if not _all_finite(h.ratings):
        fail("histories: ratings are not all finite")
    if len(h.user_ids) > 1 and not np.all(h.user_ids[1:] > h.user_ids[:-1]):
        fail("histories: user_ids are not unique and increasing")
    if len(h.rows) > 1:  # each user's rows ascending (by_row)
        starts = np.zeros(len(h.rows), bool)
        bounds = h.indptr[1:-1]
        starts[bounds[bounds < len(h.rows)]] = True  # a user's first entry may descend
        if not np.all((np.diff(h.rows) >= 0) | starts[1:]):
            fail("histories: a user's rows are not in ascending order")


def _check_index_parts(index: faiss.Index, fail: Callable[[str], None]) -> None:
    """What a FAISS file may set beyond its type: the encoding build_index uses, a flat
    inner-product storage under HNSW, and a search depth that bounds a search's cost."""
    if (
        isinstance(index, faiss.IndexScalarQuantizer)
        and index.sq.qtype != faiss.ScalarQuantizer.QT_fp16
    ):
        fail("index: a scalar quantizer must store float16")
    if isinstance(index, faiss.IndexHNSWFlat):
        storage = faiss.downcast_index(index.storage)
        if type(storage) not in (faiss.IndexFlatIP, faiss.IndexFlat) or storage.metric_type != (
            faiss.METRIC_INNER_PRODUCT
        ) or storage.ntotal != index.ntotal or storage.d != index.d:  # fmt: skip
            fail("index: an HNSW graph must store its vectors flat, by inner product")
        most = max(MAX_EF_SEARCH, index.ntotal)
        if not 1 <= index.hnsw.efSearch <= most:
            fail(f"index: HNSW efSearch {index.hnsw.efSearch} outside 1..{most}")


def _stored_vectors(index: faiss.Index) -> npt.NDArray[Any]:
    """The vectors the index scans, as stored (float32, or float16 for fp16), viewed in place
    (HNSW keeps them in a flat storage index)."""
    index = faiss.downcast_index(index)
    storage = faiss.downcast_index(index.storage) if hasattr(index, "storage") else index
    codes = faiss.rev_swig_ptr(storage.codes.data(), storage.codes.size())  # type: ignore[attr-defined]
    view: npt.NDArray[Any] = np.asarray(codes).view(
        np.float16 if isinstance(storage, faiss.IndexScalarQuantizer) else np.float32
    )
    return view


def _all_finite(a: npt.NDArray[Any], chunk: int = 1 << 22) -> bool:
    """np.isfinite(a).all() in slices, so a 1M-movie catalogue needs no full-size mask."""
    flat = a.reshape(-1)
    return all(np.isfinite(flat[i : i + chunk]).all() for i in range(0, len(flat), chunk))


# --- building the index ----------------------------------------------------------------------


def build_index(
    vectors: FloatArray,
    kind: str = "flat",
    hnsw_m: int = 64,
    ef_search: int = 512,
    ef_construction: int = 200,
) -> faiss.Index:
    """The inner-product index over ``vectors``: ``flat`` is exact (the default); ``fp16``
    scans half the bytes (vectors stored as float16: ~2x faster where the scan is memory
    bound, top-10 recall 0.996-1.0 measured); ``hnsw`` is an approximate graph for catalogues
    where a full scan is too slow (~1M movies), built with ``hnsw_m`` neighbours per movie
    and an ``ef_construction``-deep search for them. ``ef_search`` is stored in the index
    and is the server's default search depth."""
    d = vectors.shape[1]
    index: faiss.Index
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "fp16":
        index = faiss.IndexScalarQuantizer(
            d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
    elif kind == "hnsw":
        graph = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = ef_construction
        graph.hnsw.efSearch = ef_search
        # Keep the bottom layer's neighbour lists full instead of pruned to diverse ones: by
        # inner product the longest vectors win every list, and pruning left 72% of a trained
        # 1M-movie model with no link in (unreachable); full lists: 53%, recall@10 at
        # efSearch 1,024 0.953 -> 0.972. Same memory (the slots exist either way), build 1.7x.
        graph.keep_max_size_level0 = True  # type: ignore[attr-defined]  # missing from the stubs
        index = graph
    else:
        raise ValueError(f"index must be one of {', '.join(INDEX_TYPES)}, got {kind!r}")
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


# --- small helpers ---------------------------------------------------------------------------


def _index_facts(index: faiss.Index) -> dict[str, Any]:
    return {
        "type": type(faiss.downcast_index(index)).__name__,
        "metric": "inner_product" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "other",
        "dim": int(index.d),
        "ntotal": int(index.ntotal),
    }


def _model_version(created: str, files: Mapping[str, Any]) -> str:
    """'<created>-<digest of the file table>': the version names the exact content."""
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return f"{created}-{digest[:12]}"


def _movie_kind(catalogue: Sequence[Movie]) -> IdKind:
    return "str" if catalogue and isinstance(catalogue[0].movie_id, str) else "int"


def _movie_to_json(m: Movie) -> dict[str, Any]:
    return {"movie_id": m.movie_id, "title": m.title, "genres": list(m.genres), "year": m.year}


def _movie_from_json(d: dict[str, Any]) -> Movie:
    title, genres, year = d["title"], d["genres"], d["year"]
    if not isinstance(title, str) or not isinstance(genres, list):
        raise TypeError(f"movie {d.get('movie_id')!r}: title and genres must be text and a list")
    if not all(isinstance(g, str) for g in genres):
        raise TypeError(f"movie {d.get('movie_id')!r}: genres must be text")
    if year is not None and (not isinstance(year, int) or isinstance(year, bool)):
        raise TypeError(f"movie {d.get('movie_id')!r}: year must be an integer or null")
    return Movie(d["movie_id"], title, tuple(genres), year)


def _loads(raw: bytes | bytearray, where: Path) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{where}: not valid JSON ({e})") from None
    except RecursionError:
        raise ArtifactError(f"{where}: JSON nested too deeply") from None


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _name(kind: type) -> str:
    return {str: "string", dict: "JSON object", int: "integer"}.get(kind, kind.__name__)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _write_json_synced(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    for name in os.listdir(path):
        with open(path / name, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_abandoned(out: Path) -> None:
    """Delete temporary siblings of ``out`` left by exports that were killed: their names
    carry the writer's pid, and a pid that no longer runs will never finish them."""
    for tmp in out.parent.glob(f".{out.name}.*-*-*"):
        kind, _, rest = tmp.name[len(out.name) + 2 :].partition("-")
        pid = rest.partition("-")[0]
        if kind not in ("tmp", "old") or not pid.isdigit() or not tmp.is_dir():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(tmp, ignore_errors=True)
        except PermissionError:  # alive, someone else's
            pass


def _replace_dir(new: Path, out: Path) -> None:
    """Move the finished ``new`` to ``out``; a previous ``out`` is moved aside first and only
    deleted once the new one is in place."""
    if not out.exists():
        os.rename(new, out)
        return
    if not (out / MANIFEST).exists() and any(out.iterdir()):
        raise ArtifactError(f"{out}: exists and is not an artifact directory; refusing to replace")
    if _exchange(new, out):  # one atomic step: out is always a whole artifact
        shutil.rmtree(new, ignore_errors=True)  # now holds the previous artifact
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
    os.rename(out, old / out.name)  # out is briefly absent: a reload then keeps the old model
    os.rename(new, out)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories atomically (Linux renameat2 RENAME_EXCHANGE); False where the
    platform or filesystem cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result: int = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0
