"""What ``movierec train`` learns from, in one shape whatever it was read from: the
interactions (``trainer.interactions``) and the catalogue, every item with its metadata.

    movierec train --data ml-25m/ --out ART                              # a MovieLens folder
    movierec train --interactions log.parquet [--items items.csv] --out ART   # your own files

An item the interactions name but the items file lacks (or every item, without an items
file) is kept, titled by its id, and counted. Item ids are integers only if every id in both
files is one; otherwise both files' ids are strings.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from movierec.artifacts import Movie
from movierec.errors import DataError
from movierec.ids import Key
from trainer import movielens
from trainer.interactions import Columns, Interactions, as_int, read_interactions
from trainer.items import read_items
from trainer.movies_dataset import is_movies_dataset
from trainer.tables import open_table

log = logging.getLogger(__name__)
_MOVIELENS_SUFFIXES = (".dat", ".data")  # ml-1m/ml-10m ratings.dat, ml-100k u.data
IMPLICIT = "implicit"  # to_movielens's layout for a log without ratings
IMPLICIT_STARS = 4.0  # what an implicit row is worth (trainer.corpus explains)


@dataclass(frozen=True)
class Dataset:
    interactions: Interactions
    catalogue: list[Movie]  # every item: the items file's in its order, then the others
    source: str  # what was read, for the manifest
    unknown_items: int  # items the interactions name that had no metadata (titled by id)
    unknown_rows: int  # interactions naming them


def load_dataset(
    *,
    data: Path | None = None,
    interactions: Path | None = None,
    items: Path | None = None,
    columns: Columns | None = None,
) -> Dataset:
    """A MovieLens folder (``data``, layout detected) or an interactions file with an
    optional items file."""
    if (data is None) == (interactions is None):
        raise DataError("give a MovieLens folder (--data) or an interactions file (--interactions)")
    if data is not None:
        return _movielens_folder(Path(data))
    assert interactions is not None
    interactions = Path(interactions)
    if interactions.suffix in _MOVIELENS_SUFFIXES or interactions.name == "u.data":
        if items is None:
            raise DataError(f"{interactions}: a MovieLens ratings file needs its movies (--items)")
        return from_movielens(movielens.load(ratings=interactions, movies=Path(items)))
    columns = columns or Columns()
    events = read_interactions(interactions, columns)
    catalogue = read_items(Path(items), columns, events.columns["item"]) if items else []
    source = f"{interactions}" + (f" (items: {items})" if items else "")
    return _join(events, catalogue, source)


def from_movielens(data: movielens.MovieLens, source: str = "") -> Dataset:
    """A dataset from MovieLens ratings already in memory (the .dat and 100k layouts, The
    Movies Dataset, a split's training part)."""
    r = data.ratings
    user_ids, users = np.unique(r["user_id"].to_numpy(np.int64), return_inverse=True)
    item_ids, items = np.unique(r["movie_id"].to_numpy(np.int64), return_inverse=True)
    implicit = data.layout == IMPLICIT  # from to_movielens
    x = Interactions(
        users=users.astype(np.int32),
        items=items.astype(np.int32),
        ratings=None if implicit else r["rating"].to_numpy(np.float32, copy=True),  # writable
        times=r["timestamp"].to_numpy(np.float64, copy=True),
        user_ids=user_ids,
        item_ids=item_ids,
        columns={"user": "user_id", "item": "movie_id", "rating": "rating", "time": "timestamp"},
    )
    return _join(x, data.movies, source or data.layout)


def to_movielens(data: Dataset) -> movielens.MovieLens:
    """The dataset as a MovieLens ratings table, for code that works on one (early
    stopping's holdout, --tune): ids are the codes (any id kind becomes an integer), an
    implicit log's rows are rated IMPLICIT_STARS with layout "implicit" (``from_movielens``
    then merges repeats again), without times the file's order stands in."""
    x = data.interactions
    code = {k: i for i, k in enumerate(x.item_ids.tolist())}
    others = iter(range(len(code), len(code) + len(data.catalogue)))
    movies = [replace(m, movie_id=code.get(m.movie_id, -1)) for m in data.catalogue]
    movies = [m if m.movie_id != -1 else replace(m, movie_id=next(others)) for m in movies]
    stars = x.ratings if x.ratings is not None else np.full(len(x), IMPLICIT_STARS, np.float32)
    times = x.times if x.times is not None else np.arange(len(x), dtype=np.float64)
    ratings = pd.DataFrame(
        {
            "user_id": x.users.astype(np.int64),
            "movie_id": x.items.astype(np.int64),
            "rating": stars,
            "timestamp": times,
        }
    )
    return movielens.MovieLens(ratings, movies, IMPLICIT if x.ratings is None else "interactions")


def _movielens_folder(folder: Path) -> Dataset:
    """The CSV layouts (ml-latest-small ... ml-32m) are streamed (bounded memory); the
    others are small or joined through pandas (``trainer.movielens``)."""
    if folder.is_dir() and is_movies_dataset(folder):
        return from_movielens(movielens.load(folder), str(folder))
    layout, ratings, movies = movielens.files(folder)
    if layout != "csv":
        return from_movielens(movielens.load(folder), str(folder))
    catalogue = movielens.read_movies(movies, layout)
    header = open_table(ratings).columns
    missing = [c for c in ("userId", "movieId", "rating") if c not in header]
    if missing:
        raise DataError(f"{ratings}: missing column(s) {', '.join(missing)}; header has {header}")
    time = "timestamp" if "timestamp" in header else ""
    columns = Columns(user="userId", item="movieId", rating="rating", time=time)
    x = read_interactions(ratings, columns, int_ids=True)
    if x.times is None:  # as the MovieLens reader does: a user's movies then go in id order
        x = replace(x, times=np.zeros(len(x), np.float64))
    return _join(x, catalogue, str(folder))


def _join(x: Interactions, movies: list[Movie], source: str) -> Dataset:
    """Give both files one item id kind, and every interaction's item a catalogue entry."""
    if x.item_ids.dtype.kind == "i" and any(as_int(m.movie_id) is None for m in movies):
        x = _with_text_items(x)
    text = x.item_ids.dtype.kind == "U"
    movies = [replace(m, movie_id=_key(m.movie_id, text)) for m in movies]
    known = np.sort(np.array([m.movie_id for m in movies])) if movies else x.item_ids[:0]
    at = np.searchsorted(known, x.item_ids)
    found = at < len(known)
    found[found] = known[at[found]] == x.item_ids[found]
    unknown = np.flatnonzero(~found)
    unknown_rows = int(np.count_nonzero(~found[x.items])) if len(unknown) else 0
    if len(unknown) and movies:
        first = x.item_ids[unknown[0]].item()
        log.warning(
            "%s: %d interactions name %d items that are not in the items file (e.g. %r); kept, "
            "titled by their id", source, unknown_rows, len(unknown), first,
        )  # fmt: skip
    extra = [Movie(k, str(k), (), None) for k in x.item_ids[unknown].tolist()]
    return Dataset(x, [*movies, *extra], source, len(unknown), unknown_rows)


def _key(key: Key, text: bool) -> Key:
    if text:
        return str(key)
    value = as_int(key)
    assert value is not None  # _join made the ids text unless every one is an integer
    return value


def _with_text_items(x: Interactions) -> Interactions:
    """The interactions' integer item ids as strings (the items file has non-integer ids),
    renumbered in string order."""
    text = x.item_ids.astype(str)
    order = np.argsort(text, kind="stable")
    rank = np.empty(len(order), np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return replace(x, items=rank[x.items], item_ids=text[order])
