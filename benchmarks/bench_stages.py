"""Where a Recommend's time goes beyond the transport, stage by stage, in-process.

    python benchmarks/bench_stages.py --artifacts artifacts/mls

Each stage of the server's path for a 100-movie inline history (k 10) is timed alone, with a
16 MB buffer touched between calls so that caches are as cold as grpc's own work between two
calls leaves them (hot loops measure the code at 2-3x its speed in the server). Median us.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

from movierec.v1 import recommender_pb2 as pb
from server.app import load_recommender
from server.observability import Metrics
from server.service import _request
from server.wire import Encoder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, required=True)
    args = p.parse_args()
    faiss.omp_set_num_threads(1)
    rec = load_recommender(args.artifacts)
    wire, metrics = Encoder(rec.model_version), Metrics()
    rng = np.random.default_rng(1)
    ids = rec.artifacts.movie_ids
    messages = [pb.RecommendRequest(movie_ids=rng.choice(ids, 100, replace=False).tolist(), k=10)
                for _ in range(50)]  # fmt: skip
    bodies = [m.SerializeToString() for m in messages]
    requests = [_request(m) for m in messages]
    answers = [rec.recommend(r) for r in requests]
    plans = [rec._plan(r, ()) for r in requests]
    access = logging.getLogger("bench.access")
    access.addHandler(logging.NullHandler())
    access.propagate, access.level = False, logging.INFO
    junk = np.ones(4 << 20, np.float32)

    def timed(fn: Callable[[int], object], repeats: int = 2000) -> float:
        times = []
        for i in range(repeats):
            junk[::16] += 1  # what the rest of the server does to the caches between calls
            t = time.perf_counter()
            fn(i % len(messages))
            times.append(time.perf_counter() - t)
        return float(np.median(times)) * 1e6

    def search(i: int) -> object:
        plan = plans[i]
        return rec.artifacts.index.search(plan.query, 10 + len(plan.excluded))

    stages: dict[str, Callable[[int], object]] = {
        "decode the request (protobuf)": lambda i: pb.RecommendRequest.FromString(bodies[i]),
        "the core's Request from it": lambda i: _request(messages[i]),
        "the core: plan, search, answer": lambda i: rec.recommend(requests[i]),
        "  of which the FAISS search": search,
        "encode the response (server.wire)": lambda i: wire.recommend(answers[i]),
        "metrics": lambda i: metrics.observe("/x/Recommend", "OK", 0.001),
        "an access log record": lambda i: access.info("%s %s %.2fms", "/x", "OK", 1.0),
    }
    print(f"{rec.num_movies} movies x {rec.artifacts.index.d}, history 100, k 10:")
    for name, fn in stages.items():
        print(f"  {name:36} {timed(fn):7.1f} us")


if __name__ == "__main__":
    main()
