"""One exception tree for everything movierec raises on purpose (as httpx's ``_exceptions``).

    MovierecError                 catch this for all of them; str(e) is one line for a person
    ├── UsageError                a flag, setting or configuration file that cannot work
    ├── DataError                 training input that cannot be used (names file and line)
    │   └── DownloadError         a dataset download that failed or did not verify
    ├── ArtifactError             an artifact directory that is missing, corrupt or invalid
    └── StatusError               an error a call can end with; ``code`` is its gRPC status
        ├── InvalidArgument       ├── Unauthenticated      ├── DeadlineExceeded
        ├── NotFound              ├── PermissionDenied     ├── Unavailable
        ├── FailedPrecondition    ├── ResourceExhausted    ├── Cancelled
        ├── Unimplemented         ├── Internal             └── Unknown

The ``StatusError`` classes are shared by both ends of the wire: the server's core raises
``NotFound("user 7 ...")`` and the gRPC layer answers with its ``code``; the client turns a
NOT_FOUND status back into ``NotFound`` (with the status details). Nothing here imports grpc,
so the client package and the trainer can use it without the server's dependencies.
"""

from __future__ import annotations

from typing import Any, ClassVar


class MovierecError(Exception):
    """Base of every error movierec raises on purpose."""


class UsageError(MovierecError):
    """A command-line flag, setting or configuration file that cannot work; the message
    names it and says what would."""


class DataError(MovierecError):
    """Input data that cannot be used, with the file and line or column that is wrong."""


class DownloadError(DataError):
    """A dataset could not be fetched, or what arrived does not match its published digest."""


class ArtifactError(MovierecError):
    """An artifact directory is missing, incomplete, corrupt, inconsistent or of another
    format version; the message names the file and what was expected."""


class StatusError(MovierecError):
    """An error that ends a call with gRPC status ``code`` (a ``grpc.StatusCode`` name).

    ``details`` carries what the server attached beyond the message (the client fills it
    from the call's trailing metadata); the server never sends internals in it."""

    code: ClassVar[str] = "UNKNOWN"

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidArgument(StatusError):
    """An argument outside what is allowed; the message says what is."""

    code = "INVALID_ARGUMENT"


class NotFound(StatusError):
    """A user, movie or model the server does not know; the message names it."""

    code = "NOT_FOUND"


class FailedPrecondition(StatusError):
    """The server is not in a state to do this (e.g. a reload of a bad artifact)."""

    code = "FAILED_PRECONDITION"


class ResourceExhausted(StatusError):
    """Too much at once: a server at its admission limit (shed; retry after a backoff). A
    single call over the cost limit is InvalidArgument: retrying it cannot succeed."""

    code = "RESOURCE_EXHAUSTED"


class Unauthenticated(StatusError):
    """No valid credential was presented."""

    code = "UNAUTHENTICATED"


class PermissionDenied(StatusError):
    """A valid credential that may not do this (e.g. a client token on an admin call)."""

    code = "PERMISSION_DENIED"


class DeadlineExceeded(StatusError):
    """The call's deadline passed before it was done."""

    code = "DEADLINE_EXCEEDED"


class Unavailable(StatusError):
    """The server (or a store it needs) cannot answer now; retrying later may work."""

    code = "UNAVAILABLE"


class Cancelled(StatusError):
    """The call was cancelled, usually by the caller."""

    code = "CANCELLED"


class Unimplemented(StatusError):
    """The server does not offer this method (e.g. an admin service that is off)."""

    code = "UNIMPLEMENTED"


class Internal(StatusError):
    """Something broke inside the server; its log has the details."""

    code = "INTERNAL"


class Unknown(StatusError):
    """A status the client has no class for."""

    code = "UNKNOWN"


STATUS_ERRORS: dict[str, type[StatusError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument, NotFound, FailedPrecondition, ResourceExhausted, Unauthenticated,
        PermissionDenied, DeadlineExceeded, Unavailable, Cancelled, Unimplemented, Internal,
        Unknown,
    )
}  # fmt: skip


def status_error(code: str, message: str, details: Any = None) -> StatusError:
    """The StatusError subclass for a gRPC status code name (``Unknown`` for others)."""
    return STATUS_ERRORS.get(code, Unknown)(message, details=details)
