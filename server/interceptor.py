"""One server interceptor in front of every unary call, doing in order:

1. authentication: with tokens configured, a call without a valid bearer token is
   UNAUTHENTICATED (the health service stays open for load balancers and orchestrators);
2. deadlines: a call whose deadline has already passed is not worked on (DEADLINE_EXCEEDED);
3. admission: past ``max_inflight`` calls in progress a call is RESOURCE_EXHAUSTED at once,
   so a burst is shed instead of queueing without bound (health checks are never shed);
4. accounting: Prometheus metrics and one access log line per call.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from grpc_health.v1 import health

from server.observability import Metrics, access_log
from server.security import Tokens

HEALTH_PREFIX = f"/{health.SERVICE_NAME}/"

Behavior = Callable[..., Any]  # (request, context) -> response, or an awaitable of it
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"  # generic only in the type stubs


class CallGuard(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics, tokens: Tokens, max_inflight: int) -> None:
        self.metrics = metrics
        self.tokens = tokens
        self.max_inflight = max_inflight
        self.inflight = 0
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}  # method -> (handler, guarded)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # streaming (health Watch, reflection) or an unknown method
        cached = self._wrapped.get(details.method)
        if cached is None or cached[0] is not handler:  # wrap once per method, not per call
            guarded = grpc.unary_unary_rpc_method_handler(
                self._guard(details.method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            cached = self._wrapped[details.method] = (handler, guarded)
        return cached[1]

    def _guard(self, method: str, behavior: Behavior) -> Behavior:
        is_health = method.startswith(HEALTH_PREFIX)

        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            admitted = False
            try:
                if (
                    self.tokens.enabled
                    and not is_health
                    and not self.tokens.accepts(tuple(context.invocation_metadata() or ()))
                ):
                    code = grpc.StatusCode.UNAUTHENTICATED
                    await context.abort(code, "missing or invalid bearer token")
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    code = grpc.StatusCode.DEADLINE_EXCEEDED
                    await context.abort(code, "deadline passed before the call was handled")
                if not is_health:
                    if self.inflight >= self.max_inflight:
                        code = grpc.StatusCode.RESOURCE_EXHAUSTED
                        await context.abort(
                            code, f"server busy: {self.max_inflight} calls in flight; retry"
                        )
                    self.inflight += 1
                    admitted = True
                    self.metrics.inflight.inc()
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result
            except grpc.aio.AbortError:
                code = context.code() or code
                raise
            except Exception:
                code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                if admitted:
                    self.inflight -= 1
                    self.metrics.inflight.dec()
                seconds = time.perf_counter() - start
                self.metrics.observe(method, code.name, seconds)
                if access_log.isEnabledFor(logging.INFO) and not is_health:
                    k, peer = getattr(request, "k", None), context.peer()
                    access_log.info(
                        "%s %s %.2fms k=%s peer=%s", method, code.name, seconds * 1e3, k, peer,
                        extra={"method": method, "code": code.name, "ms": round(seconds * 1e3, 3),
                               "k": k, "peer": peer},
                    )  # fmt: skip

        return guarded
