"""What the recommendation service's features cost, against a plain Recommend, same run.

    python benchmarks/bench_service.py --split ../shared/eval/ml-latest-small
    python benchmarks/bench_service.py --artifacts artifacts/mls       # skip training

1. Over gRPC (a real `movierec serve` with its default SQLite event store, h2load when
   installed, else grpc.aio at concurrency 1): a known user's plain Recommend, the same with
   a typical filter (one genre), with 50 recorded events, and an inline history of 100.
2. In-process: a batch of 32 requests in one call against 32 calls; filters of decreasing
   selectivity scored directly against the FAISS selector (the crossover behind
   search.DIRECT_SHARE).
3. Diversity on the split's test users: NDCG@10, Recall@20 and intra-list distance (mean
   1 - cosine between the top 10's vectors) at several settings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from movierec.client import Client, event, make_filter
from movierec.v1 import recommender_pb2 as pb
from server.app import load_recommender
from server.catalogue import Filter
from server.recommender import Recommender, Request
from server.search import Searcher


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median microseconds of ``fn``."""
    for _ in range(min(20, repeats)):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return float(np.median(out)) * 1e6


# --- 1. over gRPC ----------------------------------------------------------------------------


def grpc_costs(artifacts: Path, calls: int) -> None:
    rec = load_recommender(artifacts)
    user = int(rec.artifacts.histories.user_ids[0])
    genre = max(rec.catalogue.genres, key=lambda g: int(rec.catalogue.allowed(
        Filter(genres_any=(g,))).sum()))  # type: ignore[union-attr]  # fmt: skip
    movies = rec.artifacts.movie_ids.tolist()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "movierec", "serve", "--artifacts", str(artifacts), "--port",
             str(port), "--events", f"sqlite:///{tmp}/events.sqlite3", "--max-inflight", "1000"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            if "movierec is serving" in line:
                break
        try:
            with Client(f"127.0.0.1:{port}") as c:  # 50 events for a second user
                events = [event("events-user", int(m), "watch") for m in rng.choice(movies, 50)]
                c.record_events(events)
            cases = {
                "plain (known user)": pb.RecommendRequest(user_id=user, k=10),
                f"filter (genre {genre})": pb.RecommendRequest(user_id=user, k=10,
                                                               filter=make_filter([genre])),
                "50 recorded events": pb.RecommendRequest(user_key="events-user", k=10),
                "inline history of 100": pb.RecommendRequest(
                    movie_ids=rng.choice(movies, 100, replace=False).tolist(), k=10),
            }  # fmt: skip
            print(f"Recommend over gRPC, concurrency 1, {calls} calls each "
                  f"({'h2load' if shutil.which('h2load') else 'grpc.aio'} client):")  # fmt: skip
            base = None
            for name, request in cases.items():
                p50 = _p50_over_grpc(port, request.SerializeToString(), calls)
                base = base or p50
                print(f"  {name:28} p50 {p50:7.0f} us   x{p50 / base:.2f}")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def _p50_over_grpc(port: int, payload: bytes, calls: int) -> float:
    method = "/movierec.v1.RecommenderService/Recommend"
    if shutil.which("h2load"):
        from benchmarks.bench_grpc import h2load

        h2load(port, method, payload, 1, min(200, calls))  # warm-up
        return float(np.median(h2load(port, method, payload, 1, calls)[1]))
    from benchmarks.bench_grpc import load

    latencies = asyncio.run(load(port, method, [payload], 1, calls))[1]
    return float(np.median(latencies))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- 2. in-process ---------------------------------------------------------------------------


def batch_and_filters(rec: Recommender) -> None:
    users = rec.artifacts.histories.user_ids[:32].tolist()
    requests = [Request(user=u) for u in users]
    singles = timed(lambda: [rec.recommend(r) for r in requests], 30)
    batch = timed(lambda: rec.recommend_batch(requests, [()] * len(requests)), 30)
    print(
        f"32 requests: one by one {singles:.0f} us, as one batch {batch:.0f} us "
        f"(x{batch / singles:.2f})"
    )
    searcher: Searcher = rec._searcher
    n = searcher.n
    query = rec._query.vector(rec._history(requests[0], ())[0])
    none = np.zeros(0, np.int64)
    rng = np.random.default_rng(0)
    print(f"a filter passing a share of the {n} movies: scored directly vs the FAISS selector")
    for share in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5):
        mask = np.zeros(n, bool)
        mask[rng.choice(n, max(10, int(n * share)), replace=False)] = True
        rows = np.flatnonzero(mask)
        direct = timed(lambda rows=rows: searcher._score_directly(query, 10, rows), 200)
        bitmap = np.packbits(mask, bitorder="little")

        def selector(bitmap: np.ndarray = bitmap) -> None:
            import faiss

            sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmap))
            searcher.index.search(query, 10, params=searcher._params(10, sel))

        through = timed(selector, 200)
        print(f"  {share:6.1%}: direct {direct:7.0f} us, selector {through:7.0f} us")
    del none


# --- 3. diversity ----------------------------------------------------------------------------


def diversity(rec: Recommender, test: Path) -> None:
    from trainer.evaluate import ndcg_at, recall_at, relevant_sets
    from trainer.movielens import read_ratings

    relevant = relevant_sets(read_ratings(test))
    unit = rec.artifacts.vectors / np.linalg.norm(rec.artifacts.vectors, axis=1, keepdims=True)
    print(f"diversity on {len(relevant)} test users (intra-list distance: mean 1 - cosine "
          "within the top 10):")  # fmt: skip
    for setting in (0.0, 0.1, 0.2, 0.3, 0.5):
        ndcg, recall, spread = [], [], []
        for user, rel in relevant.items():
            items = rec.recommend(Request(user=user, k=20, diversity=setting)).items
            ranked = [s.movie.movie_id for s in items]
            ndcg.append(ndcg_at(ranked, rel, 10))
            recall.append(recall_at(ranked, rel, 20))
            rows = [rec.catalogue.row_of(m) for m in ranked[:10]]
            sims = unit[rows] @ unit[rows].T
            spread.append(1 - sims[np.triu_indices(len(rows), 1)].mean())
        print(f"  diversity {setting:.1f}: NDCG@10 {np.mean(ndcg):.4f}  Recall@20 "
              f"{np.mean(recall):.4f}  intra-list distance {np.mean(spread):.3f}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", type=Path, help="a split folder (train/ + test.csv): train first")
    p.add_argument("--artifacts", type=Path, help="or an artifact directory (no diversity)")
    p.add_argument("--calls", type=int, default=3000, help="calls per gRPC case")
    args = p.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)  # as the server runs it
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = args.artifacts
        if artifacts is None:
            from trainer.config import TrainConfig
            from trainer.pipeline import run_training

            artifacts = Path(tmp) / "a"
            run_training(artifacts, TrainConfig(), data=args.split / "train", show_progress=False)
        rec = load_recommender(artifacts)
        grpc_costs(artifacts, args.calls)
        batch_and_filters(rec)
        if args.split is not None:
            diversity(rec, args.split / "test.csv")
        print(json.dumps({"model": rec.model_version}))


if __name__ == "__main__":
    main()
