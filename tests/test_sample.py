"""The built-in sample is deterministic and has the structure tests rely on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.movielens import load
from trainer.sample import make_sample


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = make_sample(seed=3).write(tmp_path / "a")
    b = make_sample(seed=3).write(tmp_path / "b")
    for name in ("movies.csv", "ratings.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (make_sample(seed=4).ratings != make_sample(seed=3).ratings[:1]).any()


def test_sample_loads_as_movielens(sample_dir: Path, sample) -> None:
    data = load(sample_dir)
    assert data.layout == "csv"
    assert len(data.movies) == len(sample.movies)
    assert len(data.ratings) == len(sample.ratings)
    assert all(m.year is not None for m in data.movies)


def test_users_mostly_watch_their_favourite_genres(sample) -> None:
    genres = {mid: set(g) for mid, _, g in sample.movies}
    share = np.mean(
        [
            bool(genres[int(m)] & set(sample.favourites[int(u)]))
            for u, m in zip(sample.ratings["user_id"], sample.ratings["movie_id"], strict=True)
        ]
    )
    assert share > 0.65
