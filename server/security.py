"""Who may call: TLS (optionally mutual) server credentials and bearer tokens.

Tokens come from a file (one per line, the whole line; lines starting with ``#`` are comments)
or the ``MOVIEREC_TOKENS`` environment variable (comma-separated); clients send
``authorization: Bearer <token>`` metadata. Admin tokens (AdminService) are a separate set.
Tokens are compared in constant time, so response timing does not reveal how much of a guess
matched.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from movierec.errors import UsageError

TOKENS_ENV = "MOVIEREC_TOKENS"
ADMIN_TOKENS_ENV = "MOVIEREC_ADMIN_TOKENS"


@dataclass(frozen=True)
class Tokens:
    """The accepted bearer tokens; empty means authentication is off."""

    values: tuple[bytes, ...] = ()

    @classmethod
    def load(
        cls, file: Path | None = None, env: str | None = None, variable: str = TOKENS_ENV
    ) -> Tokens:
        """Tokens from ``file`` and the environment variable ``variable`` (``env`` overrides
        its value). In the file every line is one token, whole: only surrounding whitespace
        is dropped, and only lines that start with ``#`` are comments, so a token may hold
        any printable character (a ``#`` in the middle is part of it)."""
        tokens: list[str] = []
        if file is not None:
            try:
                lines = file.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise UsageError(f"cannot read tokens file {file}: {e}") from e
            tokens += [t for t in (line.strip() for line in lines) if t and not t.startswith("#")]
            if not tokens:
                raise UsageError(f"tokens file {file} holds no token")
        raw = os.environ.get(variable, "") if env is None else env
        tokens += [t.strip() for t in raw.split(",") if t.strip()]
        for t in tokens:
            if not all("!" <= c <= "~" for c in t):  # what a metadata value can carry
                where = str(file) if file is not None else variable
                raise UsageError(
                    f"{where}: a token has a space or a non-printable or non-ASCII character"
                )
        return cls(tuple(t.encode() for t in tokens))

    @property
    def enabled(self) -> bool:
        return bool(self.values)

    def accepts(self, metadata: Sequence[tuple[str, str | bytes]]) -> bool:
        header = next((v for k, v in metadata if k == "authorization"), None)
        if header is None:
            return False
        given = header.encode() if isinstance(header, str) else header
        scheme, _, token = given.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        # Compare against every token (no early exit), each in constant time.
        return sum(hmac.compare_digest(token, t) for t in self.values) > 0


def server_credentials(
    cert: Path, key: Path, client_ca: Path | None = None
) -> grpc.ServerCredentials:
    """TLS with the server's certificate chain and key; with ``client_ca`` clients must
    present a certificate signed by it (mutual TLS)."""

    def read(path: Path, what: str) -> bytes:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise UsageError(f"cannot read {what} {path}: {e.strerror}") from e
        if b"-----BEGIN" not in data:
            raise UsageError(f"{what} {path} is not PEM")
        return data

    return grpc.ssl_server_credentials(
        [(read(key, "TLS key"), read(cert, "TLS certificate"))],
        root_certificates=read(client_ca, "client CA") if client_ca else None,
        require_client_auth=client_ca is not None,
    )
