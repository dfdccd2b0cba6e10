"""Live watch events: what a user did after the model was trained.

(The store itself, SQLite and Redis, lands with the event-store change; these are the types
the core and the store share.)
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

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
