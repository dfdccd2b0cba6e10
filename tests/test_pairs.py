"""Pair sampling: partners come from the same user, never the movie itself, in the asked
number, reproducibly, and within the window when one is set."""

from __future__ import annotations

import numpy as np

from trainer.pairs import Baskets, iter_pair_chunks, keep_probabilities, sample_pairs

BASKETS = Baskets.from_lists([[0, 1, 2, 3], [4, 5], [6], [7, 8, 9, 10, 11, 12, 13, 14]])
OWNER = {m: u for u, ms in enumerate([[0, 1, 2, 3], [4, 5], [6], list(range(7, 15))]) for m in ms}


def test_partners_share_a_user_and_are_never_the_movie_itself() -> None:
    m1, m2 = sample_pairs(BASKETS, partners=5, rng=np.random.default_rng(0))
    assert len(m1) == 5 * (4 + 2 + 8)  # the one-movie user has no partner
    assert all(OWNER[a] == OWNER[b] for a, b in zip(m1, m2, strict=True))
    assert not np.any(m1 == m2)
    assert 6 not in m1


def test_every_other_movie_is_drawn() -> None:
    m1, m2 = sample_pairs(BASKETS, partners=2000, rng=np.random.default_rng(0))
    partners_of_7 = np.bincount(m2[m1 == 7], minlength=15)[8:15]
    assert partners_of_7.min() > 0.8 * partners_of_7.mean()  # roughly uniform over 8..14


def test_same_seed_same_pairs() -> None:
    a = sample_pairs(BASKETS, 3, np.random.default_rng(7))
    b = sample_pairs(BASKETS, 3, np.random.default_rng(7))
    c = sample_pairs(BASKETS, 3, np.random.default_rng(8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])


def test_window_limits_partners_to_neighbours_in_time() -> None:
    m1, m2 = sample_pairs(BASKETS, 200, np.random.default_rng(0), window=1)
    long_user = m1 >= 7
    assert np.all(np.abs(m1[long_user] - m2[long_user]) == 1)


def test_subsampling_drops_frequent_movies() -> None:
    counts = np.array([1000, 10, 10, 10])
    keep = keep_probabilities(counts, 1e-2)
    assert keep[0] < 0.2 and np.all(keep[1:] == 1.0)
    assert np.all(keep_probabilities(counts, 0) == 1.0)


def test_chunks_cover_the_epoch() -> None:
    chunks = list(iter_pair_chunks(BASKETS, 3, np.random.default_rng(0), chunk_entries=4))
    assert len(chunks) == 4
    assert sum(len(a) for a, _ in chunks) == 3 * 14
