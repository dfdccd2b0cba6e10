"""Run the server in one process, or in several sharing one port and one loaded model.

Python serves one call at a time per interpreter (the GIL), so on a multi-core machine
several processes answer more: the model is loaded once, then ``processes`` children are
forked; each listens on the same port (SO_REUSEPORT, the kernel spreads connections) and
shares the parent's model memory copy-on-write (nothing writes to the vectors or the index).

The parent supervises: it forwards SIGTERM and SIGINT, stops the group if a child dies, and
coordinates reloads so that they reach every process or none. A reload (SIGHUP to any
process, or ReloadModel answered by any child) runs in two phases over a socket per child:
every child loads and verifies the new model beside the old one ("prepare"); only if all
succeed with the same model version does every child switch ("commit"), else all drop it.
The caller is answered once every child has switched. Concurrent requests join the round.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import gc
import json
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from movierec.errors import UsageError
from server import app
from server.app import RunningServer, build_server, load_recommender, serve
from server.events import EventStore
from server.options import ServerOptions
from server.recommender import Recommender

log = logging.getLogger(__name__)
ROUND_TIMEOUT = 900.0  # seconds a reload round may take (an HNSW index of 1M movies is slow)
OpenStore = Callable[[ServerOptions], EventStore]
Ready = Callable[[int, int | None, int | None], None]  # (port, health port, metrics port)


def run(
    artifacts: Path, options: ServerOptions, open_store: OpenStore, on_ready: Ready | None = None
) -> int:
    """Load, serve until signalled, return the exit status. ``on_ready`` is called once
    every process is serving."""
    options = _claim_port(options)
    asyncio.run(_try_store(open_store, options))  # refused in one line, before the slow load
    log.info("loading %s", artifacts)
    start = time.perf_counter()
    recommender = load_recommender(artifacts)
    seconds = time.perf_counter() - start
    log.info("loaded model %s in %.2fs", recommender.model_version, seconds)
    # The model's objects (a Movie per catalogue row, ...) live as long as the process:
    # out of the cyclic collector's sight, its full collections stop walking them, and
    # forked children stop touching (copying) their pages.
    gc.freeze()
    if options.processes == 1:
        asyncio.run(_serve(recommender, artifacts, options, seconds, open_store, on_ready))
        return 0
    hup = app.take_pending_hup()  # the parent coordinates that reload, not each child
    children: dict[int, socket.socket] = {}
    for i in range(options.processes):
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # a child: serve, never return
            parent_end.close()
            for other in children.values():
                other.close()
            child = options
            if options.metrics_port:  # one metrics port per process
                child = _replace(options, metrics_port=options.metrics_port + i)
            status = 0
            try:
                asyncio.run(_serve(recommender, artifacts, child, seconds, open_store, None,
                                   child_end))  # fmt: skip
            except BaseException:
                log.exception("server process %d failed", os.getpid())
                status = 1
            os._exit(status)
        child_end.close()
        children[pid] = parent_end
    return _Supervisor(children, on_ready, hup).run()


async def _try_store(open_store: OpenStore, options: ServerOptions) -> None:
    """Open and close the event store once, so that a bad URL or an unreachable store is
    refused at start, before the model loads and before any fork."""
    await open_store(options).close()


async def _serve(
    recommender: Recommender,
    artifacts: Path,
    options: ServerOptions,
    seconds: float,
    open_store: OpenStore,
    on_ready: Ready | None,
    control: socket.socket | None = None,
) -> None:
    store = open_store(options)  # here: every process needs its own connection
    running = await build_server(
        recommender, options, artifacts, seconds, store, reuse_port=control is not None
    )

    def ready(running: RunningServer) -> None:
        if on_ready is not None:
            on_ready(running.port, running.health_port, running.metrics_port)

    if control is not None:
        member = _Member(control, running)
        running.coordinated_reload = member.reload
        ready = member.ready  # the parent reports once every process is ready
    await serve(running, options, ready)


class _Member:
    """A child's end of the reload protocol: asks the parent for reloads, and prepares,
    commits or drops a new model when the parent says so."""

    def __init__(self, control: socket.socket, running: RunningServer) -> None:
        self._control, self._running = control, running
        self._prepared: tuple[Recommender, float] | None = None
        self._waiting: list[asyncio.Future[dict[str, Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        control.setblocking(False)
        asyncio.get_running_loop().add_reader(control.fileno(), self._receive)

    def ready(self, running: RunningServer) -> None:
        self._send(op="ready", port=running.port, health_port=running.health_port,
                   metrics_port=running.metrics_port)  # fmt: skip

    async def reload(self) -> tuple[str, str, float]:
        previous = self._running.model_version
        answer = asyncio.get_running_loop().create_future()
        self._waiting.append(answer)
        self._send(op="reload")
        result = await answer
        if not result["ok"]:
            raise RuntimeError(result["error"])
        return result["version"], previous, result["seconds"]

    def _send(self, **message: Any) -> None:
        self._control.send(json.dumps(message).encode())

    def _receive(self) -> None:
        try:
            raw = self._control.recv(65536)
        except BlockingIOError:
            return
        if not raw:  # the parent is gone: nothing will coordinate reloads any more
            asyncio.get_running_loop().remove_reader(self._control.fileno())
            return
        message = json.loads(raw)
        op = message["op"]
        if op == "prepare":
            task = asyncio.ensure_future(self._prepare())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif op == "commit" and self._prepared is not None:
            new, seconds = self._prepared
            self._prepared = None
            self._running.commit(new, seconds)
            self._send(op="committed")
        elif op == "abort":
            self._prepared = None
        elif op == "result":
            waiting, self._waiting = self._waiting, []
            for answer in waiting:
                answer.set_result(message)

    async def _prepare(self) -> None:
        start = time.perf_counter()
        try:
            new = await self._running.prepare()
        except Exception as e:
            self._send(op="prepared", ok=False, error=str(e))
            return
        seconds = time.perf_counter() - start
        self._prepared = (new, seconds)
        self._send(op="prepared", ok=True, version=new.model_version, seconds=seconds)


@dataclass
class _Round:
    requesters: set[int]  # children waiting for the answer (none for a SIGHUP to the parent)
    waiting: set[int]
    phase: str = "prepare"
    prepared: dict[int, dict[str, Any]] = field(default_factory=dict)
    deadline: float = field(default_factory=lambda: time.monotonic() + ROUND_TIMEOUT)


class _Supervisor:
    """The parent: forwards signals, runs reload rounds, stops the group if a child dies."""

    def __init__(
        self, children: dict[int, socket.socket], on_ready: Ready | None, hup: bool
    ) -> None:
        self.children = children
        self.on_ready = on_ready
        self.ready: list[dict[str, Any]] = []
        self.hup_queued = hup  # a SIGHUP during start-up: reload once all are ready
        self.round: _Round | None = None
        self.queued: set[int] = set()  # requesters that arrived during a commit
        self.stopping = False
        self.failed = False
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def run(self) -> int:
        signal.set_wakeup_fd(self._wake_w.fileno())
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)  # woken through the wakeup fd instead
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        for pid, sock in self.children.items():
            self.selector.register(sock, selectors.EVENT_READ, pid)
        while self.children:
            timeout = (
                None if self.round is None else max(0.0, self.round.deadline - time.monotonic())
            )
            for key, _ in self.selector.select(timeout):
                if key.data is None:
                    self._signals()
                else:
                    self._message(key.data, key.fileobj)  # type: ignore[arg-type]
            if self.round is not None and time.monotonic() > self.round.deadline:
                self._finish(False, error=f"no answer from every process in {ROUND_TIMEOUT:.0f}s")
        return 1 if self.failed else 0

    def _signals(self) -> None:
        with contextlib.suppress(BlockingIOError):
            for sig in self._wake_r.recv(64):
                if sig == signal.SIGHUP:
                    self._request(None)
                else:
                    self.stopping = True
                    self._broadcast_signal(sig)

    def _message(self, pid: int, sock: socket.socket) -> None:
        try:
            raw = sock.recv(65536)
        except ConnectionResetError:
            raw = b""
        if not raw:
            self._exited(pid, sock)
            return
        message = json.loads(raw)
        op = message["op"]
        if op == "ready":
            self.ready.append(message)
            if len(self.ready) == len(self.children):
                first = self.ready[0]
                if self.on_ready is not None:
                    self.on_ready(first["port"], first["health_port"], first["metrics_port"])
                if self.hup_queued:
                    self.hup_queued = False
                    self._request(None)
        elif op == "reload":
            self._request(pid)
        elif op == "prepared" and self.round is not None and self.round.phase == "prepare":
            self.round.prepared[pid] = message
            self.round.waiting.discard(pid)
            if not self.round.waiting:
                self._decide()
        elif op == "committed" and self.round is not None and self.round.phase == "commit":
            self.round.waiting.discard(pid)
            if not self.round.waiting:
                prepared = list(self.round.prepared.values())
                seconds = max(p["seconds"] for p in prepared)
                self._finish(True, version=prepared[0]["version"], seconds=seconds)

    def _request(self, requester: int | None) -> None:
        if self.round is not None and self.round.phase == "prepare":
            if requester is not None:
                self.round.requesters.add(requester)  # join the round in progress
            return
        if self.round is not None:  # committing: the next round starts after it
            if requester is None:
                self.hup_queued = True
            else:
                self.queued.add(requester)
            return
        self.round = _Round({requester} - {None}, set(self.children))  # type: ignore[arg-type]
        self._broadcast(op="prepare")

    def _decide(self) -> None:
        assert self.round is not None
        results = list(self.round.prepared.values())
        failures = [r["error"] for r in results if not r["ok"]]
        versions = {r["version"] for r in results if r["ok"]}
        if failures or len(versions) != 1:
            self._broadcast(op="abort")
            reason = failures[0] if failures else (
                "the artifact directory changed during the reload; try again")  # fmt: skip
            self._finish(False, error=reason)
            return
        self.round.phase, self.round.waiting = "commit", set(self.children)
        self._broadcast(op="commit")

    def _finish(self, ok: bool, **result: Any) -> None:
        assert self.round is not None
        for pid in self.round.requesters:
            if pid in self.children:
                _send(self.children[pid], op="result", ok=ok, **result)
        if ok:
            log.info("reloaded in every process: serving %s", result["version"])
        else:
            log.error("reload refused, every process keeps its model: %s", result["error"])
        self.round = None
        if self.queued or self.hup_queued:
            queued, self.queued, self.hup_queued = self.queued, set(), False
            self._request(None)
            assert self.round is not None
            self.round.requesters |= queued

    def _exited(self, pid: int, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        sock.close()
        del self.children[pid]
        _, status = os.waitpid(pid, 0)
        if status != 0 or not self.stopping:
            log.error("server process %d exited (status %d); stopping the others", pid, status)
            self.failed = True
            if not self.stopping:
                self.stopping = True
                self._broadcast_signal(signal.SIGTERM)
        if self.round is not None:
            self.round.waiting.discard(pid)
            self.round.prepared.pop(pid, None)
            self._finish(False, error="a server process exited during the reload")

    def _broadcast(self, **message: Any) -> None:
        for sock in self.children.values():
            with contextlib.suppress(OSError):
                _send(sock, **message)

    def _broadcast_signal(self, sig: int) -> None:
        for pid in self.children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _send(sock: socket.socket, **message: Any) -> None:
    sock.send(json.dumps(message).encode())


def _claim_port(options: ServerOptions) -> ServerOptions:
    """Refuse a port something else listens on, with one line, before loading the model;
    for a group of processes also one another movierec group holds (SO_REUSEPORT would let
    both bind and split the traffic between two models). Port 0 becomes a free port."""
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    # As grpc does: connections of a previous run in TIME_WAIT do not hold the port.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((options.host, options.port))
        port = probe.getsockname()[1]
    except OSError as e:
        where = f"{options.host} port {options.port}"
        if e.errno == errno.EADDRINUSE:
            raise UsageError(f"cannot listen on {where}: something already listens there") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"cannot listen on {where}: {options.host} is not an address of "
                             "this machine") from None  # fmt: skip
        raise UsageError(f"cannot listen on {where}: {e.strerror}") from None
    finally:
        probe.close()
    if options.processes > 1:
        _group_lock(options.host, port)
    return _replace(options, port=port)


_locks: list[socket.socket] = []  # held for the life of the process


def _group_lock(host: str, port: int) -> None:
    """An abstract unix socket named after the address: the kernel lets one process group
    bind it and frees it when the last holder exits, however it exits."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0movierec-serve-{host}-{port}")
    except OSError:
        lock.close()
        raise UsageError(
            f"cannot listen on {host} port {port}: another movierec server group serves it"
        ) from None
    _locks.append(lock)


def _replace(options: ServerOptions, **changes: Any) -> ServerOptions:
    return dataclasses.replace(options, **changes)
