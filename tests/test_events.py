"""The event stores against the real things: SQLite files and a real redis-server.

Each behaviour runs on both stores (``store_url``); the crash tests SIGKILL a writing process
(and, for Redis, the redis-server) at seeded random points and check that every
acknowledged event is there afterwards and that no call was half stored."""

from __future__ import annotations

import asyncio
import random
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import pytest
import redis

from movierec.cli import main
from movierec.errors import FailedPrecondition, Unavailable, UsageError
from server.events import Event, EventStore, EventType, export_events, open_store, state_dir
from tests.redis_server import RedisServer
from trainer.movielens import load, read_ratings

ROOT = Path(__file__).resolve().parents[1]
W, L, D = EventType.WATCH, EventType.LIKE, EventType.DISLIKE
T = TypeVar("T")


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.sqlite3'}"
    url: str = request.getfixturevalue("redis_url")
    return url


def run(
    coro_fn: Callable[[EventStore], Awaitable[T]], url: str | None, max_events_per_user: int = 1000
) -> T:
    """Open the store, run ``coro_fn(store)`` on a fresh loop, close the store."""

    async def body() -> T:
        store = open_store(url, max_events_per_user=max_events_per_user)
        try:
            return await coro_fn(store)
        finally:
            await store.close()

    return asyncio.run(body())


def movies(events: Sequence[Event]) -> list[str]:
    return [str(e.movie) for e in events]


# --- behaviour, on both stores ----------------------------------------------------------


def test_round_trip_keys_as_text_oldest_first(store_url: str) -> None:
    recorded = [
        Event(42, 1, W, None, 1_700_000_000.25),
        Event("42", "sku-7|x", L, None, 1_700_000_001.0),
        Event(42, 3, W, 3.5, 1_700_000_002.0),
        Event("c0ffee-uuid", 1, D, None, 5.0),
    ]

    async def body(store: EventStore) -> None:
        assert await store.recent(42, 10) == []
        await store.record(recorded[:2])
        await store.record(recorded[2:])
        await store.record([])
        got = await store.recent("42", 10)
        assert got == [
            Event("42", "1", W, None, 1_700_000_000.25),
            Event("42", "sku-7|x", L, None, 1_700_000_001.0),
            Event("42", "3", W, 3.5, 1_700_000_002.0),
        ]
        assert await store.recent(42, 2) == got[1:]
        assert await store.recent(42, 0) == []
        assert await store.recent("c0ffee-uuid", 5) == [Event("c0ffee-uuid", "1", D, None, 5.0)]
        assert await store.recent(7, 5) == []

    run(body, store_url)


def test_trimming_keeps_exactly_the_newest_n(store_url: str) -> None:
    async def body(store: EventStore) -> None:
        t = 0.0
        for size in (3, 1, 7, 2):  # one call alone is over the limit
            await store.record([Event(1, f"m{t + i:.0f}", W, None, t + i) for i in range(size)])
            t += size
        await store.record([Event(2, "other", W, None, 0.0)])
        assert movies(await store.recent(1, 100)) == [f"m{i}" for i in range(8, 13)]
        assert movies(await store.recent(2, 100)) == ["other"]
        assert len([e async for e in store.scan()]) == 6  # the trimmed ones are gone

    run(body, store_url, max_events_per_user=5)


def test_flood_of_concurrent_calls(store_url: str) -> None:
    """40 tasks x 25 calls x 4 events at once, 20 users, at most 60 kept each."""
    tasks, calls, per_call, users, keep = 40, 25, 4, 20, 60

    async def writer(store: EventStore, task: int) -> None:
        for c in range(calls):
            await store.record(
                [Event(f"u{(task + i) % users}", f"{task}.{c}.{i}", W, None, 0.0)
                 for i in range(per_call)]
            )  # fmt: skip

    async def body(store: EventStore) -> None:
        start = time.monotonic()
        await asyncio.gather(*(writer(store, t) for t in range(tasks)))
        assert time.monotonic() - start < 60
        for u in range(users):
            got = await store.recent(f"u{u}", 1000)
            assert len(got) == keep and len(set(movies(got))) == keep
        assert len([e async for e in store.scan()]) == users * keep

    run(body, store_url, max_events_per_user=keep)


def test_a_row_of_an_unknown_type_is_skipped_not_fatal(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A newer movierec sharing the store may write an event type this one does not know:
    every Recommend for that user failed INTERNAL and export crashed; now the row is skipped
    with a warning."""
    run(lambda store: store.record([Event("u", 1, W, None, 1.0)]), store_url)
    if store_url.startswith("sqlite"):
        import sqlite3

        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as db:
            db.execute("INSERT INTO events VALUES ('u', 99, '2', 9, NULL, 2.0)")
    else:
        from server.event_stores.redis import PREFIX

        with redis.Redis.from_url(store_url) as client:
            client.lpush(PREFIX + "u", "9|2.0||2")

    async def body(store: EventStore) -> tuple[list[Event], list[Event]]:
        return await store.recent("u", 10), [e async for e in store.scan()]

    recent, scanned = run(body, store_url)
    assert recent == scanned == [Event("u", "1", W, None, 1.0)]
    assert "unknown type 9" in caplog.text


def test_export_is_a_ratings_file_the_trainer_reads(store_url: str, tmp_path: Path) -> None:
    async def body(store: EventStore) -> None:
        await store.record(
            [
                Event(1, 10, W, None, 100.9),  # implicit watch: 4.0
                Event(1, 11, W, 2.5, 101.0),  # stars given
                Event(2, 10, L, None, 102.0),  # like: 5.0
                Event(1, 12, W, None, 103.0),
                Event(1, 12, D, None, 104.0),  # the latest event on a movie decides: 0.5
            ]
        )

    run(body, store_url)
    out = tmp_path / "events.csv"
    assert export_events(store_url, out) == 4
    table = read_ratings(out).sort_values(["user_id", "movie_id"])
    assert table.values.tolist() == [[1, 10, 4.0, 100], [1, 11, 2.5, 101], [1, 12, 0.5, 104],
                                     [2, 10, 5.0, 102]]  # fmt: skip


def test_export_after_a_base_trains(store_url: str, sample_dir: Path, tmp_path: Path) -> None:
    """The output is the base's rows then the events', and the trainer's loader takes it."""
    base = tmp_path / "ratings.csv"
    # CRLF like ml-latest-small, and no newline at the very end.
    base.write_bytes(
        (sample_dir / "ratings.csv").read_bytes().replace(b"\n", b"\r\n").rstrip(b"\r\n")
    )
    base_rows = len(read_ratings(base))
    movie_ids = [m.movie_id for m in load(sample_dir).movies[:3]]

    async def body(store: EventStore) -> None:
        await store.record([Event(999_999, m, L, None, 1e9) for m in movie_ids])

    run(body, store_url)
    out = tmp_path / "out" / "ratings.csv"
    out.parent.mkdir()
    assert export_events(store_url, out, base) == 3
    assert b"\n" not in out.read_bytes().replace(b"\r\n", b"")  # one line ending throughout
    data = load(ratings=out, movies=sample_dir / "movies.csv")
    assert len(data.ratings) == base_rows + 3
    new = data.ratings[data.ratings["user_id"] == 999_999]
    assert sorted(new["movie_id"]) == sorted(movie_ids) and set(new["rating"]) == {5.0}


def test_export_refuses_what_cannot_work(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.sqlite3'}"
    with pytest.raises(UsageError, match="no event store there"):
        export_events(url, tmp_path / "out.csv")
    assert not (tmp_path / "events.sqlite3").exists()
    run(lambda store: store.record([Event(1, 1, W, None, 0.0)]), url)
    with pytest.raises(UsageError, match="must be a .csv"):
        export_events(url, tmp_path / "out.dat")
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,score\n1,2,3\n")
    with pytest.raises(UsageError, match="expected the header userId,movieId,rating,timestamp"):
        export_events(url, tmp_path / "out.csv", bad)
    assert not list(tmp_path.glob("*out.csv*"))  # nothing half-written left behind


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'events.sqlite3'}"
    run(lambda store: store.record([Event(5, 6, W, 4.5, 7.0)]), url)
    out = tmp_path / "out.csv"
    assert main(["events", "export", "--events", url, "--out", str(out)]) == 0
    assert out.read_text() == "userId,movieId,rating,timestamp\n5,6,4.5,7\n"
    assert "1 rows from events" in capsys.readouterr().out
    assert main(["events", "export", "--events", "mysql://x", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("movierec events: error: event store 'mysql://x'") and err.count("\n") == 1
    )


# --- choosing a store ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["sqlite://events.db", "sqlite:///", "sqlite:///:memory:", "sqlite:///x?mode=ro",
            "mongodb://db/1", "events.sqlite3", ""],
)  # fmt: skip
def test_bad_urls_are_one_line_usage_errors(url: str) -> None:
    with pytest.raises(UsageError, match=r"^event store '.*': expected [^\n]*$"):
        open_store(url)


def test_default_store_in_the_state_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MOVIEREC_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_dir() == tmp_path / "xdg" / "movierec"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert state_dir() == tmp_path / "home" / ".local" / "state" / "movierec"
    monkeypatch.setenv("MOVIEREC_STATE_DIR", str(tmp_path / "state"))
    run(lambda store: store.record([Event(1, 2, W, None, 0.0)]), None)
    assert (tmp_path / "state" / "events.sqlite3").is_file()
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


def test_none_keeps_nothing_and_refuses_to_record() -> None:
    async def body(store: EventStore) -> None:
        with pytest.raises(FailedPrecondition, match="keeps no events"):
            await store.record([Event(1, 2, W, None, 0.0)])
        assert await store.recent(1, 10) == []

    run(body, "none")


def test_sqlite_refuses_other_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database, definitely not" * 100)
    with pytest.raises(UsageError, match="junk.sqlite3: cannot open the event store"):
        open_store(f"sqlite:///{junk}")
    newer = tmp_path / "newer.sqlite3"
    run(lambda store: store.recent(1, 1), f"sqlite:///{newer}")
    import sqlite3

    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 2")
    with pytest.raises(UsageError, match="event store format 2; this movierec reads format 1"):
        open_store(f"sqlite:///{newer}")
    with pytest.raises(UsageError, match="cannot open"):
        open_store(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.sqlite3'}")


def test_redis_that_would_lose_events_is_refused(redis_server: RedisServer, tmp_path: Path) -> None:
    with redis.Redis(port=redis_server.port, decode_responses=True) as r:
        r.config_set("appendfsync", "everysec")
        try:
            with pytest.raises(UsageError, match="appendfsync everysec: acknowledged events"):
                open_store(redis_server.url())
            run(lambda store: store.recent(1, 1), redis_server.url() + "?durability=unchecked")
            export_events(redis_server.url(), tmp_path / "out.csv")  # reading needs no fsync
        finally:
            r.config_set("appendfsync", "always")
    with pytest.raises(UsageError, match="durability=maybe"):
        open_store(redis_server.url() + "?durability=maybe")


def test_unreachable_redis_is_unavailable(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        port = s.getsockname()[1]
        with pytest.raises(Unavailable, match=f"redis://127.0.0.1:{port}/0: cannot connect"):
            open_store(f"redis://127.0.0.1:{port}/0")


# --- crashes and concurrent processes ------------------------------------------------------


class Writer:
    """tests/event_writer.py in a subprocess, its acknowledgements read as they come."""

    def __init__(self, url: str, tag: str, seed: int, calls: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.event_writer", url, tag, str(seed), str(calls)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.tag = tag
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.proc.stdout:
            for line in self.proc.stdout:
                self.lines.append(line.strip())

    def go(self) -> None:
        """Wait until the writer has opened the store, then let it start writing."""
        deadline = time.monotonic() + 30
        while "ready" not in self.lines:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.lines
            time.sleep(0.005)
        assert self.proc.stdin is not None
        with self.proc.stdin:
            self.proc.stdin.write("go\n")

    def wait_for_acks(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while sum(x.startswith("ok") for x in self.lines) < n:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.lines[-3:]
            time.sleep(0.005)

    def finish(self, kill: bool) -> int:
        if kill:
            self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait(timeout=60)
        self.reader.join(timeout=10)
        return code

    def check(self, stored: set[str]) -> int:
        """Every acknowledged movie is stored, a call is stored whole or not at all, and
        nothing was stored that was not sent. Returns the number acknowledged."""
        calls: dict[int, int] = {}
        acked: set[int] = set()
        for line in self.lines:
            word, *numbers = line.split()
            if word == "begin":
                calls[int(numbers[0])] = int(numbers[1])
            elif word == "ok":
                acked.add(int(numbers[0]))
        mine = {m for m in stored if m.startswith(f"{self.tag}:")}
        sent = set()
        for first, count in calls.items():
            call = {f"{self.tag}:{i}" for i in range(first, first + count)}
            sent |= call
            if first in acked:
                assert call <= mine, f"acknowledged call {first} lost {sorted(call - mine)}"
            else:
                assert call <= mine or not call & mine, f"call {first} half stored"
        assert mine <= sent
        return sum(calls[f] for f in acked)


def all_movies(url: str) -> set[str]:
    async def body(store: EventStore) -> set[str]:
        return {str(e.movie) async for e in store.scan()}

    return run(body, url)


def test_sqlite_acknowledged_events_survive_sigkill(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.sqlite3'}"
    rng = random.Random(13)
    for round_ in range(3):
        writer = Writer(url, f"r{round_}", seed=round_)
        writer.go()
        writer.wait_for_acks(rng.randint(1, 30))
        time.sleep(rng.uniform(0, 0.05))  # land anywhere in a commit
        assert writer.finish(kill=True) == -signal.SIGKILL
        assert writer.check(all_movies(url)) > 0


def test_sqlite_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.sqlite3'}"
    writers = [Writer(url, f"p{i}", seed=i, calls=40) for i in range(4)]
    for w in writers:
        w.go()
    codes = [w.finish(kill=False) for w in writers]
    assert codes == [0, 0, 0, 0], [w.lines[-3:] for w in writers]
    stored = all_movies(url)
    assert sum(w.check(stored) for w in writers) == len(stored)


def test_redis_acknowledged_events_survive_sigkill_of_writer_and_redis(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # its own: this test kills it
    try:
        rng = random.Random(17)
        for round_ in range(3):
            writer = Writer(server.url(), f"r{round_}", seed=round_)
            writer.go()
            writer.wait_for_acks(rng.randint(1, 200))
            if round_ == 2:  # the writer's own crash
                assert writer.finish(kill=True) == -signal.SIGKILL
            else:  # Redis crashes under it: its next call fails, then Redis restarts
                server.kill()
                assert writer.finish(kill=False) == 3 and writer.lines[-1] == "unavailable"
                server.start()
            assert writer.check(all_movies(server.url())) > 0
    finally:
        server.stop()
