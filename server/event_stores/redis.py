"""The Redis event store: several replicas on several machines share one Redis.

    movierec:events:<user>   a list, newest first: LPUSH then LTRIM to the newest N, both in
                             one MULTI/EXEC per ``record`` (atomic across users too)
    each element             "<type>|<time>|<rating or empty>|<movie>" (movie last: it may
                             hold '|'; floats as repr, so they round-trip exactly)

"OK means stored durably": Redis answers a command only after its append-only file is
fsynced when it runs with ``appendonly yes`` and ``appendfsync always``. Redis 7.0 has no
WAITAOF to ask for that per call, so opening the store checks the server's settings with
CONFIG GET and refuses any other. ``?durability=unchecked`` in the URL skips the check, for a
managed Redis that disables CONFIG (its operator vouches for the settings) or an operator who
accepts losing the last second of events (``appendfsync everysec``).

Not covered: a failover to a replica may lose writes the replica had not received (the
primary's fsync is what OK means); Redis Cluster (one call's users would span slots).
A connection error is retried once on a fresh connection (a restarted Redis leaves dead
connections in the pool), so an event whose reply was lost may be stored twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from movierec.errors import Unavailable, UsageError
from movierec.ids import Key
from server.events import Event, key, stored_type

PREFIX = "movierec:events:"
TIMEOUT_S = 5.0  # connect and reply timeouts, unless the URL sets socket_(connect_)timeout


class RedisStore:
    """See the module docstring. Opening connects once (synchronously) to check durability,
    unless ``check_durability`` is false (a store opened only to be read)."""

    def __init__(self, url: str, max_events_per_user: int, *, check_durability: bool) -> None:
        parts = urlsplit(url)
        self.where = f"{parts.scheme}://{parts.hostname}{parts.path}"  # no password: for messages
        self._max = max_events_per_user
        options = parse_qsl(parts.query, keep_blank_values=True)
        durability = dict(options).get("durability", "check")
        if durability not in ("check", "unchecked"):
            raise UsageError(f"event store {self.where}: durability={durability} (expected "
                             "check or unchecked)")  # fmt: skip
        query = urlencode([(k, v) for k, v in options if k != "durability"])
        url = urlunsplit(parts._replace(query=query))
        try:
            self.where = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"
            if check_durability and durability == "check":
                self._check_durability(url)
            self._client = redis.asyncio.Redis.from_url(
                url,
                decode_responses=True,
                retry=Retry(NoBackoff(), 1),
                socket_connect_timeout=TIMEOUT_S,
                socket_timeout=TIMEOUT_S,
            )
        except ValueError as e:  # how urllib and redis-py refuse a URL they cannot parse
            raise UsageError(f"event store {self.where}: {e}") from None

    async def record(self, events: Sequence[Event]) -> None:
        by_user: dict[str, list[str]] = {}
        for e in events:  # in order: the last pushed is the list's head, the newest
            rating = "" if e.rating is None else repr(float(e.rating))
            item = f"{int(e.type)}|{float(e.time)!r}|{rating}|{key(e.movie)}"
            by_user.setdefault(key(e.user), []).append(item)
        if not by_user:
            return
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                for user, items in by_user.items():
                    pipe.lpush(PREFIX + user, *items)
                    pipe.ltrim(PREFIX + user, 0, self._max - 1)
                await pipe.execute()
        except redis.RedisError as e:
            raise Unavailable(f"event store {self.where}: {e}") from None

    async def recent(self, user: Key, limit: int) -> list[Event]:
        if limit <= 0:
            return []
        u = key(user)
        try:
            items = cast(list[str], await self._client.lrange(PREFIX + u, 0, limit - 1))
        except redis.RedisError as e:
            raise Unavailable(f"event store {self.where}: {e}") from None
        events = (_decode(u, item) for item in reversed(items))
        return [e for e in events if e is not None]

    async def scan(self) -> AsyncIterator[Event]:
        seen: set[str] = set()  # SCAN may return a key twice; this holds keys, not events
        try:
            async for name in self._client.scan_iter(match=PREFIX + "*", count=1000):
                if name in seen:
                    continue
                seen.add(name)
                items = cast(list[str], await self._client.lrange(name, 0, -1))
                for item in reversed(items):
                    if (event := _decode(name.removeprefix(PREFIX), item)) is not None:
                        yield event
        except redis.RedisError as e:
            raise Unavailable(f"event store {self.where}: {e}") from None

    async def close(self) -> None:
        await self._client.aclose()

    def _check_durability(self, url: str) -> None:
        """Refuse a Redis that would answer OK before the event is on disk."""
        client = redis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=TIMEOUT_S, socket_timeout=TIMEOUT_S
        )
        try:
            config = client.config_get("append*")
        except redis.ConnectionError as e:
            raise Unavailable(f"event store {self.where}: cannot connect: {e}") from None
        except redis.RedisError as e:
            raise UsageError(
                f"event store {self.where}: cannot read its settings ({e}); if it runs with "
                "appendonly yes and appendfsync always, add ?durability=unchecked to the URL"
            ) from None
        finally:
            client.close()
        settings = (config.get("appendonly"), config.get("appendfsync"))
        if settings != ("yes", "always"):
            raise UsageError(
                f"event store {self.where} runs with appendonly {settings[0]}, appendfsync "
                f"{settings[1]}: acknowledged events could be lost. Run it with "
                "'appendonly yes' and 'appendfsync always' (redis.conf, or CONFIG SET then "
                "CONFIG REWRITE), or add ?durability=unchecked to the URL to accept that"
            )


def _decode(user: str, item: str) -> Event | None:
    """An entry as _encode wrote it; None (skipped) for a type this version does not know."""
    t, time, rating, movie = item.split("|", 3)
    kind = stored_type(t)
    if kind is None:
        return None
    return Event(user, movie, kind, float(rating) if rating else None, float(time))
