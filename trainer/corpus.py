"""Turn interactions into what training and serving use: the catalogue (which movies get a
row, and which are only described), each user's liked movies in time order (the training
baskets) and each user's whole history (what the server aggregates and excludes).

Everything here is numpy over the compact arrays of ``trainer.interactions``: one sort of the
rows, CSR offsets from the sorted user codes, no DataFrame and no per-row Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from movierec.artifacts import Histories, Movie
from movierec.errors import DataError
from trainer.dataset import IMPLICIT_STARS, Dataset, from_movielens
from trainer.interactions import Interactions
from trainer.movielens import MovieLens
from trainer.pairs import Baskets

# Implicit data: what an interaction is worth in stars (trainer.dataset.IMPLICIT_STARS). 4 is
# a plain "liked" (above the default like_threshold, 3.5; the stars `events export` gives an
# unrated watch and the server gives an inline history's movies), and each doubling of
# repeats adds one.


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
    unindexed: list[Movie] = field(default_factory=list)  # catalogued, without a row
    facts: dict[str, Any] = field(default_factory=dict)  # what was read (for the manifest)

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


def build_corpus(data: Dataset | MovieLens, like_threshold: float, min_count: int) -> Corpus:
    """Keep movies with at least ``min_count`` liked ratings (a movie nobody liked has no
    co-watch signal and would only add noise to the index); 0 keeps every catalogued movie,
    for models whose side information gives unrated movies a vector. Catalogued movies left
    out are kept as ``unindexed`` (the server still describes them).

    The dataset's rows are reordered in place (a permutation of all its columns, so it means
    the same afterwards): 25M rows are not held twice.

    Implicit data (no rating column): each (user, item) pair counts once, as
    IMPLICIT_STARS + log2(times it occurs) stars, so a single interaction is a plain "liked"
    and every doubling of repeats adds a star (see ``implicit_stars``)."""
    if isinstance(data, MovieLens):
        data = from_movielens(data)
    x = data.interactions
    users, items, stars, order_key = _entries(x)
    distinct = len(users)
    _sort(users, items, stars, order_key)
    del order_key
    liked = stars >= like_threshold
    counts = np.bincount(items[liked], minlength=len(x.item_ids))
    del liked
    if min_count == 0:
        keep_ids = np.sort(np.array([m.movie_id for m in data.catalogue]))
    else:
        keep_ids = x.item_ids[counts >= min_count]  # sorted, as item_ids are
    if len(keep_ids) < 2:
        raise DataError(
            f"only {len(keep_ids)} movie(s) have {min_count}+ ratings >= {like_threshold}; "
            "lower --like-threshold or --min-count, or give more data"
        )
    by_id = {m.movie_id: m for m in data.catalogue}
    movies = [by_id[k] for k in keep_ids.tolist()]
    kept = set(keep_ids.tolist())
    unindexed = [m for m in data.catalogue if m.movie_id not in kept]

    row_of = np.full(len(x.item_ids), -1, np.int32)  # item code -> catalogue row
    at = np.searchsorted(keep_ids, x.item_ids)
    found = at < len(keep_ids)
    found[found] = keep_ids[at[found]] == x.item_ids[found]
    row_of[found] = at[found]
    rows = row_of[items]
    del items
    indexed = rows >= 0
    if not indexed.all():  # (no copies when every movie has a row)
        users, rows, stars = users[indexed], rows[indexed], stars[indexed]
    del indexed
    indptr, first = _csr(users)
    histories = Histories(user_ids=x.user_ids[users[first]], indptr=indptr, rows=rows,
                          ratings=stars)  # fmt: skip
    liked = stars >= like_threshold
    per_user = np.add.reduceat(liked, first, dtype=np.int64) if len(first) else first
    basket_indptr = np.append(0, np.cumsum(per_user[per_user > 0]))  # users who liked any
    baskets = Baskets(basket_indptr.astype(np.int64), rows[liked].astype(np.int64), stars[liked])
    facts = {
        "interactions": len(x),
        "users": len(x.user_ids),
        "items": len(x.item_ids),
        "implicit": x.ratings is None,
        "repeats_merged": len(x) - distinct,  # implicit: rows beyond a pair's first
        "items_without_metadata": data.unknown_items,
        "interactions_without_metadata": data.unknown_rows,
        "columns": x.columns,
    }
    return Corpus(
        movies=movies,
        baskets=baskets,
        histories=histories,
        rated_movies=len(x.item_ids),
        unindexed=unindexed,
        facts=facts,
    )


def implicit_stars(count: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    """Stars of a (user, item) pair seen ``count`` times in an implicit log: 4, 5, 6 ... for
    1, 2, 4 ... interactions. Logarithmic (as Hu, Koren & Volinsky's confidence
    1 + alpha log(1 + r / eps)), so a user who replays one item a thousand times does not
    outweigh the rest of their history: a cbow target weighs 1 + rating_weight * log2(count),
    an ALS confidence is alpha * (4 + log2(count))."""
    stars: npt.NDArray[np.float32] = np.log2(count, dtype=np.float32)
    stars += IMPLICIT_STARS
    return stars


def _entries(
    x: Interactions,
) -> tuple[
    npt.NDArray[np.int32], npt.NDArray[np.int32], npt.NDArray[np.float32],
    npt.NDArray[Any] | None,
]:  # fmt: skip
    """(users, items, stars, order key) per entry. Explicit data: one entry per row, the key
    its time (None: file order). Implicit: one entry per (user, item) pair, starred by how
    often it occurs, keyed by its first time (or first row); the dataset's rows are reordered
    in place (a permutation) to find the pairs."""
    if x.ratings is not None:
        return x.users, x.items, x.ratings, x.times
    # Sort by (user, item) in place, file order kept within a pair: a pair's rows are then
    # adjacent, its first row first.
    rows = np.arange(len(x), dtype=np.int64) if x.times is None else None
    columns = [c for c in (x.users, x.items, x.times, rows) if c is not None]
    _permute(columns, np.argsort(x.items, kind="stable"))
    _permute(columns, np.argsort(x.users, kind="stable"))
    new = np.ones(len(x), bool)
    new[1:] = (x.users[1:] != x.users[:-1]) | (x.items[1:] != x.items[:-1])
    key = x.times if x.times is not None else rows
    assert key is not None
    if new.all():  # no repeats: every row is an entry, as it is
        return x.users, x.items, np.full(len(x), IMPLICIT_STARS, np.float32), key
    starts = np.flatnonzero(new)
    del new
    count = np.diff(starts, append=len(x))
    key = np.minimum.reduceat(key, starts)  # the pair's first time (or row)
    return x.users[starts], x.items[starts], implicit_stars(count), key


def _sort(
    users: npt.NDArray[np.int32],
    items: npt.NDArray[np.int32],
    stars: npt.NDArray[np.float32],
    times: npt.NDArray[Any] | None,
) -> None:
    """Put the entries in order, in place: by user, then time (file order without times),
    then item id (codes follow the ids). Two stable sorts, each applied to the columns one
    at a time (25M rows are held once, plus one column in flight); the item order is then
    fixed where a user has several entries at one time, which a third full sort would cost
    ~40% more to do."""
    columns = [c for c in (users, items, stars, times) if c is not None]
    if times is not None:
        _permute(columns, np.argsort(times, kind="stable"))
    _permute(columns, np.argsort(users, kind="stable"))
    if times is None:
        return
    tie = (users[1:] == users[:-1]) & (times[1:] == times[:-1])  # same user, same time
    if not tie.any():
        return
    member = np.zeros(len(users), bool)
    member[1:] = tie
    member[:-1] |= tie
    rows = np.flatnonzero(member)
    starts = member.copy()
    starts[1:] &= ~tie
    group = np.cumsum(starts)[rows]
    by_item = rows[np.lexsort((items[rows], group))]  # stable: equal items keep their order
    for column in columns:
        column[rows] = column[by_item]


def _permute(columns: list[npt.NDArray[Any]], order: npt.NDArray[np.intp]) -> None:
    for column in columns:
        column[:] = column[order]


def _csr(users: npt.NDArray[np.int32]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(indptr, first entry of each user) of entries sorted by user."""
    new = np.ones(len(users), bool)
    new[1:] = users[1:] != users[:-1]
    first = np.flatnonzero(new)
    return np.append(first, len(users)).astype(np.int64), first
