"""Recorded user events (watches, likes, dislikes): the types, the store contract, and
``open_store`` to pick a store by URL; plus ``export_events``, which writes them as a ratings
file the trainer reads.

    store = open_store("sqlite:///events.sqlite3")   # None: the default file; "redis://..."
    await store.record([Event(user=7, movie=260, type=EventType.LIKE, rating=None, time=t)])
    await store.recent(7, 50)                         # the user's 50 latest, oldest first
    await store.close()

Stores (each in ``server/event_stores/``):

    sqlite:///rel/path, sqlite:////abs/path   one file shared by every process on the machine
    (default: events.sqlite3 in the state directory, see ``state_dir``)
    redis://[:password@]host:port/db, rediss://...   several replicas on several machines
    none                                      keeps nothing; ``record`` is refused

Keys are stored as text: int 42 and "42" are the same user or movie, and ``recent`` returns
``Event``s whose ``user`` and ``movie`` are ``str``; the caller maps them back to its ids.
"Most recent" means most recently recorded (arrival order), not the largest ``time``. Each
user keeps only the newest ``max_events_per_user`` events (older ones are dropped as new ones
arrive, in the same transaction).

A store holds connections and threads that do not survive ``fork``: call ``open_store`` in
each server process after it has forked (the SQLite store refuses to be used in another
process: its writer thread stayed behind). No grpc here; the gRPC layer maps ``Unavailable``
and ``FailedPrecondition`` to their status codes.
"""

from __future__ import annotations

import asyncio
import csv
import enum
import logging
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

from movierec.errors import FailedPrecondition, UsageError
from movierec.ids import Key

log = logging.getLogger(__name__)
DEFAULT_MAX_EVENTS_PER_USER = 1000
RATINGS_HEADER = ["userId", "movieId", "rating", "timestamp"]  # ml-latest-small's ratings.csv


class EventType(enum.IntEnum):
    """Values equal the proto enum movierec.v1.EventType (0 is its UNSPECIFIED)."""

    WATCH = 1
    LIKE = 2
    DISLIKE = 3


def stored_type(value: int | str) -> EventType | None:
    """The type a store holds as ``value``; None, with a warning, for one this version does
    not know (a newer movierec sharing the store): the store skips that row rather than fail
    every call for its user."""
    try:
        return EventType(int(value))
    except ValueError:
        log.warning("skipped a stored event of unknown type %s (written by a newer movierec?)",
                    value)  # fmt: skip
        return None


@dataclass(frozen=True)
class Event:
    user: Key
    movie: Key
    type: EventType
    rating: float | None  # stars, if the client gave them
    time: float  # unix seconds


class EventStore(Protocol):
    async def record(self, events: Sequence[Event]) -> None:
        """Store all of them atomically; when it returns they are durable (fsynced), so an
        acknowledged event survives SIGKILL of the server and a crash of the machine's OS
        process (and, for Redis, of the Redis process given AOF with appendfsync always).
        Raises ``Unavailable`` when the store cannot take them now."""
        ...

    async def recent(self, user: Key, limit: int) -> list[Event]:
        """The user's most recent ``limit`` events, oldest first ([] for a user with none);
        ``user`` and ``movie`` of each are ``str``."""
        ...

    def scan(self) -> AsyncIterator[Event]:
        """Every stored event, one user after another, each user's oldest first, in bounded
        memory: what ``export_events`` reads."""
        ...

    async def close(self) -> None: ...


def key(k: Key) -> str:
    """The stored form of a user or movie id (int() also takes numpy integers)."""
    return k if isinstance(k, str) else str(int(k))


def state_dir() -> Path:
    """Where movierec keeps state by default, created (mode 0700) if missing:
    $MOVIEREC_STATE_DIR, else $XDG_STATE_HOME/movierec, else ~/.local/state/movierec."""
    if explicit := os.environ.get("MOVIEREC_STATE_DIR"):
        folder = Path(explicit)
    elif xdg := os.environ.get("XDG_STATE_HOME"):
        folder = Path(xdg) / "movierec"
    else:
        folder = Path.home() / ".local" / "state" / "movierec"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    return folder


def open_store(
    url: str | None, *, max_events_per_user: int = DEFAULT_MAX_EVENTS_PER_USER
) -> EventStore:
    """The store ``url`` names (see the module docstring; None: the default SQLite file).
    A URL that cannot work raises ``UsageError``; a store that cannot be reached, or a Redis
    that would not keep events durably, raises ``Unavailable`` or ``UsageError`` (one line)."""
    return _open(url, max_events_per_user, writing=True)


def _open(url: str | None, max_events_per_user: int, *, writing: bool) -> EventStore:
    """``writing=False`` (export): a missing SQLite file is an error rather than created, and
    Redis's durability settings do not matter."""
    if max_events_per_user < 1:
        raise UsageError(f"max events per user must be at least 1, got {max_events_per_user}")
    if url == "none":
        return NoStore()
    if (path := _sqlite_path(url)) is not None:
        from server.event_stores.sqlite import SqliteStore

        if not writing and not path.exists():
            raise UsageError(f"{path}: no event store there")
        return SqliteStore(path, max_events_per_user)
    if url is not None and url.startswith(("redis://", "rediss://")):
        from server.event_stores.redis import RedisStore

        return RedisStore(url, max_events_per_user, check_durability=writing)
    raise UsageError(
        f"event store {url!r}: expected sqlite:///PATH, redis://HOST:PORT/DB, rediss://... or none"
    )


def _sqlite_path(url: str | None) -> Path | None:
    """The file of a sqlite:/// URL (None: the default file); None for other URLs."""
    if url is None:
        return state_dir() / "events.sqlite3"
    if not url.startswith("sqlite:"):
        return None
    path = url.removeprefix("sqlite:///")
    if path == url or not path or "?" in path or path == ":memory:":
        raise UsageError(
            f"event store {url!r}: expected sqlite:///relative/path or "
            "sqlite:////absolute/path (a file: events must outlive the process)"
        )
    return Path(path)


class NoStore:
    """``--events none``: nothing is kept, every user has no events, recording is refused
    (a client told OK would believe its events count)."""

    async def record(self, events: Sequence[Event]) -> None:
        raise FailedPrecondition("this server keeps no events (it was started with --events none)")

    async def recent(self, user: Key, limit: int) -> list[Event]:
        return []

    async def scan(self) -> AsyncIterator[Event]:
        return
        yield  # an async generator that yields nothing

    async def close(self) -> None:
        pass


# --- export ------------------------------------------------------------------------------

# The trainer reads stars; events become stars as follows. A watch is an implicit positive
# (4.0 is above the default like threshold, 3.5); a dislike is the lowest MovieLens rating.
IMPLICIT_WATCH_RATING = 4.0
LIKE_RATING = 5.0
DISLIKE_RATING = 0.5


def event_rating(event: Event) -> float:
    """The stars an event stands for in a ratings file: a WATCH's own rating (4.0 without
    one), LIKE 5.0, DISLIKE 0.5."""
    if event.type is EventType.LIKE:
        return LIKE_RATING
    if event.type is EventType.DISLIKE:
        return DISLIKE_RATING
    return IMPLICIT_WATCH_RATING if event.rating is None else event.rating


def export_events(url: str | None, out: Path, base: Path | None = None) -> int:
    """Write the store's events to ``out`` as a MovieLens ratings.csv
    (``userId,movieId,rating,timestamp``), after the rows of ``base`` (an existing
    ratings.csv) if given, so ``movierec train --interactions OUT --items movies.csv`` learns
    from both. Each (user, movie) gives one row, from the user's latest event on that movie (a
    dislike after a watch is a dislike), stars as ``event_rating``, ids as stored (the trainer
    needs integer ids). Streams in bounded memory (one user's events at a time) and replaces
    ``out`` only when complete. Returns the number of rows written from events."""
    out = Path(out)
    if out.suffix != ".csv":
        raise UsageError(f"{out}: the output must be a .csv file (the trainer reads the layout "
                         "from the name)")  # fmt: skip
    store = _open(url, DEFAULT_MAX_EVENTS_PER_USER, writing=False)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            newline = _copy_base(base, f) if base is not None else "\n"
            if base is None:
                f.write(",".join(RATINGS_HEADER) + newline)
            rows = asyncio.run(_write_events(store, f, newline))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return rows


def _copy_base(base: Path, f: TextIO) -> str:
    """Copy ``base`` to ``f`` (header checked); return its line ending, for the rows after it."""
    try:
        with open(base, encoding="utf-8", newline="") as src:
            header = src.readline()
            if header.rstrip("\r\n").split(",") != RATINGS_HEADER:
                raise UsageError(
                    f"{base}: expected the header {','.join(RATINGS_HEADER)} (a MovieLens "
                    f"ratings.csv), found {header.strip()[:80]!r}"
                )
            newline = header[len(header.rstrip("\r\n")) :] or "\n"
            last = header.rstrip("\r\n") + newline
            f.write(last)
            while chunk := src.read(1 << 16):
                f.write(chunk)
                last = chunk
            if not last.endswith("\n"):
                f.write(newline)
    except FileNotFoundError:
        raise UsageError(f"{base}: no such file") from None
    return newline


async def _write_events(store: EventStore, f: TextIO, newline: str) -> int:
    writer = csv.writer(f, lineterminator=newline)
    rows = 0
    user: str | None = None
    latest: dict[str, Event] = {}  # one user's events by movie, in the order of their latest

    def flush() -> int:
        writer.writerows(
            (key(e.user), key(e.movie), event_rating(e), int(e.time)) for e in latest.values()
        )
        return len(latest)

    try:
        async for event in store.scan():
            if key(event.user) != user:
                rows += flush()
                user, latest = key(event.user), {}
            latest.pop(key(event.movie), None)  # re-inserted at the end: the latest is last
            latest[key(event.movie)] = event
        return rows + flush()
    finally:
        await store.close()
