"""Every ``movierec serve`` setting in one place: its default, its environment variable and its
help. The CLI builds its flags from these fields, the tests and benchmarks construct the same
object, so a default is stated exactly once."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from movierec.cpus import available_cpus
from movierec.errors import UsageError


def _setting(default: Any, help: str, env: str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "env": env})


@dataclass(frozen=True)
class ServerOptions:
    host: str = _setting(
        "127.0.0.1",
        "listen address; all interfaces (0.0.0.0 or ::) must be asked for",
        "MOVIEREC_HOST",
    )
    port: int = _setting(50051, "gRPC port (0: any free one)", "MOVIEREC_PORT")
    health_port: int | None = _setting(
        None,
        "also serve only the gRPC health service, in plaintext, on this port of --host: for "
        "probes that cannot present a client certificate (mutual TLS); 0: any free one",
        "MOVIEREC_HEALTH_PORT",
    )
    processes: int = _setting(
        1, "server processes sharing the port and the loaded model", "MOVIEREC_PROCESSES"
    )
    workers: int = _setting(
        1,
        "threads running the core per process (FAISS releases the GIL): 1 keeps the event "
        "loop free to admit, shed and answer health checks at once (measured: the same QPS "
        "as 0, which runs the core on the loop, ~45 us more CPU a call; 2 cost ~110 us more "
        "and lost QPS); -1: one per CPU this process may use (affinity, cgroup quota)",
        "MOVIEREC_WORKERS",
    )
    max_inflight: int = _setting(
        64,
        "calls admitted at once per process; past it a call gets RESOURCE_EXHAUSTED at once "
        "(health checks are never shed)",
        "MOVIEREC_MAX_INFLIGHT",
    )
    max_connections: int = _setting(
        4096,
        "open client connections per process; past it new ones are refused before the "
        "handshake (the open-file limit is raised to its maximum at start)",
        "MOVIEREC_MAX_CONNECTIONS",
    )
    idle_timeout: float = _setting(
        300.0,
        "seconds before an idle connection is closed (a connection that never completes its "
        "handshake is closed after 5 s)",
        "MOVIEREC_IDLE_TIMEOUT",
    )
    grace: float = _setting(
        10.0, "seconds in-flight calls get to finish on shutdown", "MOVIEREC_GRACE"
    )
    drain: float = _setting(
        0.0,
        "seconds to keep serving after SIGTERM while health says NOT_SERVING (load "
        "balancers drop the endpoint meanwhile)",
        "MOVIEREC_DRAIN",
    )
    metrics_port: int | None = _setting(
        None, "serve Prometheus /metrics over HTTP on this port (0: any free one)",
        "MOVIEREC_METRICS_PORT",
    )  # fmt: skip
    metrics_host: str = _setting(
        "127.0.0.1",
        "address of the metrics listener (unauthenticated: keep it private)",
        "MOVIEREC_METRICS_HOST",
    )
    tokens_file: Path | None = _setting(
        None,
        "require 'authorization: Bearer <token>' on every call but health checks, with a "
        "token from this file (one per line, the whole line; lines starting with # are "
        "comments); or MOVIEREC_TOKENS=tok1,tok2",
        "MOVIEREC_TOKENS_FILE",
    )
    admin_tokens_file: Path | None = _setting(
        None,
        "enable AdminService (ReloadModel) for callers presenting a token from this file "
        "(same format; or MOVIEREC_ADMIN_TOKENS); without it the admin service is off",
        "MOVIEREC_ADMIN_TOKENS_FILE",
    )
    tls_cert: Path | None = _setting(None, "serve TLS with this PEM certificate chain")
    tls_key: Path | None = _setting(None, "the certificate's PEM private key")
    tls_client_ca: Path | None = _setting(
        None, "mutual TLS: accept only clients with a certificate signed by this CA"
    )
    events: str | None = _setting(
        None,
        "event store URL: sqlite:///PATH (default: events.sqlite3 in the state directory, "
        "$MOVIEREC_STATE_DIR or ~/.local/state/movierec), redis://HOST:PORT/DB, or none",
        "MOVIEREC_EVENTS",
    )
    max_events_per_user: int = _setting(
        1000, "a user's most recent events that count (and are kept)",
        "MOVIEREC_MAX_EVENTS_PER_USER",
    )  # fmt: skip

    def __post_init__(self) -> None:
        for name in ("processes", "max_inflight", "max_connections", "max_events_per_user"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{_flag(name)} must be at least 1, got {getattr(self, name)}")
        if self.workers < -1:
            raise UsageError("--workers must be -1 (one per CPU), 0 (on the event loop) or more")
        for name in ("grace", "drain", "idle_timeout"):
            if getattr(self, name) < 0:
                raise UsageError(f"--{_flag(name)} must be 0 or more")
        for name in ("port", "health_port", "metrics_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise UsageError(f"--{_flag(name)} must be a port number (0-65535), got {value}")
        tls = (self.tls_cert, self.tls_key)
        if any(tls) and not all(tls) or (self.tls_client_ca and not all(tls)):
            raise UsageError(
                "--tls-cert and --tls-key go together (and --tls-client-ca needs both)"
            )

    @property
    def threads(self) -> int:
        """Worker threads per process: -1 resolved to the CPUs available."""
        return available_cpus() if self.workers == -1 else self.workers

    def address(self, port: int | None = None) -> str:
        """host:port for gRPC, with an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port if port is None else port}"


def _flag(name: str) -> str:
    return name.replace("_", "-")


def settings() -> Iterator[tuple[str, type, Any, str, str | None]]:
    """(name, type, default, help, environment variable) of each setting, for the CLI."""
    hints = {"str": str, "int": int, "float": float, "Path": Path, "str | None": str}
    for f in dataclasses.fields(ServerOptions):
        kind = hints.get(str(f.type).replace(" | None", ""), str)
        yield f.name, kind, f.default, f.metadata["help"], f.metadata["env"]


def from_environment(name: str, kind: type, default: Any, env: str | None) -> Any:
    """A setting's default, overridden by its environment variable when that is set."""
    raw = os.environ.get(env) if env else None
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise UsageError(
            f"{env}={raw!r} is not a valid {kind.__name__} for --{_flag(name)}"
        ) from None
