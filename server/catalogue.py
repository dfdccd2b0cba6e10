"""The movies a model knows, by row and by id: id lookups, metadata, business filters as row
masks, and popularity. Plain numpy; built once per loaded model.

Ids are the data's own, integers or strings (one kind per model). Either way they are looked
up by binary search in a sorted array, vectorised, so a 10,000-id history costs one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from movierec.artifacts import Artifacts, Movie
from movierec.errors import InvalidArgument
from movierec.ids import Key, as_key
from server import rows as rowset
from server.rows import Rows

Mask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class Filter:
    """Business rules a result must pass. Empty fields do not constrain; a year bound of 0 is
    unbounded, and a movie of unknown year passes no bound."""

    genres_any: tuple[str, ...] = ()  # at least one of these genres
    genres_none: tuple[str, ...] = ()  # none of these
    year_min: int = 0
    year_max: int = 0
    exclude: tuple[Key, ...] = ()  # never these movies (unknown ids are ignored)
    allow: tuple[Key, ...] = ()  # only these movies, if any are given

    @property
    def is_empty(self) -> bool:
        return self == NO_FILTER


NO_FILTER = Filter()


class Catalogue:
    def __init__(self, artifacts: Artifacts) -> None:
        self.movies = artifacts.movies  # the indexed rows
        self.kind = artifacts.movie_kind
        ids = artifacts.movie_ids
        self._order = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[self._order]
        self._unindexed = {m.movie_id: m for m in artifacts.unindexed}
        n = len(self.movies)
        genres = sorted({g for m in self.movies for g in m.genres})
        self._genre_masks: dict[str, Mask] = {g: np.zeros(n, bool) for g in genres}
        for row, m in enumerate(self.movies):
            for g in m.genres:
                self._genre_masks[g][row] = True
        self._years = np.array([m.year or 0 for m in self.movies], dtype=np.int32)
        h = artifacts.histories
        # Popularity: how many users rated a movie in training (the cold-start ranking).
        self.popularity = np.bincount(h.rows, minlength=n).astype(np.int64)
        self.by_popularity: Rows = np.argsort(-self.popularity, kind="stable")
        self._top_count = max(int(self.popularity.max(initial=0)), 1)

    def __len__(self) -> int:
        return len(self.movies)

    @property
    def genres(self) -> list[str]:
        return list(self._genre_masks)

    def lookup(self, keys: Sequence[Key]) -> tuple[Rows, Mask]:
        """The row of each key (-1 where unknown) and which keys name an indexed movie."""
        if not keys:
            return np.zeros(0, np.int64), np.zeros(0, bool)
        wanted: npt.NDArray[Any] = np.asarray(keys)
        if self.kind == "int" and wanted.dtype.kind == "i":  # all ints: the common case, fast
            valid = np.ones(len(keys), bool)
        else:
            converted = [as_key(k, self.kind) for k in keys]
            valid = np.array([k is not None for k in converted], bool)
            filler = 0 if self.kind == "int" else ""
            # the keys' own width: cast to the catalogue's, a longer key would be cut short
            # into another movie's id
            wanted = np.array([filler if k is None else k for k in converted],
                              dtype=np.int64 if self.kind == "int" else None)  # fmt: skip
        pos = np.minimum(np.searchsorted(self._sorted_ids, wanted), len(self._sorted_ids) - 1)
        known = valid & (self._sorted_ids[pos] == wanted)
        return np.where(known, self._order[pos], -1), known

    def rows_of(self, keys: Sequence[Key]) -> tuple[Rows, list[Key]]:
        """Rows of the indexed movies among ``keys`` (sorted, each once) and the keys that
        name no indexed movie (each once, in the order given)."""
        if not keys:
            return np.zeros(0, np.int64), []
        rows, known = self.lookup(keys)
        unknown = dict.fromkeys(k for k, ok in zip(keys, known.tolist(), strict=True) if not ok)
        return rowset.unique(rows[known]), list(unknown)

    def row_of(self, key: Key) -> int | None:
        rows, _ = self.rows_of([key])
        return int(rows[0]) if len(rows) else None

    def movie(self, key: Key) -> tuple[Movie, bool] | None:
        """The movie and whether it has a vector, for any catalogued movie; None if unknown."""
        row = self.row_of(key)
        if row is not None:
            return self.movies[row], True
        canonical = as_key(key, self.kind)
        m = self._unindexed.get(canonical) if canonical is not None else None
        return (m, False) if m is not None else None

    def knows(self, keys: Sequence[Key]) -> Mask:
        """Which keys name a catalogued movie, with or without a vector."""
        _, known = self.lookup(keys)
        if self._unindexed:
            for i in np.flatnonzero(~known).tolist():
                canonical = as_key(keys[i], self.kind)
                known[i] = canonical is not None and canonical in self._unindexed
        return known

    def allowed(self, f: Filter) -> Mask | None:
        """Rows passing the filter's rules, or None when it has none (everything passes)."""
        if f.is_empty:
            return None
        for g in (*f.genres_any, *f.genres_none):
            if g not in self._genre_masks:
                known = self.genres
                listed = ", ".join(known[:20]) + (
                    f" and {len(known) - 20} more" if len(known) > 20 else ""
                )
                raise InvalidArgument(f"unknown genre {g!r:.100}; this catalogue has: {listed}")
        n = len(self.movies)
        mask = np.ones(n, bool)
        if f.genres_any:
            mask[:] = False
            for g in dict.fromkeys(f.genres_any):  # each once: one pass of n per genre
                mask |= self._genre_masks[g]
        for g in dict.fromkeys(f.genres_none):
            mask &= ~self._genre_masks[g]
        if f.year_min:
            mask &= self._years >= f.year_min
        if f.year_max:
            mask &= (self._years <= f.year_max) & (self._years > 0)
        if f.allow:
            allowed = np.zeros(n, bool)
            allowed[self.rows_of(f.allow)[0]] = True
            mask &= allowed
        if f.exclude:
            mask[self.rows_of(f.exclude)[0]] = False
        return mask

    def popular(self, k: int, allowed: Mask) -> tuple[Rows, npt.NDArray[np.float32]]:
        """The k most rated movies among ``allowed``, with a popularity score in (0, 1]: the
        share of the most rated movie's count."""
        rows = self.by_popularity[allowed[self.by_popularity]][:k]
        scores = (self.popularity[rows] / self._top_count).astype(np.float32)
        return rows, scores
