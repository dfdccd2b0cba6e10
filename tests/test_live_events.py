"""Live history through the real server: RecordEvents, then Recommend reflects it, with the
embedded SQLite store and with Redis; an acknowledged event survives SIGKILL of the server;
every process of a group reads the same store; recorded events train the next model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from movierec.client import Client, event
from movierec.errors import FailedPrecondition, InvalidArgument
from movierec.v1 import recommender_pb2 as pb
from server.app import build_server
from server.events import open_store
from server.options import ServerOptions
from server.recommender import Recommender

from .conftest import LoopThread
from .test_cli import ENV, _ppid, free_port, start_server, stop_server


def children_of(pid: int) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir()
            if p.name.isdigit() and _ppid(p) == pid]  # fmt: skip


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.sqlite3'}"
    return str(request.getfixturevalue("redis_url"))


@pytest.fixture
def client(loop_thread: LoopThread, recommender: Recommender, store_url: str) -> Iterator[Client]:
    async def start():  # type: ignore[no-untyped-def]
        return await build_server(recommender, ServerOptions(port=0), store=open_store(store_url))

    running = loop_thread.run(start())
    with Client(f"127.0.0.1:{running.port}") as c:
        yield c
    loop_thread.run(running.stop(None))


def ids(recommender: Recommender, rows: list[int]) -> list[int]:
    return [int(recommender.artifacts.movie_ids[r]) for r in rows]


def test_a_new_user_gets_personal_results_after_recording(
    client: Client, recommender: Recommender
) -> None:
    user = "visitor-7f9c"
    before = client.recommend(user, k=5)
    assert {r.reason for r in before.recommendations} == {pb.POPULAR}
    watched = ids(recommender, [3, 40, 41])
    answer = client.record_events([event(user, m, "watch") for m in watched] +
                                  [event(user, 10**9, "like")])  # fmt: skip
    assert answer.recorded == 3 and list(answer.ignored_movie_ids) == [10**9]
    after = client.recommend(user, k=5)
    assert {r.reason for r in after.recommendations} == {pb.PERSONAL}
    inline = client.recommend(movies=watched, k=5)  # the same history, given inline
    assert [r.movie_id for r in after.recommendations] == [
        r.movie_id for r in inline.recommendations
    ]


def test_a_known_users_events_change_the_next_answer(
    client: Client, recommender: Recommender
) -> None:
    user = int(recommender.artifacts.histories.user_ids[4])
    first = [r.movie_id for r in client.recommend(user, k=10).recommendations]
    client.record_events([event(user, first[0], "watch"), event(user, first[1], "dislike")])
    second = [r.movie_id for r in client.recommend(user, k=10).recommendations]
    assert first[0] not in second and first[1] not in second  # watched, disliked: excluded
    assert second != first


def test_events_are_validated_before_anything_is_stored(
    client: Client, recommender: Recommender
) -> None:
    movie = ids(recommender, [1])[0]
    bad = [event("u1", movie, "watch"), pb.Event(user_key="u1", movie_id=movie)]  # no type
    with pytest.raises(InvalidArgument, match=r"events\[1\].type must be WATCH, LIKE or DISLIKE"):
        client.record_events(bad)
    with pytest.raises(InvalidArgument, match=r"events\[0\].rating must be between 0 and 10"):
        client.record_events([event("u1", movie, "watch", rating=float("nan"))])
    # an unset id read as 0: the event went into user 0's history (or onto movie 0)
    with pytest.raises(InvalidArgument, match=r"events\[1\]: set user_id or user_key"):
        client.record_events([event("u1", movie), pb.Event(movie_id=movie, type=pb.LIKE)])
    with pytest.raises(InvalidArgument, match=r"events\[0\]: set movie_id or movie_key"):
        client.record_events([pb.Event(user_key="u1", type=pb.LIKE)])
    explicit_zero = pb.Event(user_id=0, movie_id=movie, type=pb.LIKE)
    assert explicit_zero.HasField("user_id")  # 0 set on purpose is a user like any other
    for seconds, nanos in ((2**62, 0), (-(2**62), 0), (0, -1), (0, 10**9)):
        bad_time = pb.Event(user_key="u1", movie_id=movie, type=pb.LIKE)
        bad_time.time.seconds, bad_time.time.nanos = seconds, nanos
        with pytest.raises(InvalidArgument, match=r"events\[0\].time is not a valid timestamp"):
            client.record_events([bad_time])
    assert {r.reason for r in client.recommend("u1").recommendations} == {pb.POPULAR}


def test_without_a_store_recording_is_refused(
    loop_thread: LoopThread, recommender: Recommender
) -> None:
    running = loop_thread.run(build_server(recommender, ServerOptions(port=0),
                                           store=open_store("none")))  # fmt: skip
    try:
        with (
            Client(f"127.0.0.1:{running.port}") as c,
            pytest.raises(FailedPrecondition, match="keeps no events"),
        ):
            c.record_events([event(1, ids(recommender, [1])[0])])
    finally:
        loop_thread.run(running.stop(None))


def test_an_acknowledged_event_survives_sigkill_of_the_server(
    artifacts_dir: Path, recommender: Recommender, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'events.sqlite3'}"
    movies = ids(recommender, [3, 40, 41])
    port = free_port()
    proc = start_server(artifacts_dir, port, "--events", url, "--processes", "2")
    try:
        with Client(f"127.0.0.1:{port}") as c:
            answer = c.record_events([event("survivor", m, "like") for m in movies])
            assert answer.recorded == 3
            # every process of the group reads the same store: a new connection each time
        for _ in range(6):
            with Client(f"127.0.0.1:{port}") as c:
                reasons = {r.reason for r in c.recommend("survivor").recommendations}
                assert reasons == {pb.PERSONAL}
    finally:  # no shutdown at all: every process of the group dies at once
        group = [proc.pid, *children_of(proc.pid)]
        for pid in group:
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in group[1:]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert proc.stdout is not None
        proc.stdout.close()
    restarted = start_server(artifacts_dir, port, "--events", url)
    try:
        with Client(f"127.0.0.1:{port}") as c:
            after = c.recommend("survivor", k=5)
            inline = c.recommend(movies=movies, k=5)
        assert [r.movie_id for r in after.recommendations] == [
            r.movie_id for r in inline.recommendations
        ]
    finally:
        stop_server(restarted)


def test_recorded_events_train_the_next_model(
    artifacts_dir: Path, sample_dir: Path, recommender: Recommender, tmp_path: Path
) -> None:
    """movierec events export writes them as ratings after the training file's; trained on
    that, a new user of the events is a user of the model."""
    url = f"sqlite:///{tmp_path / 'events.sqlite3'}"
    movies = ids(recommender, [3, 40, 41, 90, 91])
    port = free_port()
    proc = start_server(artifacts_dir, port, "--events", url)
    try:
        with Client(f"127.0.0.1:{port}") as c:
            c.record_events([event(999_999, m, "like") for m in movies])
    finally:
        stop_server(proc)
    out = tmp_path / "ratings.csv"
    export = subprocess.run(
        [sys.executable, "-m", "movierec", "events", "export", "--events", url, "--out",
         str(out), "--base", str(sample_dir / "ratings.csv")],
        capture_output=True, text=True, timeout=60, env=ENV,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr
    from trainer.config import TrainConfig
    from trainer.movielens import read_ratings
    from trainer.pipeline import run_training

    ratings = read_ratings(out)
    assert sorted(ratings[ratings["user_id"] == 999_999]["movie_id"]) == sorted(movies)
    data = tmp_path / "data"
    data.mkdir()
    (data / "ratings.csv").write_bytes(out.read_bytes())
    (data / "movies.csv").write_bytes((sample_dir / "movies.csv").read_bytes())
    run_training(tmp_path / "next", TrainConfig(epochs=2), data=data, show_progress=False)
    from movierec.artifacts import read_artifacts

    rows, _ = read_artifacts(tmp_path / "next").histories.lookup(999_999)
    assert len(np.unique(rows)) == len(movies)
