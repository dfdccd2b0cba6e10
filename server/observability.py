"""What operators see: Prometheus metrics and an access log line per call (the log format
itself is set up in ``movierec.logs``).

Metrics live in a registry per server (tests run several servers in one process) and are
exported over HTTP by ``start_metrics_server``. Access log lines carry method, status code,
latency, k and the peer; never a user's history or id.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

access_log = logging.getLogger("movierec.access")
MetricsServer = WSGIServer  # what start_metrics_server returns

# Latency buckets around what a lookup costs here: 0.25 ms (transport) to 1 s.
BUCKETS = (0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.5, 1.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "movierec_requests", "RPCs answered, by method and status code", ["method", "code"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "movierec_request_seconds", "RPC latency in the server, by method", ["method"],
            buckets=BUCKETS, registry=r,
        )  # fmt: skip
        self.inflight = Gauge("movierec_inflight_requests", "RPCs being handled", registry=r)
        self.model = Gauge(
            "movierec_model_info", "the serving model (value 1)", ["model_version"], registry=r
        )
        self.load_seconds = Gauge(
            "movierec_model_load_seconds", "time to verify and load the serving model",
            registry=r,
        )  # fmt: skip
        self.loaded_at = Gauge(
            "movierec_model_loaded_timestamp_seconds", "when the serving model was loaded",
            registry=r,
        )  # fmt: skip
        self.reloads = Counter(
            "movierec_model_reloads", "model reloads, by result", ["result"], registry=r
        )
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def model_loaded(self, model_version: str, seconds: float) -> None:
        self.model.clear()
        self.model.labels(model_version).set(1)
        self.load_seconds.set(seconds)
        self.loaded_at.set(time.time())

    def observe(self, method: str, code: str, seconds: float) -> None:
        # labels() validates and looks up under a lock on every call (~5 us for the pair);
        # a method's children are fetched once.
        children = self._children.get((method, code))
        if children is None:
            children = self._children[method, code] = (
                self.requests.labels(method, code), self.latency.labels(method))  # fmt: skip
        children[0].inc()
        children[1].observe(seconds)


def start_metrics_server(metrics: Metrics, host: str, port: int) -> MetricsServer:
    """Serve /metrics over HTTP in a thread (port 0 picks a free one); ``shutdown()`` stops
    it."""
    server, _ = start_http_server(port, addr=host, registry=metrics.registry)
    return server


def stop_metrics_server(server: MetricsServer) -> None:
    """Stop serving and close the port (blocks up to the serving loop's 0.5 s poll)."""
    server.shutdown()
    server.server_close()
