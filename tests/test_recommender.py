"""The core against a brute-force numpy reference, and its argument checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from movierec.artifacts import build_index
from movierec.errors import InvalidArgument, NotFound
from server.recommender import (
    MAX_EXPLAIN,
    MAX_HISTORY,
    MAX_K,
    OVERFETCH_MIN,
    Recommender,
)


def reference(rec: Recommender, rows: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Scores of the true top-k: mean of the rows' vectors, normalised, dot every index
    vector, excluded rows masked, sorted."""
    vectors = np.asarray(rec.artifacts.vectors)
    index_vectors = rec.artifacts.index.reconstruct_n(0, rec.artifacts.index.ntotal)
    query = vectors[rows].mean(0)
    query /= np.linalg.norm(query)
    if index_vectors.shape[1] == len(query) + 1:  # a bias dimension rides along
        query = np.append(query, 1.0)
    scores = index_vectors @ query
    scores[exclude] = -np.inf
    return np.sort(scores)[::-1][:k]


def test_recommend_matches_brute_force(recommender: Recommender) -> None:
    histories = recommender.artifacts.histories
    like = recommender.artifacts.aggregation["like_threshold"]
    for user in histories.user_ids[::37]:
        rows, ratings = histories.lookup(int(user))
        liked = rows[ratings >= like] if (ratings >= like).any() else rows
        got = recommender.recommend(int(user), 10).items
        want = reference(recommender, liked, rows, 10)
        # FAISS may order ties differently; the scores of the top-k must agree.
        np.testing.assert_allclose([s.score for s in got], want, rtol=1e-4, atol=1e-5)
        watched = set(recommender.artifacts.movie_ids[rows].tolist())
        assert not watched & {s.movie.movie_id for s in got}


def test_inline_history_matches_brute_force(recommender: Recommender) -> None:
    ids = recommender.artifacts.movie_ids
    got = recommender.recommend_for_movies([int(ids[3]), int(ids[40]), int(ids[41])], 25)
    want = reference(recommender, np.array([3, 40, 41]), np.array([3, 40, 41]), 25)
    np.testing.assert_allclose([s.score for s in got.items], want, rtol=1e-4, atol=1e-5)
    assert got.ignored_movie_ids == []


def test_unknown_inline_ids_are_skipped_and_reported(recommender: Recommender) -> None:
    known = int(recommender.artifacts.movie_ids[0])
    got = recommender.recommend_for_movies([known, -5, 10**12], 5)
    assert got.ignored_movie_ids == [-5, 10**12]
    assert len(got.items) == 5
    with pytest.raises(NotFound, match="none of the movie_ids is in the catalogue: -5, 7"):
        recommender.recommend_for_movies([-5, 7_000_000], 5)


def test_exactly_k_until_the_catalogue_runs_out(recommender: Recommender) -> None:
    n = recommender.num_movies
    user = int(recommender.artifacts.histories.user_ids[0])
    rows, _ = recommender.artifacts.histories.lookup(user)
    unseen = n - len(np.unique(rows))
    assert len(recommender.recommend(user, MAX_K).items) == min(MAX_K, unseen)
    everything = recommender.recommend_for_movies(
        recommender.artifacts.movie_ids.tolist()[:MAX_HISTORY], 5
    )
    assert len(everything.items) == max(0, min(5, n - min(n, MAX_HISTORY)))
    assert len(recommender.recommend(user, min(MAX_K, n), include_watched=True).items) == min(
        MAX_K, n
    )


def test_include_watched_can_return_watched_movies(recommender: Recommender) -> None:
    movie = int(recommender.artifacts.movie_ids[5])
    k = min(MAX_K, recommender.num_movies)
    with_watched = recommender.recommend_for_movies([movie], k, include_watched=True).items
    assert movie in {s.movie.movie_id for s in with_watched}
    assert len(with_watched) == k
    without = recommender.recommend_for_movies([movie], k).items
    assert movie not in {s.movie.movie_id for s in without}
    assert len(without) == min(k, recommender.num_movies - 1)


def test_similar_excludes_the_movie_itself(recommender: Recommender) -> None:
    movie = int(recommender.artifacts.movie_ids[7])
    got = recommender.similar(movie, 10)
    assert len(got) == 10 and movie not in {s.movie.movie_id for s in got}
    scores = [s.score for s in got]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("k", [0, -1, MAX_K + 1, 2**31 - 1])
def test_k_out_of_range(recommender: Recommender, k: int) -> None:
    user = int(recommender.artifacts.histories.user_ids[0])
    with pytest.raises(InvalidArgument, match=f"k must be between 1 and {MAX_K}, got {k}"):
        recommender.recommend(user, k)
    with pytest.raises(InvalidArgument):
        recommender.similar(int(recommender.artifacts.movie_ids[0]), k)


def test_history_size_limits(recommender: Recommender) -> None:
    with pytest.raises(InvalidArgument, match="movie_ids must hold 1 to"):
        recommender.recommend_for_movies([], 5)
    with pytest.raises(InvalidArgument, match="movie_ids must hold 1 to"):
        recommender.recommend_for_movies([1] * (MAX_HISTORY + 1), 5)


def test_unknown_ids(recommender: Recommender) -> None:
    with pytest.raises(NotFound, match="user 123456789 is not known"):
        recommender.recommend(123456789, 5)
    with pytest.raises(NotFound, match="movie 987654 is not in the catalogue"):
        recommender.similar(987654, 5)
    with pytest.raises(NotFound, match="movie 987654"):
        recommender.movie(987654)


def test_sample_users_get_their_favourite_genres(recommender: Recommender, sample) -> None:
    """The sample's users mostly like one or two genres; their top 10 should be mostly those
    genres (a random top 10 matches a 1-2 genre taste ~15-30% of the time)."""
    agree = []
    for user, favourites in list(sample.favourites.items())[:200]:
        items = recommender.recommend(user, 10).items
        agree.append(np.mean([bool(set(s.movie.genres) & set(favourites)) for s in items]))
    assert np.mean(agree) > 0.7, np.mean(agree)


def test_explanations_split_each_score_exactly(recommender: Recommender) -> None:
    histories = recommender.artifacts.histories
    user = int(histories.user_ids[11])
    full = recommender.recommend(user, 10, explain=MAX_EXPLAIN).items
    plain = recommender.recommend(user, 10).items
    assert [s.movie for s in full] == [s.movie for s in plain]
    rows, ratings = histories.lookup(user)
    liked = rows[ratings >= recommender.artifacts.aggregation["like_threshold"]]
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
    ids = [int(i) for i in recommender.artifacts.movie_ids[[2, 30, 31, 90]]]
    items = recommender.recommend_for_movies(ids, 5, explain=2).items
    for item in items:
        why = item.explanation
        assert why is not None and len(why.top) == 2
        assert why.rest <= why.top[1].share * 2 + 1e-6  # the two left out are each smaller
        assert sum(c.share for c in why.top) + why.rest + why.bias == pytest.approx(
            item.score, abs=1e-4
        )
    assert recommender.recommend_for_movies(ids, 5).items[0].explanation is None


@pytest.mark.parametrize("explain", [-1, MAX_EXPLAIN + 1])
def test_explain_out_of_range(recommender: Recommender, explain: int) -> None:
    with pytest.raises(InvalidArgument, match=f"explain must be between 0 and {MAX_EXPLAIN}"):
        recommender.recommend_for_movies(
            [int(recommender.artifacts.movie_ids[0])], 5, explain=explain
        )


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
        want = {s.movie.movie_id for s in recommender.recommend(user, 10).items}
        got = approx.recommend(user, 10).items
        assert len(got) == 10
        hits.append(len(want & {s.movie.movie_id for s in got}) / 10)
    assert np.mean(hits) >= 0.95, np.mean(hits)
    # k above efSearch and long exclusions (the selector path) still give exactly k
    user = int(users[0])
    rows, _ = recommender.artifacts.histories.lookup(user)
    assert len(approx.recommend(user, 200).items) == 200
    everything = recommender.artifacts.movie_ids[
        : OVERFETCH_MIN + 50
    ].tolist()  # 600 movies: selector
    items = approx.recommend_for_movies(everything, 30, explain=2).items
    assert len(items) == 30 and not set(everything) & {s.movie.movie_id for s in items}
