"""Core recommend latency vs raw FAISS search of the same query, measured in the same run.

    python benchmarks/bench_core.py            # 9.7k, 62k and 1M movies, d 64/128
    python benchmarks/bench_core.py --quick    # skip the 1M catalogue
    python benchmarks/bench_core.py --index fp16   # the same against a float16 index

For each catalogue size, dimension and history length: the median and p99 of
``Recommender.recommend`` with an inline history (aggregate the history, search with the
watched movies excluded, build results) against ``IndexFlatIP.search`` of a query vector for
the same k with no exclusion (the floor), and their ratio. Vectors are synthetic (random unit rows);
one FAISS thread, as the server runs.
"""

from __future__ import annotations

import argparse
import time

import faiss
import numpy as np

from movierec.artifacts import (
    INDEX_TYPES,
    Artifacts,
    Histories,
    MeanAggregation,
    Movie,
    build_index,
)
from server.recommender import Recommender, Request

K = 10


def synthetic_artifacts(n: int, d: int, kind: str = "flat", seed: int = 0) -> Artifacts:
    """A catalogue of ``n`` random unit vectors, indexed as ``kind``, with no users."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, d), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = build_index(vectors, kind)
    movies = [Movie(i + 1, f"Movie {i + 1} (2000)", ("Drama",), 2000) for i in range(n)]
    empty = Histories(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int32),
                      np.zeros(0, np.float32))  # fmt: skip
    manifest = {"model_version": "bench", "ids": {"users": "int", "movies": "int"}}
    aggregation = MeanAggregation(like_threshold=3.5, append_one=False)
    ids = np.arange(1, n + 1, dtype=np.int64)
    return Artifacts(manifest, aggregation, movies, [], ids, vectors, index, empty)


def timed(fn: object, repeats: int) -> np.ndarray:
    out = np.empty(repeats)
    for i in range(repeats):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        out[i] = time.perf_counter() - t
    return out * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="skip the 1M-movie catalogue")
    p.add_argument("--index", default="flat", choices=list(INDEX_TYPES), help="index kind")
    args = p.parse_args()
    faiss.omp_set_num_threads(1)
    sizes = [9_742, 62_423] + ([] if args.quick else [1_000_000])
    print(f"{'movies':>9} {'d':>4} {'history':>7} | {'core p50 us':>11} {'p99':>7} | "
          f"{'faiss p50 us':>12} {'p99':>7} | {'ratio p50':>9}")  # fmt: skip
    for n in sizes:
        for d in (64, 128):
            rec = Recommender(synthetic_artifacts(n, d, args.index))
            rng = np.random.default_rng(1)
            repeats = 300 if n < 100_000 else 15
            for h in (20, 200, 2000):
                request = Request(movies=tuple((rng.choice(n, h, replace=False) + 1).tolist()), k=K)
                query = rng.standard_normal((1, d), dtype=np.float32)
                index = rec.artifacts.index
                for _ in range(3):  # warm caches
                    rec.recommend(request)
                    index.search(query, K)
                core = timed(lambda r=rec, q=request: r.recommend(q), repeats)
                raw = timed(lambda i=index, q=query: i.search(q, K), repeats)
                c50, r50 = np.median(core), np.median(raw)
                print(f"{n:>9} {d:>4} {h:>7} | {c50:>11.0f} {np.percentile(core, 99):>7.0f} | "
                      f"{r50:>12.0f} {np.percentile(raw, 99):>7.0f} | {c50 / r50:>9.2f}",
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
