"""Run the server in one process, or in several sharing one port and one loaded model.

Python serves one call at a time per interpreter (the GIL), so on a multi-core machine
several processes answer more: the model is loaded once, then ``processes`` children are
forked; each listens on the same port (SO_REUSEPORT, the kernel spreads connections) and
shares the parent's model memory copy-on-write (nothing writes to the vectors or the index).
The parent forwards SIGTERM, SIGINT and SIGHUP to the children and exits once they have.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from server.app import ServerOptions, load_recommender, serve

log = logging.getLogger(__name__)


def run(
    artifacts: Path,
    options: ServerOptions,
    processes: int = 1,
    grace: float = 10.0,
    drain: float = 0.0,
    on_ready: Callable[[int, int | None], None] | None = None,
) -> int:
    """Load, serve until signalled, return the exit status. ``on_ready(port, metrics_port)``
    is called once every process is serving."""
    start = time.perf_counter()
    recommender = load_recommender(artifacts)
    seconds = time.perf_counter() - start
    if processes == 1:
        asyncio.run(serve(recommender, artifacts, options, seconds, grace, drain, on_ready))
        return 0
    host, _, port = options.address.rpartition(":")
    port = port if port != "0" else str(_free_port(host))
    options = dataclasses.replace(options, address=f"{host}:{port}", reuse_port=True)
    ready_r, ready_w = os.pipe()
    children = []
    for i in range(processes):
        pid = os.fork()
        if pid == 0:  # a child: serve, report readiness through the pipe, never return
            os.close(ready_r)
            metrics = options.metrics_port
            child = dataclasses.replace(options, metrics_port=metrics + i if metrics else metrics)
            status = 0

            def report_ready(port: int, metrics_port: int | None) -> None:
                os.write(ready_w, b".")

            try:
                asyncio.run(
                    serve(recommender, artifacts, child, seconds, grace, drain, report_ready)
                )
            except BaseException:
                log.exception("server process %d failed", os.getpid())
                status = 1
            os._exit(status)
        children.append(pid)
    os.close(ready_w)

    def forward(sig: int, frame: FrameType | None) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):  # it has exited already
                os.kill(pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    ready = 0
    while ready < processes and (chunk := os.read(ready_r, processes)):
        ready += len(chunk)
    os.close(ready_r)
    if ready == processes and on_ready:
        on_ready(int(port), options.metrics_port)
    statuses = [os.waitpid(pid, 0)[1] for pid in children]
    return 0 if ready == processes and not any(statuses) else 1


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host.strip("[]"), 0))
        return int(s.getsockname()[1])
