"""Read The Movies Dataset (Kaggle, Rounak Banik): MovieLens ratings with TMDB metadata.

    ratings_small.csv   userId,movieId,rating,timestamp   (MovieLens ids; or ratings.csv)
    links_small.csv     movieId,imdbId,tmdbId              (or links.csv)
    movies_metadata.csv id (a TMDB id), title, release_date, genres ("[{'id': 16, 'name': ...}]")

Ratings and metadata share no id: they join only through links (movieId -> tmdbId -> id).
Rows whose ids are broken (a link without a tmdbId, a metadata id that is not a number, a
TMDB id listed twice, ratings of movies with no usable metadata) are counted, reported with
the first file line, and skipped; nothing is joined on a guess.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from movierec.artifacts import MAX_YEAR, MIN_YEAR, Movie
from movierec.errors import DataError
from trainer.movielens import MovieLens, _read, _read_ratings

log = logging.getLogger(__name__)
METADATA = "movies_metadata.csv"
_GENRE_NAME = re.compile(r"""['"]name['"]:\s*['"]([^'"]+)['"]""")


def is_movies_dataset(folder: Path) -> bool:
    return (Path(folder) / METADATA).exists()


def load_movies_dataset(folder: Path) -> MovieLens:
    folder = Path(folder)
    ratings_path = _first(folder, "ratings_small.csv", "ratings.csv")
    links_path = _first(folder, "links_small.csv", "links.csv")
    metadata = _metadata(folder / METADATA)
    links = _links(links_path)

    joined = links.merge(metadata, left_on="tmdb_id", right_on="id", how="inner")
    unmatched = links[~links["tmdb_id"].isin(metadata["id"])]
    _report(links_path, unmatched.index, "movies whose tmdbId is not in " + METADATA)
    joined = joined.sort_values("movie_id")
    columns = (joined[c].tolist() for c in ("movie_id", "title", "genres", "year"))
    movies = [Movie(int(i), str(t), g, y) for i, t, g, y in zip(*columns, strict=True)]

    ratings = _read_ratings(ratings_path, "csv")
    known = ratings["movie_id"].isin(joined["movie_id"]).to_numpy()
    _report(ratings_path, np.flatnonzero(~known), "ratings of movies without usable metadata")
    ratings = ratings[known].reset_index(drop=True)
    if ratings.empty:
        raise DataError(f"{ratings_path}: no rating joins to {METADATA} through {links_path.name}")
    return MovieLens(ratings=ratings, movies=movies, layout="movies-dataset")


def _first(folder: Path, *names: str) -> Path:
    for name in names:
        if (folder / name).exists():
            return folder / name
    raise DataError(f"{folder}: has {METADATA} but none of {', '.join(names)}")


def _links(path: Path) -> pd.DataFrame:
    table = _read(path, dtype=str, keep_default_na=False)
    missing = {"movieId", "tmdbId"} - set(table.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    movie_id = pd.to_numeric(table["movieId"], errors="coerce")
    tmdb_id = pd.to_numeric(table["tmdbId"], errors="coerce")
    broken = movie_id.isna() | tmdb_id.isna()
    _report(path, np.flatnonzero(broken), "links without a numeric movieId and tmdbId")
    out = pd.DataFrame({"movie_id": movie_id, "tmdb_id": tmdb_id})[~broken]
    return out.astype(np.int64)


def _metadata(path: Path) -> pd.DataFrame:
    table = _read(path, dtype=str, keep_default_na=False)
    missing = {"id", "title", "genres", "release_date"} - set(table.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    tmdb_id = pd.to_numeric(table["id"], errors="coerce")
    broken = tmdb_id.isna()
    _report(path, np.flatnonzero(broken), "rows whose id is not a TMDB id (shifted columns)")
    duplicate = ~broken & tmdb_id.duplicated(keep="first")
    _report(path, np.flatnonzero(duplicate), "rows repeating a TMDB id (the first is kept)")
    keep = ~(broken | duplicate)
    year = pd.to_numeric(table["release_date"].str[:4], errors="coerce")
    return pd.DataFrame(
        {
            "id": tmdb_id[keep].astype(np.int64),
            "title": table["title"][keep].str.strip(),
            "genres": [tuple(_GENRE_NAME.findall(g)) for g in table["genres"][keep]],
            "year": [int(y) if MIN_YEAR <= y <= MAX_YEAR else None for y in year[keep]],
        }
    )


def _report(path: Path, rows: np.ndarray | pd.Index, what: str) -> None:
    if len(rows):
        log.warning("%s: skipped %d %s (first at line %d)", path, len(rows), what, rows[0] + 2)
