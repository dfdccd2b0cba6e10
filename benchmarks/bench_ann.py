"""HNSW against exact search on a trained model: recall@10 and core latency, same run.

    python benchmarks/bench_ann.py --artifacts artifacts/mls

Random vectors are the worst case for a graph index (PERFORMANCE.md); trained embeddings are
clustered, so this measures on an exported model: its index vectors and its own users'
histories as queries (``Recommender.recommend``, watched movies excluded, k = 10). The exact
answer is the artifact's flat index.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import faiss
import numpy as np

from movierec.artifacts import build_index, read_artifacts
from server.recommender import Recommender
from trainer.config import TrainConfig

K = 10


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
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--ef", default="64,128,256,512,1024")
    p.add_argument("--hnsw-m", type=int, default=TrainConfig.hnsw_m)
    p.add_argument("--ef-construction", type=int, default=TrainConfig.ef_construction)
    args = p.parse_args()
    faiss.omp_set_num_threads(1)  # searches run on one thread, as in the server
    artifacts = read_artifacts(args.artifacts)
    vectors = artifacts.index.reconstruct_n(0, artifacts.index.ntotal)
    users = np.random.default_rng(1).choice(artifacts.histories.user_ids, args.users, False)
    exact = Recommender(artifacts)
    truth = {int(u): set(top(exact, int(u))) for u in users}
    floor = latency(exact, users)
    faiss.omp_set_num_threads(os.cpu_count() or 1)  # the build may use every core
    start = time.perf_counter()
    graph = build_index(vectors, "hnsw", hnsw_m=args.hnsw_m, ef_construction=args.ef_construction)
    built = time.perf_counter() - start
    faiss.omp_set_num_threads(1)
    print(f"{len(vectors):,} movies x {vectors.shape[1]}, {args.users} users; HNSW M={args.hnsw_m} "
          f"efConstruction {args.ef_construction} "
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
