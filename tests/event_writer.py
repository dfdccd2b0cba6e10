"""The writing process of test_events' crash and concurrency tests.

    python -m tests.event_writer URL TAG SEED CALLS

Opens the store, prints ``ready`` and waits for a line on stdin (so that several writers
start at once), then records CALLS calls (0: until killed) of 1-8 WATCH events each, for
users TAG-0..TAG-4, movie keys TAG:0, TAG:1, ... in order. Before each call it prints
``begin FIRST COUNT``, after ``record`` has returned ``ok FIRST``: every movie of an ``ok``
call is acknowledged.
A store that fails prints ``unavailable`` and exits 3.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import sys

from movierec.errors import Unavailable
from server.events import Event, EventType, open_store


async def main(url: str, tag: str, seed: int, calls: int) -> int:
    store = open_store(url, max_events_per_user=10**6)
    rng = random.Random(seed)
    first = 0
    print("ready", flush=True)
    sys.stdin.readline()
    try:
        for _ in itertools.count() if calls == 0 else range(calls):
            count = rng.randint(1, 8)
            events = [
                Event(f"{tag}-{rng.randrange(5)}", f"{tag}:{i}", EventType.WATCH, None, float(i))
                for i in range(first, first + count)
            ]
            print(f"begin {first} {count}", flush=True)
            await store.record(events)
            print(f"ok {first}", flush=True)
            first += count
    except Unavailable:
        print("unavailable", flush=True)
        return 3
    finally:
        await store.close()
    return 0


if __name__ == "__main__":
    url, tag, seed, calls = sys.argv[1:]
    sys.exit(asyncio.run(main(url, tag, int(seed), int(calls))))
