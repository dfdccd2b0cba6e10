"""Build the gRPC server in one function, run it in another.

``build_server`` is what the tests and the benchmarks call; ``serve`` adds signals (and
``server.processes`` runs it in one or several processes):
SIGHUP reloads the model from the artifact directory; SIGTERM/SIGINT flip health to
NOT_SERVING, wait a drain delay (load balancers drop the endpoint at the moment SIGTERM
arrives), then stop taking calls and let in-flight calls finish within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from movierec.artifacts import read_artifacts
from movierec.v1 import recommender_pb2, recommender_pb2_grpc
from server.interceptor import CallGuard
from server.observability import Metrics, start_metrics_server
from server.recommender import Recommender
from server.security import Tokens, server_credentials
from server.service import AdminServicer, RecommenderServicer

log = logging.getLogger(__name__)
SERVICE_NAMES = tuple(s.full_name for s in recommender_pb2.DESCRIPTOR.services_by_name.values())
MAX_MESSAGE_BYTES = 1 << 20  # a 10,000-id history is ~100 kB; nothing legitimate nears 1 MiB


@dataclass(frozen=True)
class ServerOptions:
    address: str = "127.0.0.1:0"  # host:port; port 0 picks a free one
    max_inflight: int = 64  # calls in progress before new ones get RESOURCE_EXHAUSTED
    workers: int = 2  # threads running the core (FAISS releases the GIL); 0: on the event loop
    tokens: Tokens = field(default_factory=Tokens)  # bearer tokens; none = no authentication
    tls_cert: Path | None = None  # with tls_key: serve TLS
    tls_key: Path | None = None
    tls_client_ca: Path | None = None  # also require client certificates signed by this CA
    metrics_port: int | None = None  # serve Prometheus /metrics on this port (0: any free)
    reuse_port: bool = False  # let several processes listen on the same port


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
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def stop(self, grace: float | None) -> None:
        """Stop taking calls, let in-flight ones finish within ``grace`` seconds."""
        await self.server.stop(grace)
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    async def reload(self) -> tuple[str, str, float]:
        """Verify and load the artifact directory again, then swap the model in one
        assignment. Returns (new version, previous version, load seconds); on any error
        the old model keeps serving and the error propagates."""
        if self.artifacts is None:
            raise RuntimeError("this server was not started from an artifact directory")
        async with self._reload_lock:
            previous = self.servicer.recommender.model_version
            start = time.perf_counter()
            try:
                new = await asyncio.to_thread(load_recommender, self.artifacts)
            except Exception as e:
                self.metrics.reloads.labels("refused").inc()
                log.error("reload refused, still serving %s: %s", previous, e)
                raise
            seconds = time.perf_counter() - start
            self.servicer.recommender = new
            self.metrics.model_loaded(new.model_version, seconds)
            self.metrics.reloads.labels("ok").inc()
            log.info("reloaded: serving %s (was %s), %.2fs", new.model_version, previous, seconds)
            return new.model_version, previous, seconds


def load_recommender(artifacts: Path) -> Recommender:
    return Recommender(read_artifacts(artifacts))


async def build_server(
    recommender: Recommender,
    options: ServerOptions = ServerOptions(),
    artifacts: Path | None = None,
    load_seconds: float = 0.0,
) -> RunningServer:
    """A started, SERVING server (``options.address`` with port 0 picks a free one);
    ``artifacts`` is the directory ``reload`` re-reads, ``load_seconds`` how long loading
    ``recommender`` took (a metric)."""
    # One OpenMP thread per search: parallelism comes from concurrent calls and processes.
    # The setting is per thread, so the workers set it too: left at FAISS's default (every
    # core) a worker's single query spun a second core (62k: Recommend c=1 p50 3.4 vs 2.8 ms).
    faiss.omp_set_num_threads(1)
    metrics = Metrics()
    server = grpc.aio.server(
        interceptors=[CallGuard(metrics, options.tokens, options.max_inflight)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # One process: a port clash is an error, not a silently shared port.
            ("grpc.so_reuseport", int(options.reuse_port)),
        ],
    )
    pool = None
    if options.workers > 0:
        pool = ThreadPoolExecutor(
            options.workers, "movierec-worker", faiss.omp_set_num_threads, (1,)
        )
    servicer = RecommenderServicer(recommender, pool)
    recommender_pb2_grpc.add_RecommenderServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    if options.tls_cert and options.tls_key:
        credentials = server_credentials(options.tls_cert, options.tls_key, options.tls_client_ca)
        port = server.add_secure_port(options.address, credentials)
    else:
        port = server.add_insecure_port(options.address)
    if port == 0:
        raise OSError(f"cannot listen on {options.address}")
    metrics_port = None
    if options.metrics_port is not None:
        host = options.address.rsplit(":", 1)[0].strip("[]")
        metrics_port = start_metrics_server(metrics, host, options.metrics_port)
    running = RunningServer(
        server, port, servicer, health_servicer, metrics, metrics_port, artifacts, pool
    )
    recommender_pb2_grpc.add_AdminServiceServicer_to_server(AdminServicer(running.reload), server)
    metrics.model_loaded(recommender.model_version, load_seconds)
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return running


async def serve(
    recommender: Recommender,
    artifacts: Path,
    options: ServerOptions,
    load_seconds: float,
    grace: float = 10.0,
    drain: float = 0.0,
    on_ready: Callable[[int, int | None], None] | None = None,
) -> None:
    """Serve a loaded model until SIGTERM or SIGINT, then shut down in order and return.
    SIGHUP reloads the model from ``artifacts``. ``on_ready(port, metrics_port)``."""
    running = await build_server(recommender, options, artifacts, load_seconds)
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
    log.info(
        "serving model %s on %s (port %d)%s",
        recommender.model_version, options.address, running.port,
        f", metrics on port {running.metrics_port}" if running.metrics_port else "",
    )  # fmt: skip
    if on_ready:
        on_ready(running.port, running.metrics_port)
    await stop.wait()
    log.info("shutting down: NOT_SERVING, draining %.1fs, then %.1fs grace", drain, grace)
    await running.health.enter_graceful_shutdown()
    await asyncio.sleep(drain)
    await running.stop(grace)
    log.info("stopped")


async def _logged_reload(running: RunningServer) -> None:
    with contextlib.suppress(Exception):  # reload() logged it; the old model keeps serving
        await running.reload()
