"""Build the gRPC server in one function, run it in another.

``build_server`` is what the tests and the benchmarks call; ``serve`` adds signals (and
``server.processes`` runs it in one or several processes): SIGHUP reloads the model from the
artifact directory; SIGTERM/SIGINT flip health to NOT_SERVING, wait a drain delay (load
balancers drop the endpoint at the moment SIGTERM arrives), then stop taking calls and let
in-flight calls finish within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import resource
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import faiss
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from movierec.artifacts import read_artifacts
from movierec.errors import UsageError
from movierec.v1 import recommender_pb2, recommender_pb2_grpc
from server.events import EventStore
from server.guard import MAX_STREAMS, CallGuard
from server.observability import (
    Metrics,
    MetricsServer,
    start_metrics_server,
    stop_metrics_server,
)
from server.options import ServerOptions
from server.recommender import Recommender
from server.security import ADMIN_TOKENS_ENV, Tokens, server_credentials
from server.service import AdminServicer, RecommenderServicer

log = logging.getLogger(__name__)
_SERVICES = recommender_pb2.DESCRIPTOR.services_by_name
RECOMMENDER_SERVICE = _SERVICES["RecommenderService"].full_name
ADMIN_SERVICE = _SERVICES["AdminService"].full_name  # served only when admin tokens are set
MAX_MESSAGE_BYTES = 1 << 20  # a 10,000-id history is ~100 kB; nothing legitimate nears 1 MiB
# grpc itself sheds past max_inflight + MAX_STREAMS + this many calls, before they are
# decoded or reach Python handlers (the cheapest refusal there is); the guard caps unary
# calls and streams separately, and the few between keep room for health checks, which the
# guard never sheds (probes have the health-only listener besides).
HEALTH_RESERVE = 4
HANDSHAKE_TIMEOUT_MS = 5_000  # a connection that says nothing is closed after this

Reload = Callable[[], Awaitable[tuple[str, str, float]]]


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    servicer: RecommenderServicer
    health: health.aio.HealthServicer
    metrics: Metrics
    metrics_port: int | None
    artifacts: Path | None  # what reload() re-reads
    pool: ThreadPoolExecutor | None
    store: EventStore | None = None
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None
    metrics_server: MetricsServer | None = None
    # Set by server.processes when several processes must reload together.
    coordinated_reload: Reload | None = None
    _reloading: asyncio.Task[tuple[str, str, float]] | None = field(default=None, repr=False)
    _queued: asyncio.Task[tuple[str, str, float]] | None = field(default=None, repr=False)

    async def stop(self, grace: float | None) -> None:
        """Stop taking calls, let in-flight ones finish within ``grace`` seconds."""
        stops = [self.server.stop(grace)]
        if self.health_server is not None:
            stops.append(self.health_server.stop(grace))
        await asyncio.gather(*stops)
        if self.metrics_server is not None:
            await asyncio.to_thread(stop_metrics_server, self.metrics_server)
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        if self.store is not None:
            await self.store.close()

    async def reload(self) -> tuple[str, str, float]:
        """Reload the model everywhere it is served: in this process, or in every process
        of the group. A call while a reload runs waits for one more that starts after it
        (the running one may have read the directory before the call's new artifact);
        every call that arrives meanwhile shares that one."""
        if self._reloading is None:
            task = self._reloading = asyncio.ensure_future(self._reload_after(None))
        else:
            if self._queued is None:
                self._queued = asyncio.ensure_future(self._reload_after(self._reloading))
            task = self._queued
        return await asyncio.shield(task)

    async def _reload_after(
        self, previous: asyncio.Task[tuple[str, str, float]] | None
    ) -> tuple[str, str, float]:
        if previous is not None:
            await asyncio.wait([previous])
        try:
            return await (self.coordinated_reload or self._reload_here)()
        finally:  # the queued reload (if any) is now the running one
            self._reloading, self._queued = self._queued, None

    async def prepare(self) -> Recommender:
        """Verify and load the artifact directory (the old model keeps serving meanwhile)."""
        if self.artifacts is None:
            raise RuntimeError("this server was not started from an artifact directory")
        try:
            return await _in_daemon_thread(load_recommender, self.artifacts)
        except Exception as e:
            self.metrics.reloads.labels("refused").inc()
            log.error("reload refused, still serving %s: %s", self.model_version, e)
            raise

    def commit(self, new: Recommender, seconds: float) -> str:
        """Serve ``new`` from now on (one assignment); returns the previous version."""
        previous = self.model_version
        self.servicer.recommender = new
        self.metrics.model_loaded(new.model_version, seconds)
        self.metrics.reloads.labels("ok").inc()
        log.info("reloaded: serving %s (was %s), %.2fs", new.model_version, previous, seconds)
        return previous

    @property
    def model_version(self) -> str:
        return self.servicer.recommender.model_version

    async def _reload_here(self) -> tuple[str, str, float]:
        start = time.perf_counter()
        new = await self.prepare()
        seconds = time.perf_counter() - start
        return new.model_version, self.commit(new, seconds), seconds


def load_recommender(artifacts: Path) -> Recommender:
    return Recommender(read_artifacts(artifacts))


async def _in_daemon_thread(fn: Callable[[Path], Recommender], path: Path) -> Recommender:
    """``fn(path)`` in a daemon thread: unlike asyncio.to_thread's pool, which the loop joins
    on exit, a SIGTERM during a slow reload does not wait for the load to finish."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Recommender] = loop.create_future()

    def settle(result: Recommender | None, error: BaseException | None) -> None:
        if done.cancelled():
            return
        if error is not None:
            done.set_exception(error)
        else:
            done.set_result(result)  # type: ignore[arg-type]

    def work() -> None:
        try:
            result, error = fn(path), None
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
            result, error = None, e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=work, name="movierec-reload", daemon=True).start()
    return await done


async def build_server(
    recommender: Recommender,
    options: ServerOptions | None = None,
    artifacts: Path | None = None,
    load_seconds: float = 0.0,
    store: EventStore | None = None,
    reuse_port: bool = False,
) -> RunningServer:
    """A started, SERVING server (``options.port`` 0 picks a free one); ``artifacts`` is the
    directory ``reload`` re-reads, ``load_seconds`` how long loading ``recommender`` took (a
    metric), ``store`` where recorded events live (None: none are kept),
    ``reuse_port`` lets the processes of one group share the port."""
    options = options or ServerOptions(port=0)
    # One OpenMP thread per search: parallelism comes from concurrent calls and processes.
    # The setting is per thread, so the workers set it too: left at FAISS's default (every
    # core) a worker's single query spun a second core (62k: Recommend c=1 p50 3.4 vs 2.8 ms).
    faiss.omp_set_num_threads(1)
    max_connections = _raise_open_file_limit(options.max_connections)
    tokens = Tokens.load(options.tokens_file)
    admin_tokens = Tokens.load(options.admin_tokens_file, variable=ADMIN_TOKENS_ENV)
    metrics = Metrics()
    guard = CallGuard(metrics, tokens, admin_tokens, options.max_inflight)
    idle_ms = int(options.idle_timeout * 1000)
    server = grpc.aio.server(
        maximum_concurrent_rpcs=options.max_inflight + MAX_STREAMS + HEALTH_RESERVE,
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", int(reuse_port)),  # else a port clash is an error
            ("grpc.max_allowed_incoming_connections", max_connections),
            ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
            *([("grpc.max_connection_idle_ms", idle_ms)] if idle_ms else []),
        ],
    )
    pool = None
    if options.threads > 0:
        pool = ThreadPoolExecutor(
            options.threads, "movierec-worker", faiss.omp_set_num_threads, (1,)
        )
    servicer = RecommenderServicer(recommender, pool, store, options.max_events_per_user)
    health_servicer = health.aio.HealthServicer()
    guard.register(server, recommender_pb2_grpc.add_RecommenderServiceServicer_to_server, servicer)
    guard.register(server, health_pb2_grpc.add_HealthServicer_to_server, health_servicer)
    services = (RECOMMENDER_SERVICE, *([ADMIN_SERVICE] if admin_tokens.enabled else []))
    names = (*services, health.SERVICE_NAME, reflection.SERVICE_NAME)
    guard.register(server, reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
                   reflection.aio.ReflectionServicer(names))  # fmt: skip
    credentials = None
    if options.tls_cert and options.tls_key:
        credentials = server_credentials(options.tls_cert, options.tls_key, options.tls_client_ca)
    elif (tokens.enabled or admin_tokens.enabled) and not _is_loopback(options.host):
        log.warning(
            "bearer tokens are accepted over plaintext on %s: anyone on the network path can "
            "read them; serve TLS (--tls-cert, --tls-key)", options.host,
        )  # fmt: skip
    port = _listen(server, options, options.port, credentials)
    health_server, health_port = None, None
    if options.health_port is not None:  # plaintext, health only: for probes under mTLS
        health_server = grpc.aio.server(options=[("grpc.so_reuseport", int(reuse_port))])
        guard.register(health_server, health_pb2_grpc.add_HealthServicer_to_server,
                       health_servicer)  # fmt: skip
        health_port = _listen(health_server, options, options.health_port, None)
    metrics_server = None
    if options.metrics_port is not None:
        metrics_server = start_metrics_server(metrics, options.metrics_host, options.metrics_port)
    running = RunningServer(
        server, port, servicer, health_servicer, metrics,
        metrics_server.server_port if metrics_server else None, artifacts, pool, store,
        health_server, health_port, metrics_server,
    )  # fmt: skip
    if admin_tokens.enabled:
        guard.register(server, recommender_pb2_grpc.add_AdminServiceServicer_to_server,
                       AdminServicer(running.reload))  # fmt: skip
    metrics.model_loaded(recommender.model_version, load_seconds)
    await server.start()
    if health_server is not None:
        await health_server.start()
    for name in ("", *services):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return running


async def serve(
    running: RunningServer,
    options: ServerOptions,
    on_ready: Callable[[RunningServer], None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down in order and return. SIGHUP reloads;
    A SIGHUP that arrived while the model was loading (``remember_hup_until_serving``) is
    honoured now."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task[object]] = set()

    def reload_on_hup() -> None:
        task = asyncio.ensure_future(_logged_reload(running))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_on_hup)
    if take_pending_hup():  # after the handler: a SIGHUP from now on is the handler's
        log.info(HUP_HONOURED)
        reload_on_hup()
    log.info(
        "serving model %s on %s%s%s",
        running.model_version, options.address(running.port),
        f", health on port {running.health_port}" if running.health_port else "",
        f", metrics on port {running.metrics_port}" if running.metrics_port else "",
    )  # fmt: skip
    if on_ready:
        on_ready(running)
    await stop.wait()
    log.info(
        "shutting down: NOT_SERVING, draining %.1fs, then %.1fs grace", options.drain, options.grace
    )
    await running.health.enter_graceful_shutdown()
    await asyncio.sleep(options.drain)
    await running.stop(options.grace)
    log.info("stopped")


# SIGHUP's default action kills the process: until serving starts, only remember it.
_hup_pending = False
HUP_HONOURED = "a SIGHUP arrived during start-up: reloading now"


def remember_hup_until_serving() -> None:
    """Call first thing: a SIGHUP during start-up then reloads once serving has begun."""

    def remember(sig: int, frame: FrameType | None) -> None:
        global _hup_pending
        _hup_pending = True

    signal.signal(signal.SIGHUP, remember)


def take_pending_hup() -> bool:
    """Whether a SIGHUP was remembered, forgetting it."""
    global _hup_pending
    pending, _hup_pending = _hup_pending, False
    return pending


async def _logged_reload(running: RunningServer) -> None:
    with contextlib.suppress(Exception):  # reload() logged it; the old model keeps serving
        await running.reload()


def _listen(
    server: grpc.aio.Server,
    options: ServerOptions,
    port: int,
    credentials: grpc.ServerCredentials | None,
) -> int:
    address = options.address(port)
    try:
        if credentials is not None:
            bound = server.add_secure_port(address, credentials)
        else:
            bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise UsageError(
            f"cannot listen on {address}: the port is in use, or {options.host} is not an "
            "address of this machine"
        )
    return bound


def _raise_open_file_limit(max_connections: int) -> int:
    """Raise this process's open-file limit to its hard maximum (every connection is a file;
    the common soft limit of 1,024 let 1,100 idle connections lock health checks out), and
    return how many connections fit under it with room for the model's files and the
    store."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    fits = max(16, soft - 256)
    if max_connections > fits:
        log.warning("--max-connections %d lowered to %d by the open-file limit", max_connections,
                    fits)  # fmt: skip
    return min(max_connections, fits)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
