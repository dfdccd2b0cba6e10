"""One guard around every method the server registers (our services, health, reflection),
wrapped once at registration rather than intercepted per call. For each call, in order:

1. decoding: a body that is not the method's message is INVALID_ARGUMENT, after the
   credential check, counted and logged like any call (grpc would answer UNKNOWN and log a
   traceback per call);
2. authentication: with client tokens configured, a call without one is UNAUTHENTICATED
   (health stays open for load balancers and orchestrators); AdminService calls need an
   admin token, whatever the client tokens are;
3. deadlines: a call whose deadline has passed is not worked on (DEADLINE_EXCEEDED);
4. admission: past ``max_inflight`` calls in progress a call is RESOURCE_EXHAUSTED at once,
   so a burst is shed instead of queueing (health checks are never shed); streams have their
   own cap and (reflection's) a lifetime, so idle ones cannot take the calls' grpc slots;
5. errors: a ``StatusError`` raised by the service becomes its status code; anything else is
   INTERNAL, logged here with its traceback and never sent;
6. accounting: Prometheus metrics and one access log line, with the code the caller really
   got (a call cut by its deadline or by shutdown is not OK); calls shed at admission are
   summarised in one line every 10 s instead (a line each would add to the overload).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeAlias

import grpc
from grpc_health.v1 import health

from movierec.errors import StatusError
from server.observability import Metrics, access_log
from server.security import Tokens

log = logging.getLogger(__name__)
SHED_LOG_SECONDS = 10.0  # one summary line at most this often while shedding
MAX_STREAMS = 32  # streams open at once per process (health Watch, reflection)
STREAM_LIFETIME_SECONDS = 60.0  # a reflection stream ends after this; health Watch does not
HEALTH_SERVICE = health.SERVICE_NAME
ADMIN_SERVICE = "movierec.v1.AdminService"

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the type stubs
Context = grpc.aio.ServicerContext[Any, Any]


class Undecodable:
    """Stands in for a request body that could not be parsed."""

    def __init__(self, size: int) -> None:
        self.size = size


class CallGuard:
    def __init__(
        self, metrics: Metrics, tokens: Tokens, admin_tokens: Tokens, max_inflight: int
    ) -> None:
        self.metrics = metrics
        self.tokens = tokens
        self.admin_tokens = admin_tokens
        self.max_inflight = max_inflight
        self.inflight = 0
        self.streams = 0
        self._shed, self._shed_logged = 0, -SHED_LOG_SECONDS  # shed calls not yet reported
        self._shed_report: asyncio.TimerHandle | None = None

    def register(
        self, server: grpc.aio.Server, add: Callable[[Any, Any], None], servicer: Any
    ) -> None:
        """Register ``servicer`` with a generated ``add_*_to_server`` function, every one of
        its methods wrapped in the guard."""
        add(servicer, _Capture(self, server))

    def wrap(self, service: str, method: str, handler: Handler) -> Handler:
        path = f"/{service}/{method}"
        decode = _tolerant(handler.request_deserializer)
        encode = _passing_bytes(handler.response_serializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(path, service, handler.unary_unary), decode, encode
            )
        stream: Callable[..., Any] | None = handler.unary_stream or handler.stream_stream
        if stream is None:
            raise TypeError(f"{path}: client-streaming methods are not guarded")
        wrapped = self._stream(path, service, stream, handler.unary_stream is not None)
        make = (
            grpc.stream_stream_rpc_method_handler
            if handler.stream_stream is not None
            else grpc.unary_stream_rpc_method_handler
        )
        return make(wrapped, decode, encode)

    def _unary(self, path: str, service: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        is_health = service == HEALTH_SERVICE
        tokens = self.admin_tokens if service == ADMIN_SERVICE else self.tokens

        async def guarded(request: Any, context: Context) -> Any:
            start = time.perf_counter()
            peer = context.peer()  # now: the done callback's context may no longer have a call
            code: grpc.StatusCode | None = grpc.StatusCode.OK
            admitted = False
            try:
                if not is_health:
                    _authenticate(tokens, context)
                if isinstance(request, Undecodable):
                    raise _Abort(INVALID, f"the request body ({request.size} bytes) is not a "
                                          f"{path} request")  # fmt: skip
                if _expired(context):
                    raise _Abort(DEADLINE, "deadline passed before the call was handled")
                if not is_health:
                    if self.inflight >= self.max_inflight:
                        raise _Abort(BUSY, f"server busy: {self.max_inflight} calls in flight; "
                                           "retry")  # fmt: skip
                    self.inflight += 1
                    admitted = True
                    self.metrics.inflight.inc()
                response = await behavior(request, context)
                code = None  # accounted once grpc has sent it, or failed to

                def done(ctx: Any) -> None:
                    self._account(path, _sent(ctx), start, request, peer, is_health)

                context.add_done_callback(done)  # type: ignore[arg-type]  # stubs want a class
                return response
            except BaseException as e:
                code, message = _ending(e, context, path)
                if message is None:
                    raise
                await context.abort(code, message)
            finally:
                if admitted:
                    self.inflight -= 1
                    self.metrics.inflight.dec()
                if code is not None:
                    self._account(path, code, start, request, peer, is_health)

        return guarded

    def _stream(
        self, path: str, service: str, behavior: Callable[..., Any], unary_request: bool
    ) -> Callable[..., Any]:
        """Streams (health's Watch, reflection) get the same credentials and decoding checks,
        their own cap (they hold a grpc slot while open, which unary calls need), and,
        health's Watch apart, a lifetime: an idle reflection stream must not hold a slot for
        ever."""
        is_health = service == HEALTH_SERVICE
        tokens = self.admin_tokens if service == ADMIN_SERVICE else self.tokens
        lifetime = None if is_health else STREAM_LIFETIME_SECONDS
        writes = not inspect.isasyncgenfunction(behavior)  # answers with context.write

        async def run(request: Any, context: Context) -> AsyncIterator[Any]:
            start = time.perf_counter()
            peer = context.peer()
            code = grpc.StatusCode.OK
            admitted = False
            try:
                if not is_health:
                    _authenticate(tokens, context)
                if unary_request and isinstance(request, Undecodable):
                    raise _Abort(INVALID, "undecodable request body")
                if self.streams >= MAX_STREAMS:
                    raise _Abort(BUSY, f"server busy: {MAX_STREAMS} streams open; retry")
                self.streams += 1
                admitted = True
                requests = request if unary_request else _decoded(request)
                async with asyncio.timeout(lifetime):
                    if writes:
                        await behavior(requests, context)
                    else:
                        async for response in behavior(requests, context):
                            yield response
            except TimeoutError:
                code = DEADLINE
                await context.abort(code, f"streams end after {lifetime:.0f} s; reconnect")
            except BaseException as e:
                code, message = _ending(e, context, path)
                if message is None:
                    raise
                await context.abort(code, message)
            finally:
                if admitted:
                    self.streams -= 1
                self._account(path, code, start, None, peer, is_health)

        if not writes:
            return run

        async def written(request: Any, context: Context) -> None:
            async for _ in run(request, context):
                pass  # the handler writes its answers itself

        return written

    def _report_shed(self) -> None:
        access_log.warning("shedding load: %d calls refused (RESOURCE_EXHAUSTED) since the "
                           "last report", self._shed)  # fmt: skip
        self._shed, self._shed_logged, self._shed_report = 0, time.monotonic(), None

    def _account(
        self, path: str, code: grpc.StatusCode, start: float, request: Any, peer: str,
        is_health: bool,
    ) -> None:  # fmt: skip
        seconds = time.perf_counter() - start
        self.metrics.observe(path, code.name, seconds)
        if is_health or not access_log.isEnabledFor(logging.INFO):
            return
        if code == BUSY:  # under overload a line per shed call would add to the overload
            self._shed += 1
            if self._shed_report is None:  # one line now or when the period ends, never lost
                wait = max(0.0, self._shed_logged + SHED_LOG_SECONDS - time.monotonic())
                self._shed_report = asyncio.get_running_loop().call_later(wait, self._report_shed)
            return
        k = getattr(request, "k", None)
        access_log.info(
            "%s %s %.2fms k=%s peer=%s", path, code.name, seconds * 1e3, k, peer,
            extra={"method": path, "code": code.name, "ms": round(seconds * 1e3, 3), "k": k,
                   "peer": peer},
        )  # fmt: skip


INVALID = grpc.StatusCode.INVALID_ARGUMENT
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED
BUSY = grpc.StatusCode.RESOURCE_EXHAUSTED


def _authenticate(tokens: Tokens, context: Context) -> None:
    if tokens.enabled and not tokens.accepts(tuple(context.invocation_metadata() or ())):
        raise _Abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")


class _Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self.code, self.message = code, message


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A deserializer that hands a bad body to the guard instead of raising inside grpc."""
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return Undecodable(len(data))

    return decode


def _passing_bytes(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """The method's serializer, except that a handler may return its response already
    encoded (``server.wire``)."""
    if serializer is None:
        return None

    def encode(response: Any) -> bytes:
        return response if isinstance(response, bytes) else serializer(response)

    return encode


async def _decoded(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for r in requests:
        if isinstance(r, Undecodable):
            raise _Abort(INVALID, "undecodable request message")
        yield r


def _expired(context: Context) -> bool:
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


def _ending(e: BaseException, context: Context, path: str) -> tuple[grpc.StatusCode, str | None]:
    """The status a call ends with when its handler raised ``e``, and the message to abort
    with; None: let ``e`` propagate (grpc has ended the call already, or the process is
    stopping)."""
    if isinstance(e, _Abort):
        return e.code, e.message
    if isinstance(e, StatusError):
        return grpc.StatusCode[e.code], e.message
    if isinstance(e, asyncio.CancelledError):
        return _cut_short(context), None
    if isinstance(e, grpc.aio.AbortError):
        return context.code() or grpc.StatusCode.UNKNOWN, None
    if not isinstance(e, Exception):
        return grpc.StatusCode.UNKNOWN, None
    log.error("%s failed", path, exc_info=e)
    return grpc.StatusCode.INTERNAL, "internal error; see the server log"


def _sent(context: Context) -> grpc.StatusCode:
    """OK for a response grpc delivered; else why the caller did not get it."""
    return _cut_short(context) if context.cancelled() else grpc.StatusCode.OK


def _cut_short(context: Context) -> grpc.StatusCode:
    """Why a handler was cancelled: its deadline passed, or the caller or shutdown cut it."""
    return grpc.StatusCode.DEADLINE_EXCEEDED if _expired(context) else grpc.StatusCode.CANCELLED


class _Capture:
    """Stands in for the server when a generated ``add_*_to_server`` registers a service,
    so each method handler is wrapped before the real server sees it."""

    def __init__(self, guard: CallGuard, server: grpc.aio.Server) -> None:
        self._guard, self._server = guard, server

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        wrapped = {m: self._guard.wrap(service, m, h) for m, h in handlers.items()}
        self._server.add_registered_method_handlers(service, wrapped)
        # and the same wrapped handlers for calls that take grpc's generic lookup
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, wrapped),)
        )

    def add_generic_rpc_handlers(self, generic: tuple[Any, ...]) -> None:
        """Ignored: generated code registers the same handlers by name right after."""
