"""Recommend's cost against its floor: every target of the serving issue, measured in one run,
ending in one summary table (what `make bench` prints last).

    python benchmarks/bench_targets.py --artifacts artifacts/mls --synthetic 62423

For each catalogue (a trained model, and a synthetic one of --synthetic movies x 64):

* floor: grpc.health.v1.Health/Check through the same server (guard included);
* FAISS: one 1-query search of the index, one thread, in-process;
* Recommend: a 100-movie inline history, k 10, from h2load (a C load generator that leaves
  the server its cores), at concurrency 1 and 32, with the server's CPU time per call read
  from /proc;
* processes: QPS at concurrency 32 with 1 and with P = the CPUs this process may use;
* admission: 300 callers from 4 client processes against --max-inflight 8: how fast the
  refused calls come back.

Targets (issue 16 and 12.7): p50 at c=1 <= 1.3 x (floor p50 + FAISS p50); server CPU per
Recommend <= floor CPU + 1.5 x FAISS; QPS at c=32 >= 80% of cores / (floor CPU + FAISS);
P processes >= 0.8 x P x one process's QPS; median refusal <= 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from movierec.artifacts import read_artifacts
from movierec.cpus import available_cpus
from movierec.v1 import recommender_pb2 as pb

FLOOR = "/grpc.health.v1.Health/Check"
RECOMMEND = "/movierec.v1.RecommenderService/Recommend"


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int

    def cpu_seconds(self) -> float:
        """CPU time of the server and its children so far."""
        total = 0
        pids = [self.proc.pid, *map(int, os.popen(f"pgrep -P {self.proc.pid}").read().split())]
        for pid in pids:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def serve(artifacts: Path, *flags: str) -> Server:
    cmd = [sys.executable, "-m", "movierec", "serve", "--artifacts", str(artifacts), "--port",
           "0", "--events", "none", *flags]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    assert proc.stdout is not None
    for line in proc.stdout:
        if "movierec is serving" in line:
            port = int(re.search(r":(\d+)[. ]", line.split(" on ", 1)[1]).group(1))  # type: ignore[union-attr]
            return Server(proc, port)
    raise RuntimeError(f"server exited with {proc.wait()}")


def h2load(port: int, method: str, payload: bytes, concurrency: int, calls: int
           ) -> tuple[float, float]:  # fmt: skip
    """(QPS, p50 us) of ``calls`` unary calls."""
    connections = max(1, concurrency // 4)
    with tempfile.TemporaryDirectory() as tmp:
        body, log = Path(tmp) / "body", Path(tmp) / "log"
        body.write_bytes(b"\0" + len(payload).to_bytes(4, "big") + payload)
        out = subprocess.run(
            ["h2load", "-n", str(calls), "-c", str(connections), "-t", "1",
             "-m", str(max(1, concurrency // connections)), "-d", str(body),
             "-H", "content-type: application/grpc", "-H", "te: trailers",
             "--log-file", str(log), f"http://127.0.0.1:{port}{method}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        latencies = [int(line.split()[2]) for line in log.read_text().splitlines()]
    qps = float(re.search(r"([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    return qps, float(np.median(latencies))


def measure(server: Server, method: str, payload: bytes, concurrency: int, calls: int
            ) -> tuple[float, float, float]:  # fmt: skip
    """(QPS, p50 us, server CPU us per call)."""
    h2load(server.port, method, payload, concurrency, min(300, calls))  # warm-up
    before = server.cpu_seconds()
    qps, p50 = h2load(server.port, method, payload, concurrency, calls)
    return qps, p50, (server.cpu_seconds() - before) / calls * 1e6


def faiss_p50(artifacts: Path, query_ids: list[int]) -> float:
    """One 1-query search of the model's index (the query: the history's mean, as served)."""
    from server.recommender import Recommender, Request

    faiss.omp_set_num_threads(1)
    rec = Recommender(read_artifacts(artifacts))
    plan = rec._plan(Request(movies=tuple(query_ids)), ())
    assert plan.query is not None
    index = rec.artifacts.index
    times = []
    for _ in range(2000):
        t = time.perf_counter()
        index.search(plan.query, 10)
        times.append(time.perf_counter() - t)
    return float(np.median(times[200:])) * 1e6


ADMISSION_CLIENT = """
import asyncio, json, sys, time
import grpc
from movierec.v1 import recommender_pb2 as pb, recommender_pb2_grpc as pb_grpc
port, callers, payload = int(sys.argv[1]), int(sys.argv[2]), bytes.fromhex(sys.argv[3])
async def main():
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(8)]
    calls = [c.unary_unary("/movierec.v1.RecommenderService/Recommend") for c in channels]
    async def one(i):
        t = time.perf_counter()
        try:
            await calls[i % 8](payload, timeout=60)
            return "OK", time.perf_counter() - t
        except grpc.aio.AioRpcError as e:
            return e.code().name, time.perf_counter() - t
    print(json.dumps(await asyncio.gather(*(one(i) for i in range(callers)))))
asyncio.run(main())
"""


def admission(artifacts: Path, payload: bytes) -> tuple[float, float, int]:
    """(median refusal ms, median admitted ms, refused) for 300 callers in 4 processes."""
    server = serve(artifacts, "--max-inflight", "8")
    try:
        clients = [subprocess.Popen([sys.executable, "-c", ADMISSION_CLIENT, str(server.port),
                                     "75", payload.hex()], stdout=subprocess.PIPE, text=True)
                   for _ in range(4)]  # fmt: skip
        outcomes = [o for c in clients for o in json.loads(c.communicate(timeout=300)[0])]
    finally:
        server.stop()
    refused = [t for code, t in outcomes if code == "RESOURCE_EXHAUSTED"]
    admitted = [t for code, t in outcomes if code == "OK"]
    median = lambda xs: float(np.median(xs)) * 1e3 if xs else float("nan")  # noqa: E731
    return median(refused), median(admitted), len(refused)


def catalogue(artifacts: Path, name: str, calls: int, rows: list[tuple[str, str, bool]]) -> None:
    movies = json.loads((artifacts / "movies.json").read_text())
    n = json.loads((artifacts / "manifest.json").read_text())["counts"]["movies"]
    rng = np.random.default_rng(0)
    history = rng.choice([m["movie_id"] for m in movies[:n]], 100, replace=False).tolist()
    payload = pb.RecommendRequest(movie_ids=history, k=10).SerializeToString()
    floor_payload = b""
    raw = faiss_p50(artifacts, history)
    cpus = available_cpus()
    server = serve(artifacts, "--max-inflight", "1000")
    try:
        f_qps, f_p50, f_cpu = measure(server, FLOOR, floor_payload, 1, calls)
        r_qps, r_p50, r_cpu = measure(server, RECOMMEND, payload, 1, calls)
        _, _, f_cpu32 = measure(server, FLOOR, floor_payload, 32, calls)
        q32, _, r_cpu32 = measure(server, RECOMMEND, payload, 32, calls)
    finally:
        server.stop()
    print(f"{name}: FAISS {raw:.0f} us; floor c=1 p50 {f_p50:.0f} us, CPU {f_cpu:.0f} us; "
          f"Recommend c=1 p50 {r_p50:.0f} us, CPU {r_cpu:.0f} us; c=32 {q32:.0f} QPS",
          flush=True)  # fmt: skip
    limit = 1e6 / (f_cpu32 + raw)  # one core, each call the floor's CPU plus one search
    many = serve(artifacts, "--max-inflight", "1000", "--processes", str(cpus))
    try:
        qp, _, _ = measure(many, RECOMMEND, payload, 32, calls)
    finally:
        many.stop()
    rows += [
        (f"{name}: c=1 p50 / (floor p50 + FAISS)", f"{r_p50 / (f_p50 + raw):.2f}",
         r_p50 / (f_p50 + raw) <= 1.3),
        (f"{name}: CPU per call - floor CPU, in FAISS searches", f"{(r_cpu - f_cpu) / raw:.2f}",
         (r_cpu - f_cpu) / raw <= 1.5),
        (f"{name}: QPS at c=32 / one-core limit", f"{q32 / limit:.0%}", q32 >= 0.8 * limit),
        (f"{name}: QPS, {cpus} processes / ({cpus} x one)", f"{qp / (cpus * q32):.0%}",
         qp >= 0.8 * cpus * q32),
    ]  # fmt: skip
    if name == "trained":
        refusal, admitted, refused = admission(artifacts, payload)
        rows.append((f"{name}: median refusal, 300 callers vs --max-inflight 8 (ms)",
                     f"{refusal:.0f} ({refused} refused; admitted {admitted:.0f})",
                     refusal <= 50))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--artifacts", type=Path, required=True, help="a trained model")
    p.add_argument("--synthetic", type=int, default=62_423, help="movies of the synthetic one")
    p.add_argument("--calls", type=int, default=4000, help="calls per measurement")
    args = p.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("needs h2load: apt-get install nghttp2-client")
    rows: list[tuple[str, str, bool]] = []
    with tempfile.TemporaryDirectory() as tmp:
        from benchmarks.bench_grpc import write_synthetic

        synthetic = write_synthetic(Path(tmp) / "s", args.synthetic, "flat")
        catalogue(args.artifacts, "trained", args.calls, rows)
        catalogue(synthetic, f"{args.synthetic // 1000}k x 64", args.calls, rows)
    width = max(len(r[0]) for r in rows)
    print(f"\n{'target':{width}}  {'measured':>26}  met")
    for name, value, met in rows:
        print(f"{name:{width}}  {value:>26}  {'yes' if met else 'NO'}")


if __name__ == "__main__":
    main()
