"""HNSW against exact search on a trained model: recall@10 and core latency, same run.

    python benchmarks/bench_ann.py --artifacts artifacts/mls
    python benchmarks/bench_ann.py --artifacts artifacts/25m --copies 16   # a ~1M catalogue

Random vectors are the worst case for a graph index (PERFORMANCE.md); trained embeddings are
clustered, so this measures on an exported model: its index vectors and its own users'
histories as queries (``Recommender.recommend``, watched movies excluded, k = 10). The exact
answer is the artifact's flat index. ``--copies N`` grows the catalogue to N near-copies of
every trained vector (each row plus Gaussian noise of a tenth of its norm), a stand-in for a
catalogue N times larger with the same structure; users' histories stay on the original rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import faiss
import numpy as np

from movierec.artifacts import Artifacts, Movie, build_index, read_artifacts
from server.recommender import Recommender

K = 10


def grown(artifacts: Artifacts, copies: int, seed: int = 0) -> tuple[Artifacts, np.ndarray]:
    """The artifact with ``copies`` noisy copies of every indexed vector (original first),
    and those index vectors."""
    exact = artifacts.index.reconstruct_n(0, artifacts.index.ntotal)
    if copies == 1:
        return artifacts, exact
    rng = np.random.default_rng(seed)
    scale = 0.1 * np.linalg.norm(exact, axis=1, keepdims=True) / np.sqrt(exact.shape[1])
    noisy = [exact + scale * rng.standard_normal(exact.shape, dtype=np.float32)
             for _ in range(copies - 1)]  # fmt: skip
    vectors = np.concatenate([exact, *noisy])
    n = len(vectors)
    movies = artifacts.movies + [Movie(int(i), f"Copy {i}", ()) for i in range(len(exact), n)]
    ids = np.concatenate([artifacts.movie_ids, np.arange(10**9, 10**9 + n - len(exact))])
    inputs = np.resize(artifacts.vectors, (n, artifacts.vectors.shape[1]))
    index = build_index(vectors, "flat")
    return dataclasses.replace(artifacts, movies=movies, movie_ids=ids, vectors=inputs,
                               index=index), vectors  # fmt: skip


def top(rec: Recommender, user: int) -> list[int]:
    return [s.movie.movie_id for s in rec.recommend(user, K).items]


def latency(rec: Recommender, users: np.ndarray) -> np.ndarray:
    out = np.empty(len(users))
    for i, user in enumerate(users):
        t = time.perf_counter()
        rec.recommend(int(user), K)
        out[i] = time.perf_counter() - t
    return out * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, required=True, help="a model exported with flat")
    p.add_argument("--copies", type=int, default=1)
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--ef", default="32,64,128,256,512")
    p.add_argument("--hnsw-m", type=int, default=32)
    args = p.parse_args()
    faiss.omp_set_num_threads(1)  # searches run on one thread, as in the server
    artifacts, vectors = grown(read_artifacts(args.artifacts), args.copies)
    users = np.random.default_rng(1).choice(artifacts.histories.user_ids, args.users, False)
    exact = Recommender(artifacts)
    truth = {int(u): set(top(exact, int(u))) for u in users}
    floor = latency(exact, users)
    faiss.omp_set_num_threads(0)
    start = time.perf_counter()
    graph = build_index(vectors, "hnsw", hnsw_m=args.hnsw_m)
    built = time.perf_counter() - start
    faiss.omp_set_num_threads(1)
    print(f"{len(vectors):,} movies x {vectors.shape[1]}, {args.users} users; HNSW M={args.hnsw_m} "
          f"built in {built:.0f}s; exact core p50 {np.median(floor):.0f} us")  # fmt: skip
    print(f"{'efSearch':>8} {'recall@10':>9} {'core p50 us':>11} {'p99':>7} {'vs exact':>8}")
    for ef in map(int, args.ef.split(",")):
        faiss.downcast_index(graph).hnsw.efSearch = ef
        rec = Recommender(dataclasses.replace(artifacts, index=graph))
        recall = np.mean([len(truth[int(u)] & set(top(rec, int(u)))) / K for u in users])
        took = latency(rec, users)
        print(f"{ef:>8} {recall:>9.4f} {np.median(took):>11.0f} {np.percentile(took, 99):>7.0f} "
              f"{np.median(took) / np.median(floor):>8.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
