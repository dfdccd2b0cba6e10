"""Build the gRPC server in one function, run it in another.

``build_server`` is what the CLI, the tests and the benchmarks call; ``serve`` adds signals:
SIGTERM/SIGINT flip health to NOT_SERVING, wait a drain delay (load balancers drop the
endpoint at the moment SIGTERM arrives), then stop taking calls and let in-flight calls finish
within the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from movierec.artifacts import read_artifacts
from movierec.v1 import recommender_pb2, recommender_pb2_grpc
from server.recommender import Recommender
from server.service import RecommenderServicer

log = logging.getLogger(__name__)
SERVICE_NAME = recommender_pb2.DESCRIPTOR.services_by_name["RecommenderService"].full_name
MAX_MESSAGE_BYTES = 1 << 20  # a 10,000-id history is ~100 kB; nothing legitimate nears 1 MiB


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    servicer: RecommenderServicer
    health: health.aio.HealthServicer


def load_recommender(artifacts: Path) -> Recommender:
    return Recommender(read_artifacts(artifacts))


async def build_server(
    recommender: Recommender,
    address: str = "127.0.0.1:0",
    handlers: Sequence[grpc.GenericRpcHandler] = (),
) -> RunningServer:
    """A started, SERVING server on ``address`` (port 0 picks a free one). ``handlers`` adds
    services beside RecommenderService (the benchmarks add a bare echo)."""
    # One thread per search: with 2 OpenMP threads a single query got slower here, and
    # parallelism comes from concurrent calls and processes instead.
    faiss.omp_set_num_threads(1)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # a port clash is an error, not a silently shared port
        ]
    )
    server.add_generic_rpc_handlers(tuple(handlers))
    servicer = RecommenderServicer(recommender)
    recommender_pb2_grpc.add_RecommenderServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, servicer, health_servicer)


async def serve(
    recommender: Recommender,
    address: str,
    grace: float = 10.0,
    drain: float = 0.0,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down in order and return."""
    running = await build_server(recommender, address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving model %s on %s (port %d)", recommender.model_version, address, running.port)
    if on_ready:
        on_ready(running.port)
    await stop.wait()
    log.info("shutting down: NOT_SERVING, draining %.1fs, then %.1fs grace", drain, grace)
    await running.health.enter_graceful_shutdown()
    await asyncio.sleep(drain)
    await running.server.stop(grace)
    log.info("stopped")
