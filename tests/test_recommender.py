"""The core against a brute-force numpy reference, its business rules (filters, dislikes,
weights, live events, cold start, diversity, batches) and its limits."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from movierec.artifacts import build_index
from movierec.errors import InvalidArgument, NotFound
from server.catalogue import Filter
from server.events import Event, EventType
from server.recommender import (
    MAX_BATCH,
    MAX_EXPLAIN,
    MAX_HISTORY,
    MAX_K,
    Reason,
    Recommender,
    Request,
)
from server.search import OVERFETCH_MIN


def reference(
    rec: Recommender,
    rows: np.ndarray,
    exclude: np.ndarray,
    k: int,
    allowed: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    disliked: np.ndarray | None = None,
) -> np.ndarray:
    """Scores of the true top-k: the weighted mean of the rows' vectors minus half the mean of
    the disliked ones, normalised, dot every index vector, excluded and disallowed rows
    masked, sorted."""
    vectors = np.asarray(rec.artifacts.vectors, np.float64)
    index_vectors = rec.artifacts.index.reconstruct_n(0, rec.artifacts.index.ntotal)
    w = np.ones(len(rows)) if weights is None else weights
    query = (w[:, None] * vectors[rows]).sum(0) / w.sum()
    if disliked is not None and len(disliked):
        query -= 0.5 * vectors[disliked].mean(0)
    query /= np.linalg.norm(query)
    if index_vectors.shape[1] == len(query) + 1:  # a bias dimension rides along
        query = np.append(query, 1.0)
    scores = index_vectors @ query
    scores[exclude] = -np.inf
    if allowed is not None:
        scores[~allowed] = -np.inf
    best = np.sort(scores)[::-1][:k]
    return best[np.isfinite(best)]


def ids_of(rec: Recommender, rows) -> list[int]:  # type: ignore[no-untyped-def]
    return [int(rec.artifacts.movie_ids[r]) for r in rows]


def test_recommend_matches_brute_force(recommender: Recommender) -> None:
    histories = recommender.artifacts.histories
    like = recommender.artifacts.aggregation.like_threshold
    for user in histories.user_ids[::37]:
        rows, ratings = histories.lookup(int(user))
        liked = rows[ratings >= like] if (ratings >= like).any() else rows
        got = recommender.recommend(Request(user=int(user))).items
        want = reference(recommender, liked, rows, 10)
        # FAISS may order ties differently; the scores of the top-k must agree.
        np.testing.assert_allclose([s.score for s in got], want, rtol=1e-4, atol=1e-5)
        watched = set(recommender.artifacts.movie_ids[rows].tolist())
        assert not watched & {s.movie.movie_id for s in got}
        assert {s.reason for s in got} == {Reason.PERSONAL}


def test_inline_history_matches_brute_force(recommender: Recommender) -> None:
    got = recommender.recommend(Request(movies=tuple(ids_of(recommender, [3, 40, 41])), k=25))
    want = reference(recommender, np.array([3, 40, 41]), np.array([3, 40, 41]), 25)
    np.testing.assert_allclose([s.score for s in got.items], want, rtol=1e-4, atol=1e-5)
    assert got.ignored == [] and not got.exhausted


def test_weights_and_dislikes_match_brute_force(recommender: Recommender) -> None:
    liked, disliked = np.array([3, 40, 41]), np.array([7, 8])
    weights = np.array([5.0, 1.0, 0.5])
    request = Request(
        movies=tuple(ids_of(recommender, liked)),
        weights=tuple(weights),
        dislikes=tuple(ids_of(recommender, disliked)),
        k=20,
        explain=5,
    )
    got = recommender.recommend(request).items
    excluded = np.concatenate([liked, disliked])
    want = reference(recommender, liked, excluded, 20, weights=weights, disliked=disliked)
    np.testing.assert_allclose([s.score for s in got], want, rtol=1e-4, atol=1e-5)
    assert not set(ids_of(recommender, disliked)) & {s.movie.movie_id for s in got}
    for item in got:  # explanations stay exact, a dislike is a negative share
        why = item.explanation
        assert why is not None
        assert sum(c.share for c in why.top) + why.rest + why.bias == pytest.approx(
            item.score, abs=1e-4
        )
    # a disliked movie's share pulls the score toward the opposite of its likeness
    vectors, index = recommender.artifacts.vectors, recommender.artifacts.index
    d = vectors.shape[1]
    for item in got:
        row = int(np.flatnonzero(recommender.artifacts.movie_ids == item.movie.movie_id)[0])
        shares = {c.movie.movie_id: c.share for c in item.explanation.top}  # type: ignore[union-attr]
        for r in disliked:
            m = int(recommender.artifacts.movie_ids[r])
            if m in shares:
                likeness = float(index.reconstruct(row)[:d] @ vectors[r])
                assert shares[m] * likeness <= 1e-9


def test_unknown_inline_ids_are_skipped_and_reported(recommender: Recommender) -> None:
    known = int(recommender.artifacts.movie_ids[0])
    got = recommender.recommend(Request(movies=(known, -5, 10**12, -5), k=5))
    assert got.ignored == [-5, 10**12]
    assert len(got.items) == 5 and got.items[0].reason == Reason.PERSONAL


def test_cold_start_gets_popular_movies(recommender: Recommender) -> None:
    counts = recommender.catalogue.popularity
    most_rated = ids_of(recommender, np.argsort(-counts, kind="stable")[:5])
    for request in (Request(user=123456789, k=5), Request(movies=(-5, 7_000_000), k=5)):
        got = recommender.recommend(request)
        assert [s.movie.movie_id for s in got.items] == most_rated
        assert {s.reason for s in got.items} == {Reason.POPULAR}
        assert 0 < got.items[-1].score <= got.items[0].score == 1.0
    comedies = recommender.recommend(
        Request(user=123456789, k=5, filter=Filter(genres_any=("Comedy",)))
    ).items
    assert all("Comedy" in s.movie.genres for s in comedies) and len(comedies) == 5


def test_events_make_a_new_user_personal(recommender: Recommender) -> None:
    movies = ids_of(recommender, [3, 40, 41])
    events = [
        Event("new-user", str(m), EventType.WATCH, None, float(i)) for i, m in enumerate(movies)
    ]
    got = recommender.recommend(Request(user="new-user", k=10), events)
    want = reference(recommender, np.array([3, 40, 41]), np.array([3, 40, 41]), 10)
    np.testing.assert_allclose([s.score for s in got.items], want, rtol=1e-4, atol=1e-5)
    assert {s.reason for s in got.items} == {Reason.PERSONAL}


def test_events_overlay_a_known_users_history(recommender: Recommender) -> None:
    histories = recommender.artifacts.histories
    user = int(histories.user_ids[5])
    rows, ratings = histories.lookup(user)
    like = recommender.artifacts.aggregation.like_threshold
    liked = rows[ratings >= like]
    unseen = np.setdiff1d(np.arange(recommender.num_movies), rows)
    watched, hated = int(unseen[0]), int(liked[0])
    events = [
        Event(user, int(recommender.artifacts.movie_ids[watched]), EventType.LIKE, None, 1.0),
        Event(user, int(recommender.artifacts.movie_ids[hated]), EventType.DISLIKE, None, 2.0),
    ]
    got = recommender.recommend(Request(user=user, k=10), events)
    new_liked = np.append(np.setdiff1d(liked, [hated]), watched)
    excluded = np.union1d(rows, [watched])
    want = reference(recommender, new_liked, excluded, 10, disliked=np.array([hated]))
    np.testing.assert_allclose([s.score for s in got.items], want, rtol=1e-4, atol=1e-5)
    # a later event about the same movie wins: watched again, so no longer disliked
    again = [
        *events,
        Event(user, int(recommender.artifacts.movie_ids[hated]), EventType.WATCH, 5.0, 3.0),
    ]
    back = recommender.recommend(Request(user=user, k=10), again)
    want = reference(recommender, np.append(liked, watched), excluded, 10)
    np.testing.assert_allclose([s.score for s in back.items], want, rtol=1e-4, atol=1e-5)


def test_filters_apply_inside_the_search(recommender: Recommender) -> None:
    cat = recommender.catalogue
    user = int(recommender.artifacts.histories.user_ids[3])
    rows, ratings = recommender.artifacts.histories.lookup(user)
    liked = rows[ratings >= recommender.artifacts.aggregation.like_threshold]
    years = np.array([m.year or 0 for m in cat.movies])
    genres = [set(m.genres) for m in cat.movies]
    allowed_ids = ids_of(recommender, range(0, recommender.num_movies, 3))
    for f in (
        Filter(genres_any=("Comedy", "Drama")),
        Filter(genres_none=("Comedy",)),
        Filter(year_min=1980, year_max=1999),
        Filter(genres_any=("Western",), year_min=2000),  # selective: scored directly
        Filter(allow=tuple(allowed_ids), exclude=tuple(allowed_ids[:5])),
    ):
        mask = cat.allowed(f)
        assert mask is not None
        got = recommender.recommend(Request(user=user, k=30, filter=f))
        want = reference(recommender, liked, rows, 30, allowed=mask)
        np.testing.assert_allclose([s.score for s in got.items], want, rtol=1e-4, atol=1e-5)
        assert got.exhausted == (len(want) < 30)
        for s in got.items:
            row = int(np.flatnonzero(recommender.artifacts.movie_ids == s.movie.movie_id)[0])
            assert mask[row]
            if f.genres_any:
                assert genres[row] & set(f.genres_any)
            if f.year_min:
                assert years[row] >= f.year_min
    nothing = recommender.recommend(Request(user=user, filter=Filter(allow=(-1,))))
    assert nothing.items == [] and nothing.exhausted
    with pytest.raises(InvalidArgument, match="unknown genre 'Comdy'"):
        recommender.recommend(Request(user=user, filter=Filter(genres_any=("Comdy",))))


def test_diversity_keeps_k_and_spreads_the_list(recommender: Recommender) -> None:
    unit = recommender.artifacts.vectors / np.linalg.norm(recommender.artifacts.vectors, axis=1,
                                                          keepdims=True)  # fmt: skip

    def spread(items) -> float:  # type: ignore[no-untyped-def]
        rows = [int(np.flatnonzero(recommender.artifacts.movie_ids == s.movie.movie_id)[0])
                for s in items]  # fmt: skip
        sims = unit[rows] @ unit[rows].T
        return float(1 - sims[np.triu_indices(len(rows), 1)].mean())

    gains = []
    for user in recommender.artifacts.histories.user_ids[:20].tolist():
        plain = recommender.recommend(Request(user=user, k=10)).items
        diverse = recommender.recommend(Request(user=user, k=10, diversity=0.5)).items
        assert len(diverse) == 10
        gains.append(spread(diverse) - spread(plain))
    assert np.mean(gains) > 0, gains


def test_batch_answers_each_request_alone(recommender: Recommender) -> None:
    user = int(recommender.artifacts.histories.user_ids[0])
    requests = [Request(user=user), Request(user=user, k=0), Request(movies=(1, 2), k=3)]
    got = recommender.recommend_batch(requests, [(), (), ()])
    assert got[0] == recommender.recommend(requests[0])
    assert isinstance(got[1], InvalidArgument)
    assert len(got[2].items) == 3  # type: ignore[union-attr]
    with pytest.raises(InvalidArgument, match=f"at most {MAX_BATCH}"):
        recommender.recommend_batch([requests[0]] * (MAX_BATCH + 1), [()] * (MAX_BATCH + 1))


def test_exactly_k_until_the_catalogue_runs_out(recommender: Recommender) -> None:
    n = recommender.num_movies
    user = int(recommender.artifacts.histories.user_ids[0])
    rows, _ = recommender.artifacts.histories.lookup(user)
    unseen = n - len(np.unique(rows))
    got = recommender.recommend(Request(user=user, k=MAX_K))
    assert len(got.items) == min(MAX_K, unseen) and got.exhausted == (unseen < MAX_K)
    everything = recommender.recommend(
        Request(movies=tuple(recommender.artifacts.movie_ids.tolist()[:MAX_HISTORY]), k=5)
    )
    assert len(everything.items) == max(0, min(5, n - min(n, MAX_HISTORY)))
    all_k = recommender.recommend(Request(user=user, k=min(MAX_K, n), include_watched=True))
    assert len(all_k.items) == min(MAX_K, n)


def test_include_watched_can_return_watched_movies(recommender: Recommender) -> None:
    movie = int(recommender.artifacts.movie_ids[5])
    k = min(MAX_K, recommender.num_movies)
    with_watched = recommender.recommend(Request(movies=(movie,), k=k, include_watched=True))
    assert movie in {s.movie.movie_id for s in with_watched.items}
    assert len(with_watched.items) == k
    without = recommender.recommend(Request(movies=(movie,), k=k)).items
    assert movie not in {s.movie.movie_id for s in without}
    assert len(without) == min(k, recommender.num_movies - 1)


def test_similar_excludes_the_movie_itself(recommender: Recommender) -> None:
    movie = int(recommender.artifacts.movie_ids[7])
    got = recommender.similar(movie, 10).items
    assert len(got) == 10 and movie not in {s.movie.movie_id for s in got}
    scores = [s.score for s in got]
    assert scores == sorted(scores, reverse=True)
    dramas = recommender.similar(movie, 10, Filter(genres_any=("Drama",))).items
    assert all("Drama" in s.movie.genres for s in dramas)


@pytest.mark.parametrize("k", [-1, MAX_K + 1, 2**31 - 1])
def test_k_out_of_range(recommender: Recommender, k: int) -> None:
    user = int(recommender.artifacts.histories.user_ids[0])
    with pytest.raises(InvalidArgument, match=f"k must be between 1 and {MAX_K}, got {k}"):
        recommender.recommend(Request(user=user, k=k))
    with pytest.raises(InvalidArgument):
        recommender.similar(int(recommender.artifacts.movie_ids[0]), k)


def test_request_shape_limits(recommender: Recommender) -> None:
    with pytest.raises(InvalidArgument, match="set exactly one of user_id or movie_ids"):
        recommender.recommend(Request())
    with pytest.raises(InvalidArgument, match="set exactly one"):
        recommender.recommend(Request(user=1, movies=(1,)))
    with pytest.raises(InvalidArgument, match="movie_ids must hold at most"):
        recommender.recommend(Request(movies=(1,) * (MAX_HISTORY + 1)))
    with pytest.raises(InvalidArgument, match="weights must hold one value per"):
        recommender.recommend(Request(movies=(1, 2), weights=(1.0,)))
    for bad in ((-1.0, 1.0), (float("nan"), 1.0), (0.0, 0.0)):
        with pytest.raises(InvalidArgument, match="weights must be finite"):
            recommender.recommend(Request(movies=(1, 2), weights=bad))
    for diversity in (-0.1, 1.5, float("nan")):
        with pytest.raises(InvalidArgument, match="diversity must be between 0 and 1"):
            recommender.recommend(Request(movies=(1,), diversity=diversity))
    with pytest.raises(InvalidArgument, match="both in movie_ids and negative_movie_ids"):
        recommender.recommend(Request(movies=(1, 2), dislikes=(2,)))


def test_a_call_costs_at_most_a_bounded_multiple_of_a_plain_one(
    recommender: Recommender,
) -> None:
    everything = tuple(recommender.artifacts.movie_ids.tolist())
    history = (everything * (MAX_HISTORY // len(everything) + 1))[:MAX_HISTORY]
    with pytest.raises(InvalidArgument, match=r"would cost ~\d+x a plain Recommend"):
        recommender.recommend(Request(movies=history, k=MAX_K, explain=MAX_EXPLAIN))
    # each field at its limit alone is fine
    recommender.recommend(Request(movies=history, k=10))
    recommender.recommend(Request(movies=history[:100], k=MAX_K))
    recommender.recommend(Request(movies=history[:100], k=10, explain=MAX_EXPLAIN))


def test_unknown_ids(recommender: Recommender) -> None:
    with pytest.raises(NotFound, match="movie 987654 is not in the catalogue"):
        recommender.similar(987654, 5)
    with pytest.raises(NotFound, match="movie 987654"):
        recommender.movie(987654)
    assert recommender.movie("1") == recommender.movie(1)  # "1" and 1 are one id


def test_sample_users_get_their_favourite_genres(recommender: Recommender, sample) -> None:
    """The sample's users mostly like one or two genres; their top 10 should be mostly those
    genres (a random top 10 matches a 1-2 genre taste ~15-30% of the time)."""
    agree = []
    for user, favourites in list(sample.favourites.items())[:200]:
        items = recommender.recommend(Request(user=user)).items
        agree.append(np.mean([bool(set(s.movie.genres) & set(favourites)) for s in items]))
    assert np.mean(agree) > 0.7, np.mean(agree)


def test_explanations_split_each_score_exactly(recommender: Recommender) -> None:
    histories = recommender.artifacts.histories
    user = int(histories.user_ids[11])
    full = recommender.recommend(Request(user=user, explain=MAX_EXPLAIN)).items
    plain = recommender.recommend(Request(user=user)).items
    assert [s.movie for s in full] == [s.movie for s in plain]
    rows, ratings = histories.lookup(user)
    liked = rows[ratings >= recommender.artifacts.aggregation.like_threshold]
    index = recommender.artifacts.index
    for item in full:
        why = item.explanation
        assert why is not None and len(why.top) == min(MAX_EXPLAIN, len(liked))
        total = sum(c.share for c in why.top) + why.rest + why.bias
        assert total == pytest.approx(item.score, abs=1e-4)
        shares = [c.share for c in why.top]
        assert shares == sorted(shares, reverse=True)
        assert {c.movie.movie_id for c in why.top} <= set(
            recommender.artifacts.movie_ids[liked].tolist()
        )
        row = int(np.flatnonzero(recommender.artifacts.movie_ids == item.movie.movie_id)[0])
        assert why.bias == pytest.approx(float(index.reconstruct(row)[-1]), abs=1e-6)


def test_explanations_name_the_top_contributors(recommender: Recommender) -> None:
    ids = tuple(ids_of(recommender, [2, 30, 31, 90]))
    items = recommender.recommend(Request(movies=ids, k=5, explain=2)).items
    for item in items:
        why = item.explanation
        assert why is not None and len(why.top) == 2
        assert why.rest <= why.top[1].share * 2 + 1e-6  # the two left out are each smaller
        assert sum(c.share for c in why.top) + why.rest + why.bias == pytest.approx(
            item.score, abs=1e-4
        )
    assert recommender.recommend(Request(movies=ids, k=5)).items[0].explanation is None


@pytest.mark.parametrize("explain", [-1, MAX_EXPLAIN + 1])
def test_explain_out_of_range(recommender: Recommender, explain: int) -> None:
    with pytest.raises(InvalidArgument, match=f"explain must be between 0 and {MAX_EXPLAIN}"):
        recommender.recommend(Request(movies=(int(recommender.artifacts.movie_ids[0]),),
                                      explain=explain))  # fmt: skip


@pytest.mark.parametrize("kind", ["hnsw", "fp16"])
def test_approximate_indexes_find_what_exact_search_finds(
    recommender: Recommender, kind: str
) -> None:
    exact = recommender.artifacts.index
    vectors = exact.reconstruct_n(0, exact.ntotal)
    index = build_index(vectors, kind, hnsw_m=16, ef_search=64)
    approx = Recommender(dataclasses.replace(recommender.artifacts, index=index))
    users = recommender.artifacts.histories.user_ids[::10]
    hits = []
    for user in users.tolist():
        want = {s.movie.movie_id for s in recommender.recommend(Request(user=user)).items}
        got = approx.recommend(Request(user=user)).items
        assert len(got) == 10
        hits.append(len(want & {s.movie.movie_id for s in got}) / 10)
    assert np.mean(hits) >= 0.95, np.mean(hits)
    # k above efSearch, long exclusions (the selector path) and a selective filter still
    # give exactly k
    user = int(users[0])
    assert len(approx.recommend(Request(user=user, k=200)).items) == 200
    everything = tuple(recommender.artifacts.movie_ids[: OVERFETCH_MIN + 50].tolist())
    items = approx.recommend(Request(movies=everything, k=30, explain=2)).items
    assert len(items) == 30 and not set(everything) & {s.movie.movie_id for s in items}
    westerns = Filter(genres_any=("Western",))
    mask = approx.catalogue.allowed(westerns)
    assert mask is not None
    rows, _ = recommender.artifacts.histories.lookup(user)
    mask[rows] = False
    got = approx.recommend(Request(user=user, k=25, filter=westerns)).items
    assert len(got) == min(25, int(mask.sum()))
    assert all("Western" in s.movie.genres for s in got)
    if kind == "hnsw":  # exclusions alone go through an id set; all but 3 movies watched
        ids = recommender.artifacts.movie_ids.tolist()
        got = approx.recommend(Request(movies=tuple(ids[3:]), k=10))
        assert {s.movie.movie_id for s in got.items} == set(ids[:3]) and got.exhausted


def test_a_batch_searches_together_and_answers_as_one_by_one(
    recommender: Recommender,
) -> None:
    users = recommender.artifacts.histories.user_ids[:40].tolist()
    requests = [Request(user=u, k=5 + i % 7) for i, u in enumerate(users)]
    requests[3] = Request(user=users[3], filter=Filter(genres_any=("Drama",)))  # alone
    batch = recommender.recommend_batch(requests, [()] * len(requests))
    for request, got in zip(requests, batch, strict=True):
        want = recommender.recommend(request)
        assert isinstance(got, type(want))
        np.testing.assert_allclose([s.score for s in got.items], [s.score for s in want.items],
                                   rtol=1e-5, atol=1e-5)  # fmt: skip
        assert len(got.items) == len(want.items) == request.k


def _string_id_recommender(tmp_path) -> Recommender:  # type: ignore[no-untyped-def]
    """Six movies with string ids of two characters ("m0".."m5")."""
    from movierec.artifacts import (
        Histories,
        MeanAggregation,
        Movie,
        read_artifacts,
        write_artifacts,
    )

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, 4)).astype(np.float32)
    write_artifacts(
        tmp_path / "str",
        movies=[Movie(f"m{i}", f"Movie {i}", ("Drama",), 2000) for i in range(6)],
        vectors=vectors,
        index=build_index(vectors),
        histories=Histories(
            np.array(["u1"]), np.array([0, 1]), np.array([0], np.int32), np.array([5.0], np.float32)
        ),  # fmt: skip
        settings={},
        aggregation=MeanAggregation(like_threshold=3.5, append_one=False),
    )
    return Recommender(read_artifacts(tmp_path / "str"))


def test_a_longer_string_key_is_never_cut_into_another_movies_id(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rec = _string_id_recommender(tmp_path)
    # The catalogue stores ids as 2-character fixed-width strings; cast to that width,
    # "m1-deleted" read as "m1" and "m1\0" as "m1".
    got = rec.recommend(Request(movies=("m0", "m1-deleted", "m1\0"), k=5))
    assert got.ignored == ["m1-deleted", "m1\0"]
    assert "m1" in {s.movie.movie_id for s in got.items}  # not excluded as "watched"
    assert not rec.catalogue.knows(["m1-deleted", "m2\0", "x" * 10_000]).any()
    with pytest.raises(NotFound):
        rec.movie("m1-deleted")


def test_weights_that_sum_to_zero_after_unknown_ids_fall_back_to_popular(
    recommender: Recommender,
) -> None:
    """Allowed weights (not all 0), but the only positive one is on an unknown id: nothing
    is left to aggregate. Never a 0/0 query (NaN scores, or an empty answer)."""
    a, b = ids_of(recommender, [3, 4])
    got = recommender.recommend(Request(movies=(a, b, 987654), weights=(0.0, 0.0, 2.0), k=10))
    assert len(got.items) == 10 and {s.reason for s in got.items} == {Reason.POPULAR}
    assert all(np.isfinite(s.score) for s in got.items)
    assert not {a, b} & {s.movie.movie_id for s in got.items}  # given, so seen
    assert got.ignored == [987654]
    # a zero weight beside a positive one adds nothing
    mixed = recommender.recommend(Request(movies=(a, b), weights=(0.0, 1.0), k=10))
    alone = recommender.recommend(Request(movies=(b,), k=11))
    assert [s.movie.movie_id for s in mixed.items] == [
        s.movie.movie_id for s in alone.items if s.movie.movie_id != a
    ][:10]


def test_a_batch_costs_what_its_users_histories_cost(recommender: Recommender) -> None:
    """A user's training history counts toward the batch's cost, as it does for one call."""
    from server.recommender import MAX_BATCH_COST

    h = recommender.artifacts.histories
    user = int(h.user_ids[int(np.argmax(np.diff(h.indptr)))])  # the longest history
    heavy = next(
        r for k in (20, 50, 100, 200, 300)
        if 3 < recommender._plan(r := Request(user=user, k=k, explain=5), ()).cost <= 10
    )  # fmt: skip
    cost = recommender._plan(heavy, ()).cost  # allowed alone
    n = int(MAX_BATCH_COST / cost) + 1
    assert n <= MAX_BATCH
    with pytest.raises(InvalidArgument, match="this batch would cost"):
        recommender.recommend_batch([heavy] * n, [()] * n)
    answers = recommender.recommend_batch([heavy] * (n - 1), [()] * (n - 1))
    want = [s.score for s in recommender.recommend(heavy).items]
    for got in answers:
        np.testing.assert_allclose([s.score for s in got.items], want, rtol=1e-5, atol=1e-5)  # type: ignore[union-attr]


def test_filter_genre_lists_are_bounded_and_each_genre_counts_once(
    recommender: Recommender,
) -> None:
    """A 1 MB request of 200,000 repeats of one genre took ~600 ms and a (list x catalogue)
    mask matrix; now over 100 is refused and repeats are one pass each."""
    from server.recommender import MAX_FILTER_GENRES

    genre = recommender.catalogue.genres[0]
    for field in ("genres_any", "genres_none"):
        with pytest.raises(InvalidArgument, match=f"filter.{field} must hold at most"):
            recommender.recommend(
                Request(movies=(1,), filter=Filter(**{field: (genre,) * (MAX_FILTER_GENRES + 1)}))
            )
        with pytest.raises(InvalidArgument, match=f"filter.{field} must hold at most"):
            recommender.similar(1, filter=Filter(**{field: (genre,) * (MAX_FILTER_GENRES + 1)}))
    many = recommender.recommend(Request(movies=(1,), filter=Filter(genres_any=(genre,) * 100)))
    once = recommender.recommend(Request(movies=(1,), filter=Filter(genres_any=(genre,))))
    assert many == once


def test_negative_years_are_refused(recommender: Recommender) -> None:
    """year_min -1 let unknown-year movies pass a bound they should fail."""
    for bounds in ({"year_min": -1}, {"year_max": -5}):
        with pytest.raises(InvalidArgument, match="filter years must be >= 0"):
            recommender.recommend(Request(movies=(1,), filter=Filter(**bounds)))


def test_a_full_batch_of_plain_requests_is_within_the_batch_limit(
    recommender: Recommender,
) -> None:
    """64 plain Recommends (k 10, an inline history of 100) are what MAX_BATCH_COST is
    stated in; the history used to be counted twice (liked, then again as seen)."""
    every = recommender.artifacts.movie_ids.tolist()
    requests = [Request(movies=tuple(every[i : i + 100])) for i in range(MAX_BATCH)]
    answers = recommender.recommend_batch(requests, [()] * MAX_BATCH)
    assert all(len(a.items) == 10 for a in answers)  # type: ignore[union-attr]


def test_an_als_calls_cost_counts_its_solve(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """ALS solves a d x d system per call (d^2 per history movie): a 10,000-movie history at
    d 128 cost ~80x a plain call while the estimate said ~1.5x."""
    from movierec.artifacts import AlsAggregation, Histories, Movie, read_artifacts, write_artifacts

    rng = np.random.default_rng(0)
    n, d = 12_000, 128
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    write_artifacts(
        tmp_path / "als",
        movies=[Movie(i, f"Movie {i}", ("Drama",), 2000) for i in range(n)],
        vectors=vectors,
        index=build_index(vectors),
        histories=Histories(
            np.array([1]), np.array([0, 1]), np.array([0], np.int32), np.array([5.0], np.float32)
        ),  # fmt: skip
        settings={},
        aggregation=AlsAggregation(
            like_threshold=3.5, regularization=0.1, alpha=1.0, inline_stars=4.0
        ),  # fmt: skip
    )
    rec = Recommender(read_artifacts(tmp_path / "als"))
    assert len(rec.recommend(Request(movies=tuple(range(100)))).items) == 10
    with pytest.raises(InvalidArgument, match=r"would cost ~\d+x a plain Recommend"):
        rec.recommend(Request(movies=tuple(range(MAX_HISTORY))))
