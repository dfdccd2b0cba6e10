"""Live watch events: what a user did after the model was trained.

(The store itself, SQLite and Redis, lands with the event-store change; these are the types
the core and the store share.)
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from movierec.artifacts import Key


class EventType(enum.IntEnum):
    """Values equal the proto enum movierec.v1.EventType."""

    WATCH = 1
    LIKE = 2
    DISLIKE = 3


@dataclass(frozen=True)
class Event:
    user: Key
    movie: Key
    type: EventType
    rating: float | None  # stars if the client gave them
    time: float  # unix seconds


class EventStore(Protocol):
    async def record(self, events: Sequence[Event]) -> None:
        """Store all of them atomically; durable when it returns."""

    async def recent(self, user: Key, limit: int) -> list[Event]:
        """The user's most recent ``limit`` events, oldest first."""

    async def close(self) -> None: ...


def open_store(url: str | None, *, max_events_per_user: int = 1000) -> EventStore | None:
    """Placeholder until the SQLite/Redis store lands: keeps nothing."""
    return None
