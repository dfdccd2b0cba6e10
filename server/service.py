"""RecommenderService over gRPC: validate the request, call the core, build the response.
Domain errors become status codes in one place (``_status_of``); no exception ever reaches a
client as UNKNOWN with a traceback."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc

from movierec.errors import DeadlineExceeded, FailedPrecondition, InvalidArgument, StatusError
from movierec.v1 import recommender_pb2 as pb
from movierec.v1 import recommender_pb2_grpc as pb_grpc
from server.recommender import Recommender, Scored

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Servicer = TypeVar("Servicer")
Handler = Callable[[Servicer, Req, Context], Awaitable[Resp]]


def _rpc(handler: Handler[Servicer, Req, Resp]) -> Handler[Servicer, Req, Resp]:
    """Map domain errors to their status code and anything unexpected to INTERNAL, logged
    here with its traceback and never sent to the client."""

    @functools.wraps(handler)
    async def wrapper(self: Servicer, request: Req, context: Context) -> Resp:
        try:
            return await handler(self, request, context)
        except StatusError as e:
            await context.abort(grpc.StatusCode[e.code], e.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("%s failed", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        raise AssertionError("unreachable: abort raises")

    return wrapper


def _recommendation(item: Scored) -> pb.Recommendation:
    m = item.movie
    out = pb.Recommendation(
        movie_id=m.movie_id, title=m.title, genres=m.genres, similarity=item.score, year=m.year or 0
    )
    if (why := item.explanation) is not None:
        top = [pb.Contribution(movie_id=c.movie.movie_id, title=c.movie.title, share=c.share)
               for c in why.top]  # fmt: skip
        out.explanation.CopyFrom(pb.Explanation(top=top, rest=why.rest, bias=why.bias))
    return out


class RecommenderServicer(pb_grpc.RecommenderServiceServicer):
    """Handlers parse and validate on the event loop, then run the core on a worker pool:
    FAISS releases the GIL, so searches use every core, and the loop stays free to admit,
    shed and health-check while workers are busy. Without a pool the core runs on the loop
    itself: no hand-off to a thread and back, but each search holds up every other call."""

    def __init__(self, recommender: Recommender, pool: Executor | None) -> None:
        # Swapped as one reference on reload; each call reads it once, so an answer never
        # mixes two models.
        self.recommender = recommender
        self._pool = pool

    async def _work(self, context: Context, fn: Callable[[], Resp]) -> Resp:
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining

        def run() -> Resp:
            if deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded("deadline passed while the call waited for a worker")
            return fn()

        if self._pool is None:
            return run()
        return await asyncio.get_running_loop().run_in_executor(self._pool, run)

    @_rpc
    async def Recommend(
        self, request: pb.RecommendRequest, context: Context
    ) -> pb.RecommendResponse:
        rec = self.recommender
        has_user = request.HasField("user_id")
        if has_user == bool(request.movie_ids):
            raise InvalidArgument("set exactly one of user_id or movie_ids")

        def work() -> pb.RecommendResponse:
            if has_user:
                result = rec.recommend(
                    request.user_id, request.k, request.include_watched, request.explain
                )
            else:
                result = rec.recommend_for_movies(
                    request.movie_ids, request.k, request.include_watched, request.explain
                )
            return pb.RecommendResponse(
                recommendations=[_recommendation(s) for s in result.items],
                model_version=rec.model_version,
                ignored_movie_ids=result.ignored_movie_ids,
            )

        return await self._work(context, work)

    @_rpc
    async def SimilarMovies(
        self, request: pb.SimilarMoviesRequest, context: Context
    ) -> pb.SimilarMoviesResponse:
        rec = self.recommender

        def work() -> pb.SimilarMoviesResponse:
            items = rec.similar(request.movie_id, request.k)
            return pb.SimilarMoviesResponse(
                recommendations=[_recommendation(s) for s in items],
                model_version=rec.model_version,
            )

        return await self._work(context, work)

    @_rpc
    async def GetMovie(self, request: pb.GetMovieRequest, context: Context) -> pb.GetMovieResponse:
        rec = self.recommender  # a dictionary-speed lookup: not worth a trip to the pool
        m = rec.movie(request.movie_id)
        movie = pb.Movie(movie_id=m.movie_id, title=m.title, genres=m.genres, year=m.year or 0)
        return pb.GetMovieResponse(movie=movie, model_version=rec.model_version)


class AdminServicer(pb_grpc.AdminServiceServicer):
    def __init__(self, reload: Callable[[], Awaitable[tuple[str, str, float]]]) -> None:
        self._reload = reload

    @_rpc
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
