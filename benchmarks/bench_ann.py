"""HNSW against exact search on a trained model: recall@10 and core latency, same run.

    python benchmarks/bench_ann.py --artifacts artifacts/mls

    # a trained 1M-movie model: generate (~35 s with the CSV), train (~9 min), measure
    python benchmarks/bench_ann.py --generate /tmp/ann/data
    movierec train --data /tmp/ann/data --out /tmp/ann/model --dim 64 --epochs 6 --lr 0.02 \
        --min-count 0
    python benchmarks/bench_ann.py --artifacts /tmp/ann/model --ef 128,256,512,1024,2048,4096

Random vectors are the worst case for a graph index (PERFORMANCE.md); trained embeddings are
clustered, so this measures on an exported model: its index vectors and its own users'
histories as queries (``Recommender.recommend``, watched movies excluded, k = 10). The exact
answer is the artifact's flat index. Each efSearch row times HNSW and exact in alternating
blocks of 25 users, so the ratio holds on a machine whose load swings. ``--generate`` writes
``trainer.sample.make_clustered_sample``'s catalogue (1M movies in 5,000 taste clusters,
200k users, ~8.8M ratings) in the MovieLens CSV layout.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import time
from pathlib import Path

import faiss
import numpy as np

from movierec.artifacts import build_index, read_artifacts
from server.recommender import Recommender, Request
from trainer.config import TrainConfig

K = 10


def top(rec: Recommender, user: int) -> list[int]:
    return [int(s.movie.movie_id) for s in rec.recommend(Request(user=user, k=K)).items]


def timed(rec: Recommender, user: int) -> float:
    t = time.perf_counter()
    rec.recommend(Request(user=user, k=K))
    return (time.perf_counter() - t) * 1e6


def paired(
    a: Recommender, b: Recommender, users: np.ndarray, block: int = 25
) -> tuple[np.ndarray, np.ndarray]:
    """Microseconds per Recommend of ``a`` and of ``b``, alternating blocks of ``block``
    users: both see the same load, and HNSW's walks do not each start right after an exact
    scan has swept the cache (user by user, every walk started cold after a 260 MB scan)."""
    out = np.empty((2, len(users)))
    for s in range(0, len(users), block):
        for row, rec in enumerate((a, b)):
            for i, user in enumerate(users[s : s + block].tolist(), s):
                out[row, i] = timed(rec, user)
    return out[0], out[1]


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 1024


def generate(folder: Path, seed: int, movies: int, users: int, mean: int) -> None:
    from trainer.sample import make_clustered_sample

    start = time.perf_counter()
    sample = make_clustered_sample(seed, movies, users, mean)
    made = time.perf_counter() - start
    sample.write(folder)
    written = time.perf_counter() - start - made
    r = sample.ratings
    liked = np.bincount(r["movie_id"][r["rating"] >= 3.5], minlength=movies + 1)[1:]
    print(f"{len(r):,} ratings, {len(np.unique(r['user_id'])):,} users, {movies:,} movies "
          f"({np.mean(liked == 0):.1%} with no liked rating) generated in {made:.1f}s, "
          f"written to {folder} in {written:.1f}s; peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, help="a model exported with flat")
    p.add_argument("--generate", type=Path, metavar="DIR", help="write the clustered dataset")
    p.add_argument("--seed", type=int, default=0, help="--generate")
    p.add_argument("--movies", type=int, default=1_000_000, help="--generate")
    p.add_argument("--num-users", type=int, default=200_000, help="--generate")
    p.add_argument("--mean-ratings", type=int, default=50, help="--generate")
    p.add_argument("--users", type=int, default=300, help="query users")
    p.add_argument("--ef", default="64,128,256,512,1024")
    p.add_argument("--hnsw-m", type=int, default=TrainConfig.hnsw_m)
    p.add_argument("--ef-construction", type=int, default=TrainConfig.ef_construction)
    args = p.parse_args()
    if args.generate:
        generate(args.generate, args.seed, args.movies, args.num_users, args.mean_ratings)
        return
    if args.artifacts is None:
        p.error("give --artifacts (or --generate)")
    faiss.omp_set_num_threads(1)  # searches run on one thread, as in the server
    artifacts = read_artifacts(args.artifacts)
    vectors = artifacts.index.reconstruct_n(0, artifacts.index.ntotal)
    users = np.random.default_rng(1).choice(artifacts.histories.user_ids, args.users, False)
    exact = Recommender(artifacts)
    truth = {u: set(top(exact, u)) for u in users.tolist()}
    faiss.omp_set_num_threads(os.cpu_count() or 1)  # the build may use every core
    before = rss_mib()
    start = time.perf_counter()
    graph = build_index(vectors, "hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
    built = time.perf_counter() - start
    grew = rss_mib() - before
    faiss.omp_set_num_threads(1)
    flat_mib = artifacts.index.ntotal * artifacts.index.d * 4 / 2**20
    print(f"{len(vectors):,} movies x {vectors.shape[1]}, {args.users} users; HNSW M={args.hnsw_m} "
          f"efConstruction {args.ef_construction} built in {built:.0f}s, "
          f"RSS +{grew:.0f} MiB (flat index: {flat_mib:.0f} MiB)")  # fmt: skip
    print(f"{'efSearch':>8} {'recall@10':>9} {'p50 us':>8} {'p99 us':>8} "
          f"{'exact p50':>9} {'exact p99':>9} {'p50 ratio':>9}")  # fmt: skip
    for ef in map(int, args.ef.split(",")):
        faiss.downcast_index(graph).hnsw.efSearch = ef
        rec = Recommender(dataclasses.replace(artifacts, index=graph))
        recall = np.mean([len(truth[u] & set(top(rec, u))) / K for u in users.tolist()])
        took, floor = paired(rec, exact, users)
        print(f"{ef:>8} {recall:>9.4f} {np.median(took):>8.0f} {np.percentile(took, 99):>8.0f} "
              f"{np.median(floor):>9.0f} {np.percentile(floor, 99):>9.0f} "
              f"{np.median(took) / np.median(floor):>9.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
