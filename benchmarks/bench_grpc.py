"""Recommend over gRPC on loopback vs the transport floor of the same server, same run.

    python benchmarks/bench_grpc.py --synthetic 62423                # random 64-d catalogue
    python benchmarks/bench_grpc.py --synthetic 62423 --index fp16   # a float16 index
    python benchmarks/bench_grpc.py --artifacts artifacts/mls --processes 2

Starts ``movierec serve`` (one or ``--processes`` processes) on a free loopback port, then
runs a bounded number of calls from this process (grpc.aio, one channel per 4 in-flight
calls) at concurrency 1, 8 and 32, alternating two phases: ``grpc.health.v1.Health/Check``
(a trivial unary call through the same server, interceptor included: the floor) and
Recommend with an inline history. Prints QPS, p50 and p99 per phase, Recommend's ratios to
the floor, and the server's memory (RSS and PSS summed over its processes).

With ``--h2load`` the measured calls come from h2load (``apt install nghttp2-client``), a C
load generator that leaves the server the core a Python client holds on a 2-core machine; it
replays one request body and sees HTTP statuses only, so each phase's warm-up goes through
grpc.aio first, which fails on any status but OK.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2

from movierec.v1 import recommender_pb2 as pb

FLOOR = "/grpc.health.v1.Health/Check"
RECOMMEND = "/movierec.v1.RecommenderService/Recommend"


async def load(
    port: int, method: str, payloads: list[bytes], concurrency: int, calls: int
) -> tuple[float, np.ndarray]:
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


def h2load(
    port: int, method: str, payload: bytes, concurrency: int, calls: int
) -> tuple[float, np.ndarray]:
    """QPS and latencies (us) of ``calls`` unary calls from h2load, 4 streams per connection."""
    connections = max(1, concurrency // 4)
    with tempfile.TemporaryDirectory() as tmp:
        body, log = Path(tmp) / "body", Path(tmp) / "log"
        body.write_bytes(b"\0" + len(payload).to_bytes(4, "big") + payload)  # a gRPC frame
        out = subprocess.run(
            ["h2load", "-n", str(calls), "-c", str(connections), "-t", "1",
             "-m", str(concurrency // connections), "-d", str(body),
             "-H", "content-type: application/grpc", "-H", "te: trailers",
             "--log-file", str(log), f"http://127.0.0.1:{port}{method}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        if f"{calls} succeeded" not in out:
            raise RuntimeError(f"h2load: not every call succeeded:\n{out}")
        latencies = [int(line.split()[2]) for line in log.read_text().splitlines()]
    qps = re.search(r"([\d.]+) req/s", out)
    assert qps is not None, out
    return float(qps.group(1)), np.array(latencies, dtype=float)


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB summed over ``pid`` and its children (PSS splits shared pages)."""
    pids = [pid] + [
        int(p.name) for p in Path("/proc").iterdir()
        if p.name.isdigit() and _ppid(p) == pid
    ]  # fmt: skip
    rss = pss = 0
    for p in pids:
        for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss"):
                kib = int(value.split()[0])
                rss, pss = (rss + kib, pss) if key == "Rss" else (rss, pss + kib)
    return rss, pss


def _ppid(proc_dir: Path) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def write_synthetic(out: Path, n: int, kind: str) -> Path:
    from benchmarks.bench_core import synthetic_artifacts
    from movierec.artifacts import write_artifacts

    a = synthetic_artifacts(n, 64, kind)
    write_artifacts(out, movies=a.movies, vectors=a.vectors, index=a.index,
                    histories=a.histories, settings={"source": "synthetic"},
                    aggregation=a.aggregation)  # fmt: skip
    return out


def start_server(
    artifacts: Path, processes: int, workers: int | None = None
) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-m", "movierec", "serve", "--artifacts", str(artifacts),
           "--port", "0", "--processes", str(processes), "--max-inflight", "1000"]  # fmt: skip
    if workers is not None:
        cmd += ["--workers", str(workers)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if "movierec is serving" in line:
            port = int(line.split(" on ")[1].split()[0].rsplit(":", 1)[1].rstrip("."))
            return proc, port
    raise RuntimeError(f"server exited with {proc.wait()}")


async def bench(port: int, recommend: list[bytes], calls: int, use_h2load: bool) -> None:
    floor_payload = [health_pb2.HealthCheckRequest().SerializeToString()]
    print(f"{'conc':>4} {'rpc':>10} {'QPS':>8} {'p50 us':>8} {'p99 us':>8} | vs floor")
    for c in (1, 8, 32):
        floor: tuple[float, float] = (0.0, 0.0)
        for name, method, payloads in (("floor", FLOOR, floor_payload),
                                       ("recommend", RECOMMEND, recommend)):  # fmt: skip
            await load(port, method, payloads, c, min(200, calls))  # warm-up; raises if not OK
            if use_h2load:
                qps, lat = h2load(port, method, payloads[0], c, calls)
            else:
                qps, lat = await load(port, method, payloads, c, calls)
            p50, p99 = float(np.median(lat)), float(np.percentile(lat, 99))
            ratio = ""
            if name == "floor":
                floor = (qps, p50)
            else:
                ratio = f"p50 x{p50 / floor[1]:.2f}, QPS {qps / floor[0]:.0%}"
            print(f"{c:>4} {name:>10} {qps:>8.0f} {p50:>8.0f} {p99:>8.0f} | {ratio}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path)
    p.add_argument("--synthetic", type=int, default=62_423, help="catalogue size if no artifacts")
    p.add_argument("--index", default="flat", help="synthetic catalogue's index: flat, fp16, hnsw")
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--workers", type=int, help="serve's --workers (default: its own)")
    p.add_argument("--history", type=int, default=100, help="inline history length")
    p.add_argument("--calls", type=int, default=2000, help="calls per phase (bounded)")
    p.add_argument("--h2load", action="store_true", help="measure with h2load, not grpc.aio")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = args.artifacts or write_synthetic(Path(tmp) / "a", args.synthetic, args.index)
        from movierec.artifacts import read_manifest

        manifest = read_manifest(artifacts)
        ids = np.array([m["movie_id"] for m in _movies(artifacts)])
        rng = np.random.default_rng(0)
        payloads = [pb.RecommendRequest(movie_ids=rng.choice(ids, args.history, replace=False)
                                        .tolist(), k=10).SerializeToString()
                    for _ in range(64)]  # fmt: skip
        proc, port = start_server(artifacts, args.processes, args.workers)
        try:
            rss, pss = memory_kib(proc.pid)
            print(f"catalogue {manifest['counts']['movies']} x {manifest['dim']} "
                  f"({manifest['index']['type']}), history "
                  f"{args.history}, k 10, {args.calls} calls per phase, {args.processes} server "
                  f"process(es), --workers {args.workers or 'default'}, "
                  f"{'h2load' if args.h2load else 'grpc.aio'} client: "
                  f"RSS {rss / 1024:.0f} MiB, PSS {pss / 1024:.0f} MiB")  # fmt: skip
            asyncio.run(bench(port, payloads, args.calls, args.h2load))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)


def _movies(artifacts: Path) -> list[dict[str, object]]:
    import json

    movies: list[dict[str, object]] = json.loads((artifacts / "movies.json").read_text())
    return movies


if __name__ == "__main__":
    main()
