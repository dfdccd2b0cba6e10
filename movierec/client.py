"""Typed clients for movierec's gRPC API: ``Client`` (blocking) and ``AsyncClient``
(asyncio, on ``grpc.aio``), with the same methods. They need only grpcio and protobuf
(``pip install movierec``, no extras).

    from movierec.client import Client

    with Client("localhost:50051") as client:
        for r in client.recommend(user=1, k=10).recommendations:
            print(r.movie_id, r.title, r.similarity)
        client.recommend(movies=[1, 260], filter=make_filter(genres_any=["Comedy"]))
        client.record_events([event(user=1, movie=260, type="watch")])

Every call has a deadline (``timeout``, 5 s by default). UNAVAILABLE is retried by grpc itself
(its service config: up to 4 attempts with backoff), not by a loop here. A failed call raises
the ``movierec.errors`` class of its status code (``NotFound``, ``InvalidArgument``, ...,
all ``StatusError``s) with the server's message, and ``details`` holding the
``google.rpc.Status`` the server attached, if any. Ids may be integers or strings (ids of
your own): each goes to the ``*_id`` or ``*_key`` field that fits.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from movierec.errors import StatusError, status_error
from movierec.ids import Key
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc

Response = TypeVar("Response")
DEFAULT_TIMEOUT = 5.0
RELOAD_TIMEOUT = 120.0  # a reload verifies and loads a whole model
EVENT_TYPES = {"watch": pb.WATCH, "like": pb.LIKE, "dislike": pb.DISLIKE}
# grpc retries UNAVAILABLE (no server, a restart, a dropped connection) on its own.
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "movierec.v1.RecommenderService"},
                    {"service": "movierec.v1.AdminService"},
                    {"service": "grpc.health.v1.Health"},
                ],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


def make_filter(
    genres_any: Sequence[str] = (),
    genres_none: Sequence[str] = (),
    year_min: int = 0,
    year_max: int = 0,
    exclude: Sequence[Key] = (),
    allow: Sequence[Key] = (),
) -> pb.Filter:
    """A Filter message; ids go to the ``_ids`` or ``_keys`` field by their type."""
    exclude_ids, exclude_keys = _split(exclude)
    allow_ids, allow_keys = _split(allow)
    return pb.Filter(
        genres_any=genres_any, genres_none=genres_none, year_min=year_min, year_max=year_max,
        exclude_movie_ids=exclude_ids, exclude_movie_keys=exclude_keys,
        allow_movie_ids=allow_ids, allow_movie_keys=allow_keys,
    )  # fmt: skip


def event(
    user: Key, movie: Key, type: str = "watch", rating: float | None = None,
    time: float | None = None,
) -> pb.Event:  # fmt: skip
    """An Event message: ``type`` is watch, like or dislike; ``time`` unix seconds (default:
    the server's clock)."""
    if type not in EVENT_TYPES:
        raise ValueError(f"type must be one of {', '.join(EVENT_TYPES)}, got {type!r}")
    out = pb.Event(type=EVENT_TYPES[type])
    _set_key(out, "user", user)
    _set_key(out, "movie", movie)
    if rating is not None:
        out.rating = rating
    if time is not None:
        stamp = Timestamp()
        stamp.FromNanoseconds(int(time * 1e9))
        out.time.CopyFrom(stamp)
    return out


def recommend_request(
    user: Key | None = None,
    *,
    movies: Sequence[Key] = (),
    weights: Sequence[float] = (),
    dislikes: Sequence[Key] = (),
    k: int = 10,
    filter: pb.Filter | None = None,
    include_watched: bool = False,
    explain: int = 0,
    diversity: float = 0.0,
) -> pb.RecommendRequest:
    """A RecommendRequest: a known ``user``, or an inline history of ``movies`` (with
    optional ``weights``, one per movie), plus ``dislikes``, a filter and options."""
    movie_ids, movie_keys = _split(movies)
    if weights:  # the proto orders weights as movie_ids, then movie_keys
        ints = [w for m, w in zip(movies, weights, strict=True) if isinstance(m, int)]
        weights = ints + [w for m, w in zip(movies, weights, strict=True) if isinstance(m, str)]
    dislike_ids, dislike_keys = _split(dislikes)
    request = pb.RecommendRequest(
        movie_ids=movie_ids, movie_keys=movie_keys, weights=weights,
        negative_movie_ids=dislike_ids, negative_movie_keys=dislike_keys, k=k,
        include_watched=include_watched, explain=explain, diversity=diversity,
    )  # fmt: skip
    if user is not None:
        _set_key(request, "user", user)
    if filter is not None:
        request.filter.CopyFrom(filter)
    return request


class _Connection:
    """What both clients share: the channel's settings, credentials and metadata."""

    def __init__(
        self,
        target: str = "localhost:50051",
        *,
        timeout: float = DEFAULT_TIMEOUT,
        token: str | None = None,
        tls: bool = False,
        tls_ca: bytes | None = None,
        client_cert: tuple[bytes, bytes] | None = None,
    ) -> None:
        """``target`` is host:port; ``timeout`` each call's deadline in seconds. ``token`` is
        sent as ``authorization: Bearer``. TLS is used when ``tls`` is set or ``tls_ca``
        (PEM roots; default: the system's) or ``client_cert`` ((PEM chain, PEM key), for
        mutual TLS) is given."""
        self.target, self.timeout = target, timeout
        self._options = [("grpc.service_config", SERVICE_CONFIG), ("grpc.enable_retries", 1)]
        self._credentials = None
        if tls or tls_ca or client_cert:
            key, chain = (client_cert[1], client_cert[0]) if client_cert else (None, None)
            self._credentials = grpc.ssl_channel_credentials(tls_ca, key, chain)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()


class Client(_Connection):
    """A blocking client; every method is one RPC (see the proto for what each returns)."""

    def __init__(self, target: str = "localhost:50051", **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        if self._credentials is not None:
            channel = grpc.secure_channel(target, self._credentials, self._options)
        else:
            channel = grpc.insecure_channel(target, self._options)
        self._channel = channel
        self._stub = pb_grpc.RecommenderServiceStub(channel)
        self._admin = pb_grpc.AdminServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    def recommend(self, user: Key | None = None, **kwargs: Any) -> pb.RecommendResponse:
        """Arguments as ``recommend_request``."""
        return self._call(self._stub.Recommend, recommend_request(user, **kwargs))

    def recommend_batch(self, requests: Sequence[pb.RecommendRequest]) -> pb.BatchRecommendResponse:
        return self._call(self._stub.BatchRecommend, pb.BatchRecommendRequest(requests=requests))

    def similar(
        self, movie: Key, k: int = 10, filter: pb.Filter | None = None
    ) -> pb.SimilarMoviesResponse:
        return self._call(self._stub.SimilarMovies, _similar_request(movie, k, filter))

    def movie(self, movie: Key) -> pb.Movie:
        return self._call(self._stub.GetMovie, _movie_request(movie)).movie

    def record_events(self, events: Sequence[pb.Event]) -> pb.RecordEventsResponse:
        return self._call(self._stub.RecordEvents, pb.RecordEventsRequest(events=events))

    def reload_model(self) -> pb.ReloadModelResponse:
        """Make the server re-read its artifact directory (needs an admin token)."""
        request = pb.ReloadModelRequest()
        return self._call(self._admin.ReloadModel, request, max(self.timeout, RELOAD_TIMEOUT))

    def health(self, service: str = "") -> str:
        """'SERVING', 'NOT_SERVING', ... as the standard gRPC health service reports it."""
        request = health_pb2.HealthCheckRequest(service=service)
        status = self._call(self._health.Check, request).status
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(
        self, method: Callable[..., Response], request: Any, timeout: float | None = None
    ) -> Response:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise _error(e) from None


class AsyncClient(_Connection):
    """The asyncio client: the same methods as ``Client``, awaitable."""

    def __init__(self, target: str = "localhost:50051", **kwargs: Any) -> None:
        super().__init__(target, **kwargs)
        if self._credentials is not None:
            channel = grpc.aio.secure_channel(target, self._credentials, self._options)
        else:
            channel = grpc.aio.insecure_channel(target, self._options)
        self._channel = channel
        self._stub = pb_grpc.RecommenderServiceStub(channel)
        self._admin = pb_grpc.AdminServiceStub(channel)
        self._health = health_pb2_grpc.HealthStub(channel)

    async def recommend(self, user: Key | None = None, **kwargs: Any) -> pb.RecommendResponse:
        return await self._call(self._stub.Recommend, recommend_request(user, **kwargs))

    async def recommend_batch(
        self, requests: Sequence[pb.RecommendRequest]
    ) -> pb.BatchRecommendResponse:
        request = pb.BatchRecommendRequest(requests=requests)
        return await self._call(self._stub.BatchRecommend, request)

    async def similar(
        self, movie: Key, k: int = 10, filter: pb.Filter | None = None
    ) -> pb.SimilarMoviesResponse:
        return await self._call(self._stub.SimilarMovies, _similar_request(movie, k, filter))

    async def movie(self, movie: Key) -> pb.Movie:
        return (await self._call(self._stub.GetMovie, _movie_request(movie))).movie

    async def record_events(self, events: Sequence[pb.Event]) -> pb.RecordEventsResponse:
        return await self._call(self._stub.RecordEvents, pb.RecordEventsRequest(events=events))

    async def reload_model(self) -> pb.ReloadModelResponse:
        request = pb.ReloadModelRequest()
        return await self._call(self._admin.ReloadModel, request, max(self.timeout, RELOAD_TIMEOUT))

    async def health(self, service: str = "") -> str:
        request = health_pb2.HealthCheckRequest(service=service)
        status = (await self._call(self._health.Check, request)).status
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _call(
        self, method: Callable[..., Awaitable[Response]], request: Any, timeout: float | None = None
    ) -> Response:
        try:
            return await method(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as e:
            raise _error(e) from None


def _error(e: grpc.RpcError) -> StatusError:
    """The movierec.errors class of a failed call's status, with the server's message and
    the google.rpc.Status it attached (if any) as ``details``."""
    call: Any = e
    details = None
    for key, value in call.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            details = status_pb2.Status.FromString(value)
    return status_error(call.code().name, call.details() or call.code().name, details)


def _split(keys: Sequence[Key]) -> tuple[list[int], list[str]]:
    return [k for k in keys if isinstance(k, int)], [k for k in keys if isinstance(k, str)]


def _set_key(message: Any, field: str, key: Key) -> None:
    if isinstance(key, str):
        setattr(message, f"{field}_key", key)
    else:
        setattr(message, f"{field}_id", key)


def _similar_request(movie: Key, k: int, filter: pb.Filter | None) -> pb.SimilarMoviesRequest:
    request = pb.SimilarMoviesRequest(k=k)
    _set_key(request, "movie", movie)
    if filter is not None:
        request.filter.CopyFrom(filter)
    return request


def _movie_request(movie: Key) -> pb.GetMovieRequest:
    request = pb.GetMovieRequest()
    _set_key(request, "movie", movie)
    return request


__all__ = ["AsyncClient", "Client", "event", "make_filter", "recommend_request"]
