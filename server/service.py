"""RecommenderService and AdminService over gRPC: map messages to the core's types and back.
Validation with a meaning lives in the core; errors become status codes in the guard
(``server.guard``), so handlers here raise ``movierec.errors`` exceptions and nothing else."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc
from google.rpc import status_pb2

from movierec.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    StatusError,
)
from movierec.ids import MAX_ID_CHARS, Key
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc
from server import wire
from server.catalogue import NO_FILTER, Filter
from server.events import Event, EventStore, EventType, NoStore
from server.recommender import DEFAULT_K, Recommender, Request, check_batch_size
from server.wire import Encoder

Context = grpc.aio.ServicerContext[Any, Any]
Result = TypeVar("Result")
MAX_EVENTS_PER_CALL = 1000  # RecordEvents


class RecommenderServicer(pb_grpc.RecommenderServiceServicer):
    """Handlers parse on the event loop and run the core either on a worker pool (FAISS
    releases the GIL, so searches use every core while the loop admits, sheds and answers
    health checks) or, without a pool, on the loop itself (no hand-off to a thread and back,
    but each search holds up every other call). Answers are encoded by ``server.wire``: the
    handlers return the response's bytes."""

    def __init__(
        self,
        recommender: Recommender,
        pool: Executor | None,
        store: EventStore | None = None,
        max_events_per_user: int = 1000,
    ) -> None:
        self.recommender = recommender
        self._pool = pool
        self._store = store or NoStore()
        self._max_events = max_events_per_user

    @property
    def recommender(self) -> Recommender:
        return self._model[0]

    @recommender.setter
    def recommender(self, recommender: Recommender) -> None:
        # Swapped as one reference on reload; each call reads it once, so an answer never
        # mixes two models.
        self._model = (recommender, Encoder(recommender.model_version))

    # These three return their response encoded (server.wire); the guard sends bytes as is.
    async def Recommend(  # type: ignore[override]
        self, request: pb.RecommendRequest, context: Context
    ) -> bytes:
        rec, wire = self._model
        query = _request(request)
        events = await self._events_of(query.user)
        return await self._work(context, lambda: wire.recommend(rec.recommend(query, events)))

    async def BatchRecommend(  # type: ignore[override]
        self, request: pb.BatchRecommendRequest, context: Context
    ) -> bytes:
        rec, wire = self._model
        check_batch_size(len(request.requests))  # before parsing any of them
        parsed: list[Request | StatusError] = []
        for entry in request.requests:
            try:
                parsed.append(_request(entry))
            except StatusError as e:
                parsed.append(e)
        valid = [p for p in parsed if isinstance(p, Request)]
        events = await asyncio.gather(*(self._events_of(p.user) for p in valid))

        def work() -> bytes:
            answers = iter(rec.recommend_batch(valid, events))
            results: list[bytes | pb.BatchResult] = []
            for p in parsed:
                answer = next(answers) if isinstance(p, Request) else p
                if isinstance(answer, StatusError):
                    code = grpc.StatusCode[answer.code].value[0]
                    error = status_pb2.Status(code=code, message=answer.message)
                    results.append(pb.BatchResult(error=error))
                else:
                    results.append(wire.recommend(answer))
            return wire.batch(results)

        return await self._work(context, work)

    async def SimilarMovies(  # type: ignore[override]
        self, request: pb.SimilarMoviesRequest, context: Context
    ) -> bytes:
        rec, wire = self._model
        movie = _one_key(request.movie_id, request.movie_key, "movie")
        rules = _filter(request.filter)
        k = request.k or DEFAULT_K
        return await self._work(context, lambda: wire.similar(rec.similar(movie, k, rules)))

    async def GetMovie(self, request: pb.GetMovieRequest, context: Context) -> pb.GetMovieResponse:
        rec = self.recommender  # a lookup: not worth a trip to the pool
        m, indexed = rec.movie(_one_key(request.movie_id, request.movie_key, "movie"))
        return pb.GetMovieResponse(movie=wire.movie(m, indexed), model_version=rec.model_version)

    async def RecordEvents(
        self, request: pb.RecordEventsRequest, context: Context
    ) -> pb.RecordEventsResponse:
        if len(request.events) > MAX_EVENTS_PER_CALL:
            raise InvalidArgument(
                f"at most {MAX_EVENTS_PER_CALL} events per call, got {len(request.events)}"
            )
        now = time.time()
        parsed: list[Event] = []
        for i, e in enumerate(request.events):  # all checked before any is recorded
            if e.type not in (pb.WATCH, pb.LIKE, pb.DISLIKE):
                raise InvalidArgument(f"events[{i}].type must be WATCH, LIKE or DISLIKE")
            rating = e.rating if e.HasField("rating") else None
            if rating is not None and not (math.isfinite(rating) and 0 <= rating <= 10):
                raise InvalidArgument(f"events[{i}].rating must be between 0 and 10")
            user = _required_key(e, "user", f"events[{i}]")
            movie = _required_key(e, "movie", f"events[{i}]")
            when = _seconds(e.time, f"events[{i}].time") if e.HasField("time") else now
            parsed.append(Event(user, movie, EventType(e.type), rating, when))
        known = self.recommender.catalogue.knows([e.movie for e in parsed]).tolist()
        events = [e for e, ok in zip(parsed, known, strict=True) if ok]
        ignored = [e.movie for e, ok in zip(parsed, known, strict=True) if not ok]
        ignored_ids = [m for m in ignored if isinstance(m, int)]
        ignored_keys = [m for m in ignored if isinstance(m, str)]
        if events:
            await self._store.record(events)
        return pb.RecordEventsResponse(
            recorded=len(events),
            ignored_movie_ids=list(dict.fromkeys(ignored_ids)),
            ignored_movie_keys=list(dict.fromkeys(ignored_keys)),
        )

    async def _events_of(self, user: Key | None) -> Sequence[Event]:
        if user is None:
            return ()
        return await self._store.recent(user, self._max_events)

    async def _work(self, context: Context, fn: Callable[[], Result]) -> Result:
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining

        def run() -> Result:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded("deadline passed while the call waited for a worker")
            return fn()

        if self._pool is None:
            return run()
        return await asyncio.get_running_loop().run_in_executor(self._pool, run)


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, reload: Callable[[], Awaitable[tuple[str, str, float]]]) -> None:
        self._reload = reload

    async def ReloadModel(
        self, request: pb.ReloadModelRequest, context: Context
    ) -> pb.ReloadModelResponse:
        try:
            version, previous, seconds = await self._reload()
        except Exception as e:
            raise FailedPrecondition(
                f"reload refused, still serving the previous model: {e}"
            ) from e
        return pb.ReloadModelResponse(
            model_version=version, previous_model_version=previous, load_seconds=seconds
        )


# --- messages -> the core's types ------------------------------------------------------------


def _request(r: pb.RecommendRequest) -> Request:
    user: Key | None = None
    if r.user_key or r.HasField("user_id"):
        user = _one_key(r.user_id, r.user_key, "user")
    return Request(
        user=user,
        movies=(*r.movie_ids, *_keys(r.movie_keys, "movie_keys")),
        weights=tuple(r.weights),
        dislikes=(*r.negative_movie_ids, *_keys(r.negative_movie_keys, "negative_movie_keys")),
        k=r.k or DEFAULT_K,
        filter=_filter(r.filter) if r.HasField("filter") else NO_FILTER,
        include_watched=r.include_watched,
        explain=r.explain,
        diversity=r.diversity,
    )


def _filter(f: pb.Filter) -> Filter:
    return Filter(
        genres_any=tuple(f.genres_any),
        genres_none=tuple(f.genres_none),
        year_min=f.year_min,
        year_max=f.year_max,
        exclude=(*f.exclude_movie_ids, *_keys(f.exclude_movie_keys, "filter.exclude_movie_keys")),
        allow=(*f.allow_movie_ids, *_keys(f.allow_movie_keys, "filter.allow_movie_keys")),
    )


def _one_key(number: int, key: str, what: str) -> Key:
    """A field pair's id: the string key when set, else the integer."""
    if key and number:
        raise InvalidArgument(f"set {what}_id or {what}_key, not both")
    if key:
        _keys((key,), f"{what}_key")
    return key or number


def _required_key(message: pb.Event, what: str, where: str) -> Key:
    """An event's user or movie: a write must name one explicitly (an unset id reads as 0,
    which would record into user 0's history)."""
    if not message.HasField(f"{what}_id") and not getattr(message, f"{what}_key"):  # type: ignore[arg-type]
        raise InvalidArgument(f"{where}: set {what}_id or {what}_key")
    return _one_key(getattr(message, f"{what}_id"), getattr(message, f"{what}_key"),
                    f"{where}.{what}")  # fmt: skip


# google.protobuf.Timestamp's valid range: 0001-01-01 to 9999-12-31, UTC
_FIRST_SECOND, _LAST_SECOND = -62_135_596_800, 253_402_300_799


def _seconds(stamp: Any, where: str) -> float:
    if not (_FIRST_SECOND <= stamp.seconds <= _LAST_SECOND and 0 <= stamp.nanos < 10**9):
        raise InvalidArgument(f"{where} is not a valid timestamp (years 1 to 9999)")
    return float(stamp.seconds + stamp.nanos / 1e9)


def _keys(keys: Sequence[str], field: str) -> Sequence[str]:
    """String ids as given, refused if no id can be one: longer than MAX_ID_CHARS or
    holding NUL (fixed-width id arrays would cut or strip them into another movie's id)."""
    if keys and (max(map(len, keys)) > MAX_ID_CHARS or any("\0" in k for k in keys)):
        raise InvalidArgument(
            f"{field}: a key is over {MAX_ID_CHARS} characters or holds a NUL character"
        )
    return keys
