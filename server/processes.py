"""Run the server in one process, or in several sharing one port and one loaded model.

Python serves one call at a time per interpreter (the GIL), so on a multi-core machine
several processes answer more: the model is loaded once, then ``processes`` children are
forked; each listens on the same port (SO_REUSEPORT, the kernel spreads connections) and
shares the parent's model memory copy-on-write (nothing writes to the vectors or the index).

The parent supervises: it forwards SIGTERM and SIGINT, stops the group if a child dies, and
coordinates reloads so that they reach every process or none. A reload (SIGHUP to any
process, or ReloadModel answered by any child) runs in two phases over a socket per child:
every child loads and verifies the new model beside the old one ("prepare"); only if all
succeed with the same model version does every child switch ("commit"), else all drop it
("abort"), as they do when a round times out. The caller is answered once every child has
switched. A request during a round is answered by the next round, which starts after it.
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
    # The children hold the model now; the parent never serves, and its copy would outlive
    # the children's reloads (their pages are their own once they switch).
    del recommender
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
    commits or drops a new model when the parent says so. Every message of a round carries
    the round's number; a late message of an earlier round changes nothing."""

    def __init__(self, control: socket.socket, running: RunningServer) -> None:
        self._control, self._running = control, running
        self._round: int | None = None  # the round being prepared; None once it ended
        self._prepared: tuple[int, Recommender, float] | None = None
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
        if not raw:  # the supervisor is gone (killed, or OOM): stop, as it would have said
            asyncio.get_running_loop().remove_reader(self._control.fileno())
            log.error("the supervising process exited; stopping")
            os.kill(os.getpid(), signal.SIGTERM)  # serve()'s graceful shutdown
            return
        message = json.loads(raw)
        op, number = message["op"], message.get("round", 0)
        if op == "prepare":
            self._round, self._prepared = number, None
            task = asyncio.ensure_future(self._prepare(number))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif op == "commit":
            prepared, self._prepared = self._prepared, None
            if prepared is None or prepared[0] != number:
                self._send(op="committed", round=number, ok=False)
                return
            _, new, seconds = prepared
            self._running.commit(new, seconds)
            self._send(op="committed", round=number, ok=True)
        elif op == "abort" and number == self._round:
            # a load still running for this round is dropped when it ends, not kept
            self._round, self._prepared = None, None
        elif op == "result":
            waiting, self._waiting = self._waiting, []
            for answer in waiting:
                answer.set_result(message)

    async def _prepare(self, number: int) -> None:
        start = time.perf_counter()
        try:
            new = await self._running.prepare()
        except Exception as e:
            self._send(op="prepared", round=number, ok=False, error=str(e))
            return
        seconds = time.perf_counter() - start
        if number != self._round:  # aborted, or a later round began: drop it
            return
        self._prepared = (number, new, seconds)
        self._send(op="prepared", round=number, ok=True, version=new.model_version,
                   seconds=seconds)  # fmt: skip


@dataclass
class _Round:
    number: int
    requesters: set[int]  # children waiting for the answer (none for a SIGHUP to the parent)
    waiting: set[int]
    phase: str = "prepare"
    prepared: dict[int, dict[str, Any]] = field(default_factory=dict)
    deadline: float = field(default_factory=lambda: time.monotonic() + ROUND_TIMEOUT)


class _Supervisor:
    """The parent: forwards signals, runs reload rounds, stops the group if a child dies.

    One round at a time. A reload asked for while a round runs is answered by one more
    round after it (the running one may have read the directory before the new artifact
    landed); every request that arrives meanwhile shares that round."""

    def __init__(
        self, children: dict[int, socket.socket], on_ready: Ready | None, hup: bool
    ) -> None:
        self.children = children
        self.on_ready = on_ready
        self.ready: list[dict[str, Any]] = []
        self.round: _Round | None = None
        self.rounds = 0
        # the next round's requesters; None: no next round (a SIGHUP adds no requester)
        self.queued: set[int] | None = set() if hup else None
        self.hup_at_start = hup
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
            self.check_deadline()
        return 1 if self.failed else 0

    def check_deadline(self) -> None:
        if self.round is not None and time.monotonic() > self.round.deadline:
            self._fail(f"no answer from every process in {ROUND_TIMEOUT:.0f}s")

    def _signals(self) -> None:
        with contextlib.suppress(BlockingIOError):
            for sig in self._wake_r.recv(64):
                if sig == signal.SIGHUP:
                    self.request(None)
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
        self.handle(pid, json.loads(raw))

    def handle(self, pid: int, message: dict[str, Any]) -> None:
        """One message from child ``pid``."""
        op = message["op"]
        if op == "ready":
            self.ready.append(message)
            if len(self.ready) == len(self.children):
                first = self.ready[0]
                if self.on_ready is not None:
                    self.on_ready(first["port"], first["health_port"], first["metrics_port"])
                if self.hup_at_start:
                    log.info(app.HUP_HONOURED)
                if self.queued is not None:
                    self._start_queued()
            return
        if op == "reload":
            self.request(pid)
            return
        r = self.round
        if r is None or message.get("round") != r.number or pid not in r.waiting:
            return  # a late answer to a round that has ended
        r.waiting.discard(pid)
        if op == "prepared" and r.phase == "prepare":
            r.prepared[pid] = message
            if not message["ok"]:
                self._fail(message["error"])
            elif not r.waiting:
                self._decide()
        elif op == "committed" and r.phase == "commit":
            if not message["ok"]:
                # cannot happen unless a process lost its prepared model; the group now
                # serves mixed versions, so say so loudly
                self._finish(False, error=f"server process {pid} could not switch models")
            elif not r.waiting:
                prepared = list(r.prepared.values())
                seconds = max(p["seconds"] for p in prepared)
                self._finish(True, version=prepared[0]["version"], seconds=seconds)

    def request(self, requester: int | None) -> None:
        """A reload asked for by child ``requester`` (None: a SIGHUP to the parent)."""
        self.queued = self.queued or set()
        if requester is not None:
            self.queued.add(requester)
        if self.round is None and len(self.ready) == len(self.children):
            self._start_queued()

    def _start_queued(self) -> None:
        requesters, self.queued = self.queued or set(), None
        self.rounds += 1
        self.round = _Round(self.rounds, requesters, set(self.children))
        self._broadcast(op="prepare", round=self.round.number)

    def _decide(self) -> None:
        assert self.round is not None
        versions = {r["version"] for r in self.round.prepared.values()}
        if len(versions) != 1:
            self._fail("the artifact directory changed during the reload; try again")
            return
        self.round.phase, self.round.waiting = "commit", set(self.children)
        self._broadcast(op="commit", round=self.round.number)

    def _fail(self, error: str) -> None:
        """End the round unswitched: every process drops what it prepared."""
        assert self.round is not None
        if self.round.phase == "prepare":
            self._broadcast(op="abort", round=self.round.number)
        self._finish(False, error=error)

    def _finish(self, ok: bool, **result: Any) -> None:
        assert self.round is not None
        for pid in self.round.requesters:
            if pid in self.children:
                with contextlib.suppress(OSError):
                    _send(self.children[pid], op="result", ok=ok, **result)
        if ok:
            log.info("reloaded in every process: serving %s", result["version"])
        else:
            log.error("reload refused, every process keeps its model: %s", result["error"])
        self.round = None
        if self.queued is not None:
            self._start_queued()

    def _exited(self, pid: int, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        sock.close()
        del self.children[pid]
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        if code != 0 or not self.stopping:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            log.error("server process %d %s; stopping the others", pid, how)
            self.failed = True
            if not self.stopping:
                self.stopping = True
                self._broadcast_signal(signal.SIGTERM)
        if self.round is not None:
            self.queued = None  # the group is stopping: no more rounds
            self._fail("a server process exited during the reload")

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
    both bind and split the traffic between two models). Port 0 becomes a free port. The
    health-only port is claimed the same way."""
    port = _claim(options.host, options.port, options.processes > 1)
    health_port = options.health_port
    if health_port is not None:
        health_port = _claim(options.host, health_port, options.processes > 1)
    return _replace(options, port=port, health_port=health_port)


def _claim(host: str, port: int, group: bool) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    # As grpc does: connections of a previous run in TIME_WAIT do not hold the port.
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        probe.bind((host, port))
        port = probe.getsockname()[1]
    except OSError as e:
        where = f"{host} port {port}"
        if e.errno == errno.EADDRINUSE:
            raise UsageError(f"cannot listen on {where}: something already listens there") from None
        if e.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"cannot listen on {where}: {host} is not an address of "
                             "this machine") from None  # fmt: skip
        raise UsageError(f"cannot listen on {where}: {e.strerror}") from None
    finally:
        probe.close()
    if group:
        _group_lock(port)
    return port


_locks: list[socket.socket] = []  # held for the life of the process


def _group_lock(port: int) -> None:
    """An abstract unix socket named after the port (not the address: groups on 0.0.0.0
    and 127.0.0.1 would share connections to the same port): the kernel lets one process
    group bind it and frees it when the last holder exits, however it exits."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0movierec-serve-{port}")
    except OSError:
        lock.close()
        raise UsageError(
            f"cannot listen on port {port}: another movierec server group serves it"
        ) from None
    _locks.append(lock)


def _replace(options: ServerOptions, **changes: Any) -> ServerOptions:
    return dataclasses.replace(options, **changes)
