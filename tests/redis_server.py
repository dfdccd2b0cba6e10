"""A real redis-server for tests: its own loopback port and data directory, durable settings
(AOF, fsync on every write, no RDB snapshots), killed or restarted at will."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis


def require_redis_server() -> str:
    """The redis-server binary; skips where it is not installed, but fails in CI (.ci/run
    installs it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed, and CI must have it (.ci/run installs it)")
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    return binary


class RedisServer:
    def __init__(self, directory: Path, *extra: str) -> None:
        self.binary = require_redis_server()
        self.directory = directory
        self.extra = extra
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        """Start (again, from the append-only file in the same directory) and wait for it."""
        self.proc = subprocess.Popen(
            [
                self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always",
                "--save", "", "--logfile", str(self.directory / "redis.log"), *self.extra,
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.dbsize()  # answers once the append-only file is loaded
                    return
                except redis.ConnectionError:  # not listening yet, or still loading
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        log = (self.directory / "redis.log").read_text()
                        raise RuntimeError(f"redis-server did not start: {log}") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync, what a crash leaves."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
