"""Shared fixtures: the built-in sample, artifacts trained on it once per session, and a real
gRPC server on an ephemeral loopback port with a real client."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from movierec.artifacts import read_artifacts
from movierec.client import Client
from server.app import RunningServer, build_server
from server.recommender import Recommender
from tests.redis_server import RedisServer
from trainer.config import TrainConfig
from trainer.pipeline import run_training
from trainer.sample import Sample, make_sample

SHARED = Path(os.environ.get("MOVIEREC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
MOVIELENS = SHARED / "data" / "ml-latest-small"
EVAL_SPLIT = SHARED / "eval" / "ml-latest-small"
# Small but real: a few epochs are enough for the sample's genre structure to show.
SAMPLE_CONFIG = TrainConfig(epochs=4, seed=0)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """A test that runs the CLI in-process configures the root logger with a handler on the
    test's captured stderr; later tests must not log into that closed stream."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def sample() -> Sample:
    return make_sample(seed=0)


@pytest.fixture(scope="session")
def sample_dir(sample: Sample, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return sample.write(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="session")
def artifacts_dir(sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifacts") / "sample"
    run_training(out, SAMPLE_CONFIG, data=sample_dir, show_progress=False)
    return out


@pytest.fixture(scope="session")
def recommender(artifacts_dir: Path) -> Recommender:
    return Recommender(read_artifacts(artifacts_dir))


class LoopThread:
    """An asyncio loop on a background thread, for running the aio server under pytest."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="session")
def running_server(recommender: Recommender, loop_thread: LoopThread) -> Iterator[RunningServer]:
    running = loop_thread.run(build_server(recommender))
    yield running
    loop_thread.run(running.stop(None))


@pytest.fixture(scope="session")
def client(running_server: RunningServer) -> Iterator[Client]:
    with Client(f"127.0.0.1:{running_server.port}") as c:
        yield c


def require(path: Path) -> Path:
    """Skip (with the reason) when ../shared is absent; CI always has it."""
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing, and CI must have ../shared")
        pytest.skip(f"{path} not found (set MOVIEREC_SHARED to the shared/ folder)")
    return path


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, durable settings (AOF, appendfsync
    always); skipped where it is not installed, except in CI."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session's Redis, emptied for this test."""
    with redis.Redis(port=redis_server.port) as r:
        r.flushall()
    return redis_server.url()
