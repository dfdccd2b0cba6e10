"""The core: from a request (a known user, an inline history, dislikes, filters) to scored
movies. A user's history is aggregated into one query vector and searched for in the FAISS
index with everything excluded or filtered out inside the search; a user with nothing to go
on gets the most popular movies that pass. Plain numpy/FAISS and no gRPC, so it is tested
against brute force, benchmarked and reused (``movierec evaluate`` scores through it).

Usage::

    rec = Recommender(read_artifacts(Path("artifacts/mls")))
    rec.recommend(Request(user=1, k=10))                            # a known user
    rec.recommend(Request(movies=(1, 2, 3), dislikes=(4,)))         # an inline history
    rec.recommend(Request(user=1, filter=Filter(genres_any=("Comedy",))), events)  # live
    rec.similar(1, k=10)
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from movierec.artifacts import AlsAggregation, Artifacts, MeanAggregation, Movie
from movierec.errors import InvalidArgument, NotFound, StatusError
from movierec.ids import Key
from server import rows as rowset
from server.catalogue import Catalogue, Filter, Mask
from server.events import Event, EventType
from server.queries import History, query_for
from server.rows import Rows
from server.search import DIVERSITY_CANDIDATES, Searcher

DEFAULT_K = 10  # what k = 0 means
MAX_K = 1000  # results per call; FAISS allocates k-sized buffers per query
MAX_HISTORY = 10_000  # inline liked or disliked movies per call
MAX_FILTER_IDS = 10_000  # ids in a filter's allow or exclude list
MAX_FILTER_GENRES = 100  # genres in a filter's genres_any or genres_none list
MAX_EXPLAIN = 100  # contributing movies named per recommendation
MAX_BATCH = 64  # requests per BatchRecommend
# What one call may cost, in plain Recommends (k = 10, a 100-movie history, no explanation):
# the product of history, k and explain otherwise lets one legal call cost ~500x a normal one.
MAX_CALL_COST = 20.0
MAX_BATCH_COST = 64.0  # a whole BatchRecommend


class Reason(enum.IntEnum):
    """Why a movie was recommended (values equal the proto enum movierec.v1.Reason)."""

    PERSONAL = 1  # nearest to the user's history
    POPULAR = 2  # no usable history: among the most rated movies that pass the filter


@dataclass(frozen=True)
class Request:
    """One recommendation request, as the gRPC layer and the CLI build it."""

    user: Key | None = None  # a user id: training history plus recorded events
    movies: tuple[Key, ...] = ()  # or an inline history: liked movies
    weights: tuple[float, ...] = ()  # one per inline movie (stars, recency, ...); default 1
    dislikes: tuple[Key, ...] = ()  # disliked movies: pull the query away, never shown
    k: int = DEFAULT_K
    filter: Filter = field(default_factory=Filter)
    include_watched: bool = False  # allow movies from the history itself
    explain: int = 0  # name this many contributing history movies per result
    diversity: float = 0.0  # 0 = pure relevance, up to 1 = re-rank for variety


@dataclass(frozen=True)
class Contribution:
    movie: Movie  # a history movie
    share: float  # its part of the recommendation's score (negative for a dislike)


@dataclass(frozen=True)
class Explanation:
    """A score split exactly: sum(c.share for c in top) + rest + bias == score."""

    top: list[Contribution]  # largest shares first
    rest: float  # the other history movies' shares, summed
    bias: float  # the recommended movie's own term (its popularity prior); 0 for cosine models


@dataclass(frozen=True)
class Scored:
    movie: Movie
    score: float
    reason: Reason = Reason.PERSONAL
    explanation: Explanation | None = None


@dataclass(frozen=True)
class Recommendations:
    items: list[Scored]  # best first
    ignored: list[Key] = field(default_factory=list)  # inline ids the model does not know
    exhausted: bool = False  # fewer than k movies passed the exclusions and filters


@dataclass(frozen=True)
class _Plan:
    request: Request
    history: History
    excluded: Rows  # sorted: never recommended
    allowed: Mask | None  # the filter's rows (None: no filter)
    ignored: list[Key]
    query: npt.NDArray[np.float32] | None  # (1, d); None: no liked movie to go on
    cost: float  # in plain Recommends (see MAX_CALL_COST)


class Recommender:
    def __init__(self, artifacts: Artifacts) -> None:
        self.artifacts = artifacts
        self.model_version = artifacts.model_version
        self.catalogue = Catalogue(artifacts)
        aggregation = artifacts.aggregation
        self._like_threshold = aggregation.like_threshold
        self._bias_dimension = isinstance(aggregation, MeanAggregation) and aggregation.append_one
        self._solves = isinstance(aggregation, AlsAggregation)  # a d x d system per call
        self._query = query_for(artifacts.vectors, aggregation)
        self._searcher = Searcher(artifacts.index, artifacts.vectors)
        self._index = artifacts.index
        self._dim = int(artifacts.index.d)
        self._normal_cost = self._cost_us(100, DEFAULT_K, 0, 0.0)

    @property
    def num_movies(self) -> int:
        return len(self.catalogue)

    def movie(self, movie_id: Key) -> tuple[Movie, bool]:
        """Any catalogued movie and whether it has a vector (can be recommended)."""
        found = self.catalogue.movie(movie_id)
        if found is None:
            raise NotFound(f"movie {movie_id!r} is not in the catalogue")
        return found

    def recommend(self, request: Request, events: Sequence[Event] = ()) -> Recommendations:
        """Top-k for a known user (their training history and ``events``, most recent last),
        or for an inline history; the most popular movies for a user with neither."""
        return self._run(self._plan(request, events))

    def recommend_batch(
        self, requests: Sequence[Request], events: Sequence[Sequence[Event]]
    ) -> list[Recommendations | StatusError]:
        """Each request answered on its own (a bad one fails alone), in order; the whole
        batch is refused when it holds more than MAX_BATCH requests or would cost more than
        MAX_BATCH_COST plain Recommends (counted from the plans: users' full histories)."""
        check_batch_size(len(requests))
        planned: list[_Plan | StatusError] = []
        for r, e in zip(requests, events, strict=True):
            try:
                planned.append(self._plan(r, e))
            except StatusError as error:
                planned.append(error)
        total = sum(p.cost for p in planned if isinstance(p, _Plan))
        if total > MAX_BATCH_COST:
            raise InvalidArgument(
                f"this batch would cost ~{total:.0f}x a plain Recommend; the limit is "
                f"{MAX_BATCH_COST:.0f}x: split it or lower k and explain"
            )
        # plain personal searches are answered together, in one scan; the rest one by one
        out: list[Recommendations | StatusError | None] = [
            p if isinstance(p, StatusError) else None for p in planned
        ]
        together = [
            (i, p) for i, p in enumerate(planned)
            if isinstance(p, _Plan) and p.query is not None and p.request.diversity == 0
            and p.allowed is None
        ]  # fmt: skip
        if together:
            found = self._searcher.search_many(
                np.vstack([p.query for _, p in together]),  # type: ignore[misc]
                [p.request.k for _, p in together], [p.excluded for _, p in together],
            )  # fmt: skip
            for (i, p), f in zip(together, found, strict=True):
                out[i] = self._answer(p, *f)
        return [
            o if o is not None else self._run(p)  # type: ignore[arg-type]
            for o, p in zip(out, planned, strict=True)
        ]

    def similar(
        self, movie_id: Key, k: int = DEFAULT_K, filter: Filter | None = None
    ) -> Recommendations:
        """The k movies nearest to one movie, itself excluded, passing ``filter``."""
        _check_k(k)
        filter = filter or Filter()
        _check_filter(filter)
        row = self.catalogue.row_of(movie_id)
        if row is None:
            what = "has no vector in this model" if self.catalogue.knows([movie_id])[0] else (
                "is not in the catalogue")  # fmt: skip
            raise NotFound(f"movie {movie_id!r} {what}")
        rows = np.array([row], np.int64)
        history = History(rows, None, np.full(1, np.nan), rowset.NONE)
        query = self._query.vector(history)
        allowed = self.catalogue.allowed(filter)
        found, scores = self._searcher.search(query, k, rows, allowed)
        items = self._results(found, scores, history, 0)
        return Recommendations(items, exhausted=len(items) < k)

    # --- one request, in three steps: plan, search, answer ------------------------------

    def _plan(self, request: Request, events: Sequence[Event]) -> _Plan:
        """Everything a request needs before the search: its limits checked, its history,
        what it excludes and allows, and its query (None: nothing to go on, popular)."""
        self._check(request)
        history, seen, ignored = self._history(request, events)
        cost = self._check_cost(request, max(len(history), len(seen)))
        allowed = self.catalogue.allowed(request.filter)
        excluded = history.disliked if request.include_watched else seen
        query = self._query.vector(history) if len(history.liked) else None
        return _Plan(request, history, excluded, allowed, ignored, query, cost)

    def _run(self, plan: _Plan) -> Recommendations:
        """Search for a plan and answer it (a plan with no query: the popular movies)."""
        if plan.query is None:
            return self._popular(plan)
        r = plan.request
        if r.diversity > 0:
            found = self._searcher.diversify(plan.query, r.k, plan.excluded, plan.allowed,
                                             r.diversity)  # fmt: skip
        else:
            found = self._searcher.search(plan.query, r.k, plan.excluded, plan.allowed)
        return self._answer(plan, *found)

    def _answer(self, plan: _Plan, rows: Rows, scores: npt.NDArray[np.float32]) -> Recommendations:
        items = self._results(rows, scores, plan.history, plan.request.explain)
        return Recommendations(items, plan.ignored, exhausted=len(items) < plan.request.k)

    # --- the history -------------------------------------------------------------------

    def _history(
        self, request: Request, events: Sequence[Event]
    ) -> tuple[History, Rows, list[Key]]:
        """(what to aggregate, rows never to recommend, inline ids the model does not know)."""
        disliked, ignored = self.catalogue.rows_of(request.dislikes)
        if request.user is None:
            keys = request.movies
            rows, known = self.catalogue.lookup(keys)
            if not known.all():
                unknown = [k for k, ok in zip(keys, known.tolist(), strict=True) if not ok]
                ignored = list(dict.fromkeys(unknown + ignored))
            given = rowset.unique(rows[known])
            if rowset.member(given, disliked).any():
                raise InvalidArgument("a movie is both in movie_ids and negative_movie_ids")
            weights = np.asarray(request.weights, np.float64)[known] if request.weights else None
            liked, summed = _summed_by_row(rows[known], weights)
            history = History(liked, summed, np.full(len(liked), np.nan), disliked)
            return history, rowset.union(given, disliked), ignored
        found = self.artifacts.histories.lookup(request.user)
        trained, ratings = found if found is not None else (rowset.NONE, np.zeros(0, np.float32))
        rows = trained.astype(np.int64)
        is_liked = ratings >= self._like_threshold
        if not is_liked.any():  # a user who liked nothing: their ratings still say something
            is_liked[:] = True
        liked, stars = rows[is_liked], ratings[is_liked].astype(np.float64)
        seen = rows
        if events:
            liked, stars, disliked, seen = self._overlay(liked, stars, disliked, seen, events)
        if len(disliked):
            keep = ~rowset.member(liked, disliked)
            liked, stars = liked[keep], stars[keep]
        history = History(liked, None, stars, disliked)
        return history, rowset.union(seen, disliked), ignored

    def _overlay(
        self,
        liked: Rows,
        stars: npt.NDArray[np.float64],
        disliked: Rows,
        seen: Rows,
        events: Sequence[Event],
    ) -> tuple[Rows, npt.NDArray[np.float64], Rows, Rows]:
        """Recorded events on top of the training history: WATCH and LIKE add (a watch rated
        below the like threshold only counts as seen), DISLIKE subtracts; a movie's latest
        event decides its state."""
        rows, known = self.catalogue.lookup([e.movie for e in events])
        latest: dict[int, Event] = {}  # oldest first, so later events overwrite
        for row, ok, event in zip(rows.tolist(), known.tolist(), events, strict=True):
            if ok:
                latest[row] = event
        touched = rowset.unique(np.fromiter(latest, np.int64, len(latest)))
        keep = ~rowset.member(liked, touched)  # the events' verdict replaces training's
        new_liked, new_stars, new_disliked = [], [], []
        for row, e in latest.items():
            if e.type == EventType.DISLIKE:
                new_disliked.append(row)
            elif e.type == EventType.LIKE or e.rating is None or e.rating >= self._like_threshold:
                new_liked.append(row)
                new_stars.append(np.nan if e.rating is None else e.rating)
        return (
            np.concatenate([liked[keep], np.array(new_liked, np.int64)]),
            np.concatenate([stars[keep], np.array(new_stars, np.float64)]),
            rowset.union(disliked, np.array(new_disliked, np.int64)),
            rowset.union(seen, touched),
        )

    # --- answers -----------------------------------------------------------------------

    def _popular(self, plan: _Plan) -> Recommendations:
        mask = np.ones(len(self.catalogue), bool) if plan.allowed is None else plan.allowed.copy()
        mask[plan.excluded] = False
        k = plan.request.k
        rows, scores = self.catalogue.popular(k, mask)
        movies = self.catalogue.movies
        pairs = zip(rows.tolist(), scores.tolist(), strict=True)
        items = [Scored(movies[r], s, Reason.POPULAR) for r, s in pairs]
        return Recommendations(items, plan.ignored, exhausted=len(items) < k)

    def _results(
        self, rows: Rows, scores: npt.NDArray[np.float32], history: History, explain: int
    ) -> list[Scored]:
        movies = self.catalogue.movies
        if not explain:
            return [
                Scored(movies[r], s) for r, s in zip(rows.tolist(), scores.tolist(), strict=True)
            ]
        why = self._explain(rows, history, explain)
        return [
            Scored(movies[r], s, Reason.PERSONAL, w)
            for r, s, w in zip(rows.tolist(), scores.tolist(), why, strict=True)
        ]

    def _explain(self, rows: Rows, history: History, top: int) -> list[Explanation]:
        """Split each score into one share per history movie plus the movie's bias."""
        parts = self._query.parts(history)
        targets = self._index.reconstruct_batch(rows)
        d = parts.shape[1]
        bias = targets[:, d] if self._bias_dimension else np.zeros(len(rows), np.float32)
        shares = targets[:, :d] @ parts.T  # (recommended, history)
        order = np.argsort(-shares, axis=1, kind="stable")[:, :top]
        movies, history_rows = self.catalogue.movies, history.rows
        out = []
        for j, row in enumerate(shares):
            best = order[j]
            named = [Contribution(movies[int(history_rows[i])], float(row[i])) for i in best]
            out.append(Explanation(named, float(row.sum() - row[best].sum()), float(bias[j])))
        return out

    # --- limits ------------------------------------------------------------------------

    def _check(self, r: Request) -> None:
        _check_k(r.k)
        if not 0 <= r.explain <= MAX_EXPLAIN:
            raise InvalidArgument(f"explain must be between 0 and {MAX_EXPLAIN}, got {r.explain}")
        if not (0.0 <= r.diversity <= 1.0):  # also refuses NaN
            raise InvalidArgument(f"diversity must be between 0 and 1, got {r.diversity}")
        if (r.user is None) == (not r.movies):
            raise InvalidArgument("set exactly one of user_id or movie_ids")
        for name, ids in (("movie_ids", r.movies), ("negative_movie_ids", r.dislikes)):
            if len(ids) > MAX_HISTORY:
                raise InvalidArgument(f"{name} must hold at most {MAX_HISTORY} ids, got {len(ids)}")
        _check_filter(r.filter)
        if r.weights:
            if len(r.weights) != len(r.movies):
                raise InvalidArgument(
                    f"weights must hold one value per movie_ids entry ({len(r.movies)}), "
                    f"got {len(r.weights)}"
                )
            if not all(math.isfinite(w) and w >= 0 for w in r.weights) or not any(r.weights):
                raise InvalidArgument(
                    "weights must be finite and >= 0, not all 0 (dislikes go in negative_movie_ids)"
                )

    def _check_cost(self, r: Request, history: int) -> float:
        """The call's cost in plain Recommends, refused above MAX_CALL_COST."""
        cost = self._cost_us(history, r.k, r.explain, r.diversity) / self._normal_cost
        if cost > MAX_CALL_COST:
            raise InvalidArgument(
                f"this call would cost ~{cost:.0f}x a plain Recommend (history {history}, "
                f"k {r.k}, explain {r.explain}); the limit is {MAX_CALL_COST:.0f}x: lower k, "
                "explain or the history"
            )
        return cost

    def _cost_us(self, history: int, k: int, explain: int, diversity: float) -> float:
        """Rough microseconds of server work for a call of this size, from measured rates:
        the fixed per-call cost, one index scan, aggregation (for ALS: building and solving
        its d x d system, once more to explain), results (each a message), the explanation's
        share matrix and named contributions, and the diversity re-ranking."""
        n, d = len(self.catalogue), self._dim
        candidates = k * DIVERSITY_CANDIDATES if diversity else k
        us = 250 + n * d / 13_000 + history * d / 6_000 + candidates * 2.0
        if self._solves:
            us += (1 + bool(explain)) * (history * d * d / 4_000 + d**3 / 4_000)
        if explain:
            us += k * history * d / 2_000 + k * explain * 1.0
        if diversity:
            us += k * candidates * d / 2_000
        return us


def check_batch_size(n: int) -> None:
    if n > MAX_BATCH:
        raise InvalidArgument(f"a batch holds at most {MAX_BATCH} requests, got {n}")


def _check_filter(f: Filter) -> None:
    for name, ids in (("allow", f.allow), ("exclude", f.exclude)):
        if len(ids) > MAX_FILTER_IDS:
            raise InvalidArgument(
                f"filter.{name}_movie_ids must hold at most {MAX_FILTER_IDS} ids, got {len(ids)}"
            )
    for name, genres in (("genres_any", f.genres_any), ("genres_none", f.genres_none)):
        if len(genres) > MAX_FILTER_GENRES:
            raise InvalidArgument(
                f"filter.{name} must hold at most {MAX_FILTER_GENRES} genres, got {len(genres)}"
            )
    if f.year_min < 0 or f.year_max < 0:
        raise InvalidArgument("filter years must be >= 0 (0: unbounded)")
    if f.year_min and f.year_max and f.year_min > f.year_max:
        raise InvalidArgument(f"year_min {f.year_min} is after year_max {f.year_max}")


def _check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {k}")


def _summed_by_row(
    rows: Rows, weights: npt.NDArray[np.float64] | None
) -> tuple[Rows, npt.NDArray[np.float64] | None]:
    """Distinct rows, ascending, each with the sum of its weights (1 each by default; None
    when every row is 1): a movie given twice counts twice, as the aggregation is linear.
    Rows weighing 0 in sum are dropped: they add nothing, and if nothing else is left the
    request has nothing to go on (popular), never a 0/0 mean."""
    if weights is None and len(rows) == len(unique := rowset.unique(rows)):
        return unique, None  # the common case: no repeats, no weights
    if not len(rows):
        return rowset.NONE, np.zeros(0)
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    w = np.ones(len(rows)) if weights is None else weights[order]
    starts = np.flatnonzero(np.concatenate(([True], rows[1:] != rows[:-1])))
    summed = np.add.reduceat(w, starts)
    weighing = summed > 0
    return rows[starts][weighing], summed[weighing]
