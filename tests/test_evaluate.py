"""EVALUATION.md's metrics on cases computed by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from trainer.evaluate import ndcg_at, recall_at, recall_by_decile, relevant_sets, score
from trainer.split import holdout_split


def test_recall_divides_by_min_of_k_and_relevant() -> None:
    assert recall_at([1, 2, 3], {2, 9}, 10) == 0.5  # 1 hit of 2 relevant
    assert recall_at(list(range(10)), set(range(5, 30)), 10) == 0.5  # 5 hits, min(10, 25)
    assert recall_at([7, 8], {1}, 10) == 0.0


def test_ndcg_binary_gains() -> None:
    assert ndcg_at([1, 2, 3], {1}, 10) == 1.0
    # one hit at rank 2 of two relevant: (1/log2 3) / (1 + 1/log2 3)
    want = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert ndcg_at([5, 1, 6], {1, 2}, 10) == pytest.approx(want)
    assert ndcg_at([5, 6], {1}, 10) == 0.0


def test_score_hitrate_and_coverage() -> None:
    ranking = {1: [10, 11], 2: [12, 10]}
    s = score(lambda u: ranking[u], {1: {11}, 2: {99}}, catalogue_size=8)
    assert s.recall_10 == 0.5 and s.hitrate_10 == 0.5
    assert s.coverage_10 == 3 / 8  # movies 10, 11, 12
    assert s.users == 2


def test_relevant_means_rated_at_least_4() -> None:
    test = pd.DataFrame({"user_id": [1, 1, 2], "movie_id": [5, 6, 7], "rating": [4.0, 3.5, 2]})
    assert relevant_sets(test) == {1: {5}}


def test_holdout_split_follows_the_protocol() -> None:
    ratings = pd.DataFrame(
        {
            "user_id": [1] * 10 + [2] * 4,
            "movie_id": list(range(14)),
            "rating": [4.0] * 14,
            "timestamp": [0] * 14,
        }
    )
    train, held = holdout_split(ratings, seed=0)
    assert (held["user_id"] == 1).sum() == 2  # 20% of 10
    assert (held["user_id"] == 2).sum() == 0  # fewer than 5 ratings: kept whole
    assert len(train) + len(held) == 14
    again, _ = holdout_split(ratings, seed=0)
    assert again.equals(train)


def test_recall_by_decile_by_hand() -> None:
    counts = {m: m for m in range(1, 21)}  # movie m has m training ratings: deciles of two
    relevant = {1: {1, 20, 99}, 2: {19, 2}, 3: {3}}  # 99 has no catalogue row
    ranked = {1: [20, 5, 1], 2: [2, 19]}  # user 3 got no ranking (no usable history)
    d = recall_by_decile(ranked, relevant, counts, k=2)  # user 1's movie 1 is third: a miss
    assert d.fewest == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]
    assert d.most == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]
    assert d.relevant == [2, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert d.hits == [1, 0, 0, 0, 0, 0, 0, 0, 0, 2]
    assert d.unindexed == 1
    assert d.recall[0] == 0.5 and d.recall[1] == 0.0 and d.recall[9] == 1.0
    assert all(math.isnan(r) for r in d.recall[2:9])


def test_deciles_split_ties_by_movie_id_and_survive_tiny_catalogues() -> None:
    tied = recall_by_decile({}, {1: {11}, 2: {30}}, {m: 5 for m in range(30, 10, -1)})
    assert tied.fewest == tied.most == [5] * 10
    assert tied.relevant == [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]  # lowest ids first
    tiny = recall_by_decile({1: [7]}, {1: {7, 8}}, {7: 3, 8: 1})
    assert tiny.relevant == [1, 0, 0, 0, 0, 1, 0, 0, 0, 0]  # 8 (1 rating) first, then 7
    assert tiny.hits == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
