"""Recommend over gRPC on loopback vs a bare Echo served by the same server, same run.

    python benchmarks/bench_grpc.py --artifacts artifacts/mls      # a trained model
    python benchmarks/bench_grpc.py --synthetic 62423              # random 64-d catalogue

The server (this process) registers a bytes-in/bytes-out Echo beside RecommenderService; a
load generator in a separate process (grpc.aio, one channel per 4 in-flight calls) runs a
bounded number of calls at concurrency 1, 8 and 32, alternating Echo and Recommend phases.
Prints QPS, p50 and p99 per phase and Recommend's ratio to Echo.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import time
from pathlib import Path

import grpc
import numpy as np

from movierec.v1 import recommender_pb2 as pb
from server.app import build_server, load_recommender

ECHO = "/bench.Echo/Echo"
RECOMMEND = "/movierec.v1.RecommenderService/Recommend"


def echo_handler() -> grpc.GenericRpcHandler:
    identity = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
    return grpc.method_handlers_generic_handler("bench.Echo", {"Echo": identity})


async def load(port: int, method: str, payloads: list[bytes], concurrency: int,
               calls: int) -> tuple[float, np.ndarray]:  # fmt: skip
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}")
                for _ in range(max(1, concurrency // 4))]  # fmt: skip
    stubs = [c.unary_unary(method) for c in channels]
    latencies: list[float] = []
    counter = iter(range(calls))

    async def worker(w: int) -> None:
        stub = stubs[w % len(stubs)]
        for i in counter:
            t = time.perf_counter()
            await stub(payloads[i % len(payloads)], timeout=10)
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    wall = time.perf_counter() - start
    for c in channels:
        await c.close()
    return calls / wall, np.array(latencies) * 1e6


def client(port: int, payloads: list[bytes], calls: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    async def run() -> None:
        for c in (1, 8, 32):
            for name, method in (("echo", ECHO), ("recommend", RECOMMEND)):
                await load(port, method, payloads, c, min(200, calls))  # warm-up
                qps, lat = await load(port, method, payloads, c, calls)
                out.put((c, name, qps, float(np.median(lat)), float(np.percentile(lat, 99))))
        out.put(None)

    asyncio.run(run())


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path)
    p.add_argument("--synthetic", type=int, default=62_423, help="catalogue size if no artifacts")
    p.add_argument("--history", type=int, default=100, help="inline history length")
    p.add_argument("--calls", type=int, default=3000, help="calls per phase (bounded)")
    args = p.parse_args()
    if args.artifacts:
        recommender = load_recommender(args.artifacts)
    else:
        from benchmarks.bench_core import synthetic

        recommender = synthetic(args.synthetic, 64)
    ids = recommender.artifacts.movie_ids
    rng = np.random.default_rng(0)
    payloads = [pb.RecommendRequest(movie_ids=rng.choice(ids, args.history, replace=False).tolist(),
                                    k=10).SerializeToString() for _ in range(64)]  # fmt: skip
    running = await build_server(recommender, handlers=[echo_handler()])
    spawn = mp.get_context("spawn")
    queue: mp.Queue = spawn.Queue()  # type: ignore[type-arg]
    proc = spawn.Process(target=client, args=(running.port, payloads, args.calls, queue))
    proc.start()
    print(f"catalogue {recommender.num_movies} x {recommender.artifacts.vectors.shape[1]}, "
          f"history {args.history}, k 10, {args.calls} calls per phase")  # fmt: skip
    print(f"{'conc':>4} {'rpc':>10} {'QPS':>8} {'p50 us':>8} {'p99 us':>8} | vs echo")
    echo: dict[int, tuple[float, float]] = {}
    while (row := await asyncio.to_thread(queue.get)) is not None:
        c, name, qps, p50, p99 = row
        ratio = ""
        if name == "echo":
            echo[c] = (qps, p50)
        else:
            ratio = f"p50 x{p50 / echo[c][1]:.2f}, QPS {qps / echo[c][0]:.0%}"
        print(f"{c:>4} {name:>10} {qps:>8.0f} {p50:>8.0f} {p99:>8.0f} | {ratio}", flush=True)
    proc.join()
    await running.stop(None)


if __name__ == "__main__":
    asyncio.run(main())
