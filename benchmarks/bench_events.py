"""Event store latency: what Recommend pays to read a history, what RecordEvents pays to write.

    python benchmarks/bench_events.py [--calls 300]

For SQLite (a temporary file) and Redis (a redis-server this script starts on a free loopback
port with appendonly yes, appendfsync always; skipped if it is not installed), one process:
``recent`` p50/p99 for a user with 0 and with 50 events, awaited on the event loop (SQLite
runs it inline) and, for SQLite, through ``asyncio.to_thread``; ``record`` of 1 and of 100
events one call at a time, and 1-event calls from 16 tasks at once (group commit). The
durability rows run the same 1-event write without the fsync (SQLite synchronous=NORMAL,
Redis appendfsync everysec), to show what "OK means on disk" costs.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import numpy as np

from server.events import Event, EventStore, EventType, open_store


def percentiles(seconds: list[float]) -> str:
    p50, p99 = np.percentile(np.array(seconds) * 1e6, [50, 99])
    return f"p50 {p50:8.0f} us   p99 {p99:8.0f} us"


async def timed(n: int, call: Callable[..., Awaitable[Any]], *args: Any) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await call(*args)
        out.append(time.perf_counter() - start)
    return out


async def in_thread(method: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
    """Run a coroutine method that never suspends (SQLite's recent) on a worker thread: the
    hand-off the event loop would pay to keep the query off its own thread."""

    def finish() -> Any:
        try:
            method(*args).send(None)
        except StopIteration as done:
            return done.value
        raise RuntimeError("the coroutine suspended")

    return await asyncio.to_thread(finish)


def events(user: str, n: int, start: int = 0) -> list[Event]:
    return [
        Event(user, str(i), EventType.WATCH, None, time.time()) for i in range(start, start + n)
    ]


async def bench(name: str, store: EventStore, calls: int, sqlite: bool) -> None:
    await store.record(events("fifty", 50))
    for user, label in (("nobody", 0), ("fifty", 50)):
        assert len(await store.recent(user, 50)) == label
        rows = await timed(calls * 10, store.recent, user, 50)
        print(f"{name:7} recent, {label:2} events, on the loop    {percentiles(rows)}")
        if sqlite:
            rows = await timed(calls * 10, in_thread, store.recent, user, 50)
            print(f"{name:7} recent, {label:2} events, to_thread      {percentiles(rows)}")
    for size in (1, 100):
        rows = await timed(calls, store.record, events("w", size))
        print(f"{name:7} record {size:3} event(s), one at a time  {percentiles(rows)}")
    start = time.perf_counter()
    await asyncio.gather(*(timed(calls // 4, store.record, events(f"t{t}", 1)) for t in range(16)))
    rate = 16 * (calls // 4) / (time.perf_counter() - start)
    print(f"{name:7} record 1 event from 16 tasks at once   {rate:8.0f} calls/s")


def sqlite_without_fsync(path: Path, calls: int) -> None:
    """The same insert + commit as the store's, synchronous FULL vs NORMAL, raw sqlite3."""
    for sync in ("FULL", "NORMAL"):
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(f"PRAGMA synchronous = {sync}")
        rows = []
        for i in range(calls):
            start = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO events (user, seq, movie, type, rating, time) "
                "VALUES (?, ?, ?, 1, NULL, 0)",
                (f"raw-{sync}", i, str(i)),
            )
            conn.execute("COMMIT")
            rows.append(time.perf_counter() - start)
        conn.close()
        print(f"sqlite  raw commit of 1 row, synchronous={sync:6}  {percentiles(rows)}")


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis   skipped: redis-server is not installed")
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
         "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(500):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"redis://127.0.0.1:{port}/0"
        time.sleep(0.01)
    raise RuntimeError("redis-server did not start")


async def redis_everysec(url: str, calls: int) -> None:
    import redis

    with redis.Redis.from_url(url) as r:
        r.config_set("appendfsync", "everysec")
    store = open_store(url + "?durability=unchecked")
    rows = await timed(calls, store.record, events("e", 1))
    print(f"redis   record 1 event, appendfsync=everysec  {percentiles(rows)}")
    await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="timed record() calls per row")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.sqlite3"

        async def sqlite() -> None:
            store = open_store(f"sqlite:///{path}")
            await bench("sqlite", store, args.calls, sqlite=True)
            await store.close()

        asyncio.run(sqlite())
        sqlite_without_fsync(path, args.calls)
        started = start_redis(Path(tmp))
        if started is None:
            return
        proc, url = started
        try:

            async def redis() -> None:
                store = open_store(url)
                await bench("redis", store, args.calls, sqlite=False)
                await store.close()
                await redis_everysec(url, args.calls)

            asyncio.run(redis())
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
