"""Turn a ratings table into what training and serving use: the catalogue (which movies get a
row), each user's liked movies in time order (the training baskets) and each user's whole
history (what the server aggregates and excludes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from movierec.artifacts import Histories, Movie
from movierec.errors import DataError
from trainer.movielens import MovieLens
from trainer.pairs import Baskets


@dataclass(frozen=True)
class Features:
    """Side information per catalogue row in CSR form: row i has features
    ``indices[indptr[i]:indptr[i + 1]]`` (its genres, then its release decade)."""

    indptr: npt.NDArray[np.int64]
    indices: npt.NDArray[np.int64]
    names: list[str]  # feature index -> "genre:Drama", "decade:1990"


@dataclass(frozen=True)
class Corpus:
    movies: list[Movie]  # the catalogue; row i of every matrix is movies[i]
    baskets: Baskets  # liked movies per user (rating >= like_threshold), time-ordered
    histories: Histories  # every rating of a catalogue movie, per user, time-ordered
    rated_movies: int  # distinct movies in the source ratings (Coverage@10's denominator)

    @property
    def features(self) -> Features:
        names: dict[str, int] = {}
        rows = [
            [names.setdefault(f"genre:{g}", len(names)) for g in m.genres]
            + ([names.setdefault(f"decade:{m.year // 10 * 10}", len(names))] if m.year else [])
            for m in self.movies
        ]
        indptr = np.cumsum([0, *map(len, rows)], dtype=np.int64)
        indices = np.fromiter((i for r in rows for i in r), np.int64, int(indptr[-1]))
        return Features(indptr, indices, list(names))


def build_corpus(data: MovieLens, like_threshold: float, min_count: int) -> Corpus:
    """Keep movies with at least ``min_count`` liked ratings (a movie nobody liked has no
    co-watch signal and would only add noise to the index); 0 keeps every catalogued movie,
    for models whose side information gives unrated movies a vector."""
    ratings = data.ratings.sort_values(["user_id", "timestamp", "movie_id"], kind="stable")
    liked = ratings["rating"].to_numpy() >= like_threshold
    counts = ratings.loc[liked, "movie_id"].value_counts()
    if min_count == 0:
        keep_ids = np.sort(np.array([m.movie_id for m in data.movies], dtype=np.int64))
    else:
        keep_ids = np.sort(counts.index[counts >= min_count].to_numpy())
    if len(keep_ids) < 2:
        raise DataError(
            f"only {len(keep_ids)} movie(s) have {min_count}+ ratings >= {like_threshold}; "
            "lower --like-threshold or --min-count, or give more data"
        )
    by_id = {m.movie_id: m for m in data.movies}
    movies = [by_id[int(i)] for i in keep_ids]

    ratings = ratings[ratings["movie_id"].isin(keep_ids)]
    rows = np.searchsorted(keep_ids, ratings["movie_id"].to_numpy())
    users, first = np.unique(ratings["user_id"].to_numpy(), return_index=True)
    indptr = np.append(first, len(ratings)).astype(np.int64)
    histories = Histories(
        user_ids=users.astype(np.int64),
        indptr=indptr,
        rows=rows.astype(np.int32),
        ratings=ratings["rating"].to_numpy(np.float32),
    )
    liked_rows = ratings["rating"].to_numpy() >= like_threshold
    return Corpus(
        movies=movies,
        baskets=_baskets(rows[liked_rows], ratings[liked_rows]),
        histories=histories,
        rated_movies=int(data.ratings["movie_id"].nunique()),
    )


def _baskets(rows: np.ndarray, ratings: pd.DataFrame) -> Baskets:
    _, first = np.unique(ratings["user_id"].to_numpy(), return_index=True)
    return Baskets(
        np.append(first, len(rows)).astype(np.int64),
        rows.astype(np.int64),
        ratings["rating"].to_numpy(np.float32),
    )
