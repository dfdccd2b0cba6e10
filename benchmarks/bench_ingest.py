"""Ingestion in bounded memory: an interaction file read and turned into the training corpus,
with each step's time and peak memory, and the Parquet readers compared.

    python benchmarks/bench_ingest.py --generated 25m --workdir /tmp/ingest   # ~4 min to make
    python benchmarks/bench_ingest.py --data ../shared/data/ml-latest-small
    python benchmarks/bench_ingest.py --interactions log.parquet --readers
    pip install polars   # --readers only: a benchmark-only dependency, as gensim is for bench_train

``--generated`` writes the built-in generator's dataset in ml-25m's shape once into
``--workdir`` (ratings.csv + movies.csv, as ``bench_train.py --generated 25m`` trains on), the
same ratings as Parquet, and as Parquet with string ids (UUID users, SKU items). Every
measurement runs in a fresh process and reports that process's peak RSS (its VmHWM):

    corpus   trainer.dataset.load_dataset + trainer.corpus.build_corpus: what `movierec train`
             holds before training starts (``--pandas`` adds the DataFrame path the .dat
             layouts still take: trainer.movielens.load, then the same corpus)
    readers  the four columns of a Parquet file into numpy arrays (codes for the ids): pyarrow
             (whole table; batches, as the trainer reads) and Polars (read_parquet; the
             streaming engine), each run once, in the same session
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

GENERATED = {"1m": (10_000, 4_000, 100), "25m": (165_000, 62_000, 160)}  # bench_train's


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generated", choices=GENERATED)
    p.add_argument("--workdir", type=Path, default=Path("artifacts/bench-ingest"))
    p.add_argument("--data", type=Path, help="a MovieLens folder")
    p.add_argument("--interactions", type=Path, help="an interactions file of your own")
    p.add_argument("--readers", action="store_true", help="compare the Parquet readers")
    p.add_argument("--pandas", action="store_true", help="also the DataFrame path")
    args = p.parse_args()
    if args.generated:
        folder, parquet, text_ids = _generate(args.generated, args.workdir)
        _corpus(["--data", str(folder)], f"{args.generated} MovieLens CSV folder")
        _corpus(["--interactions", str(parquet)], f"{args.generated} Parquet, integer ids")
        _corpus(["--interactions", str(text_ids)], f"{args.generated} Parquet, string ids")
        if args.pandas:
            _corpus(["--pandas", str(folder)], f"{args.generated} via pandas (DataFrame)")
        if args.readers:
            for file in (parquet, text_ids):
                for reader in READERS:
                    _run(["reader", reader, str(file)], f"{reader:16} {file.name}")
    for flag in ("data", "interactions"):
        if getattr(args, flag) is not None:
            _corpus([f"--{flag}", str(getattr(args, flag))], str(getattr(args, flag)))
            if args.readers and flag == "interactions":
                for reader in READERS:
                    _run(["reader", reader, str(args.interactions)], reader)


def _generate(size: str, workdir: Path) -> tuple[Path, Path, Path]:
    """The generated folder (made once), and its ratings as the two Parquet files."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from trainer.sample import make_sample

    folder = workdir / f"generated-{size}"
    parquet, text_ids = workdir / f"{size}.parquet", workdir / f"{size}-string-ids.parquet"
    start = time.perf_counter()
    if not (folder / "ratings.csv").exists():
        users, movies, mean = GENERATED[size]
        make_sample(seed=1, num_movies=movies, num_users=users, mean_ratings=mean).write(folder)
    if not text_ids.exists():
        table = pacsv.read_csv(folder / "ratings.csv")
        pq.write_table(table, parquet)
        rng = np.random.default_rng(0)
        user_id, movie_id = (table.column(c).to_numpy() for c in ("userId", "movieId"))
        uuids = [f"{rng.integers(2**62):016x}-{u:08d}-4c2a-9e1f" for u in range(user_id.max() + 1)]
        skus = [f"SKU-{m:06d}" for m in range(movie_id.max() + 1)]

        def text(codes: object, names: list[str]) -> pa.Array:
            indices = pa.array(np.asarray(codes, np.int32))
            return pa.DictionaryArray.from_arrays(indices, pa.array(names)).cast(pa.string())

        columns = {"visitor": text(user_id, uuids), "sku": text(movie_id, skus),
                   "timestamp": table.column("timestamp")}  # fmt: skip
        pq.write_table(pa.table(columns), text_ids)  # implicit: no rating column
        print(f"wrote {folder}, {parquet.name} and {text_ids.name} in "
              f"{time.perf_counter() - start:.0f}s")  # fmt: skip
    return folder, parquet, text_ids


def _corpus(source: list[str], label: str) -> None:
    _run(["corpus", *source], label)


def _run(command: list[str], label: str) -> None:
    """Run this file's ``child`` in a fresh process and print what it reports."""
    result = subprocess.run(
        [sys.executable, __file__, "--child", *command], stdout=subprocess.PIPE, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"{label}: failed ({result.returncode})")
    print(f"{label}: {result.stdout.strip()}", flush=True)


# --- in the child process ---------------------------------------------------------------


def child(argv: list[str]) -> None:
    what, *rest = argv
    if what == "corpus":
        flag, path = rest
        _child_corpus(flag, Path(path))
    else:
        READERS[rest[0]](Path(rest[1]))
    print(f", peak RSS {_peak_mib():,.0f} MiB")


def _peak_mib() -> float:
    """This process's own high-water mark (VmHWM). Not the parent's ru_maxrss of the child:
    Linux counts there what a forked child inherited from a parent holding a dataset."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def _child_corpus(flag: str, path: Path) -> None:
    from trainer.corpus import build_corpus
    from trainer.dataset import load_dataset

    start = time.perf_counter()
    if flag == "--pandas":
        from trainer.movielens import load

        data = load(path)
    elif flag == "--data":
        data = load_dataset(data=path)
    else:
        data = load_dataset(interactions=path)
    read = time.perf_counter() - start
    corpus = build_corpus(data, like_threshold=3.5, min_count=3)
    built = time.perf_counter() - start - read
    h = corpus.histories
    print(f"read {read:.1f}s + corpus {built:.1f}s: {h.num_ratings:,} ratings of "
          f"{len(h.user_ids):,} users, {len(corpus.movies):,} movies", end="")  # fmt: skip


def _arrow_codes(column):  # a pyarrow ChunkedArray -> numpy int32
    """Sorted-order int32 codes of an id column, pyarrow's way: hash it into a dictionary,
    sort the (small) dictionary, renumber."""
    import numpy as np
    import pyarrow as pa

    array = column.combine_chunks()
    encoded = array if pa.types.is_dictionary(array.type) else array.dictionary_encode()
    order = np.argsort(encoded.dictionary.to_numpy(zero_copy_only=False))
    rank = np.empty(len(order), np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return rank[encoded.indices.to_numpy()]


def _pyarrow_table(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = time.perf_counter()
    schema = pq.read_schema(path)
    text = [f.name for f in schema if pa.types.is_string(f.type)]
    table = pq.read_table(path, read_dictionary=text)
    names = table.column_names
    arrays = [_arrow_codes(table.column(c)) for c in names[:2]]
    arrays += [table.column(c).to_numpy() for c in names[2:]]
    del table
    print(f"{time.perf_counter() - start:.1f}s for {len(arrays[0]):,} rows", end="")


def _pyarrow_batches(path: Path) -> None:
    from trainer.interactions import read_interactions

    start = time.perf_counter()
    x = read_interactions(path)
    print(f"{time.perf_counter() - start:.1f}s for {len(x):,} rows", end="")


def _polars_arrays(frame):  # a polars DataFrame -> numpy arrays
    """Sorted-order int32 codes of the two id columns, Polars' way (sort the distinct ids,
    join them back: a dense rank of 25M strings took 83 s), and the other columns."""
    import polars as pl

    names = frame.columns
    arrays = []
    for c in names[:2]:
        distinct = frame.select(pl.col(c).unique().sort())
        distinct = distinct.with_columns(pl.int_range(pl.len(), dtype=pl.Int32).alias("code"))
        codes = frame.select(c).join(distinct, on=c, how="left", maintain_order="left")
        arrays.append(codes["code"].to_numpy())
    return arrays + [frame[c].to_numpy() for c in names[2:]]


def _polars_read(path: Path) -> None:
    import polars as pl

    start = time.perf_counter()
    frame = pl.read_parquet(path)
    arrays = _polars_arrays(frame)
    del frame
    print(f"{time.perf_counter() - start:.1f}s for {len(arrays[0]):,} rows", end="")


def _polars_streaming(path: Path) -> None:
    import polars as pl

    start = time.perf_counter()
    frame = pl.scan_parquet(path).collect(engine="streaming")
    arrays = _polars_arrays(frame)
    del frame
    print(f"{time.perf_counter() - start:.1f}s for {len(arrays[0]):,} rows", end="")


READERS = {
    "pyarrow table": _pyarrow_table,
    "pyarrow batches": _pyarrow_batches,
    "polars": _polars_read,
    "polars streaming": _polars_streaming,
}

if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2:])
    else:
        main()
