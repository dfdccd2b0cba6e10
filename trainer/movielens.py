"""Read a MovieLens release in any of its published layouts.

    csv   ml-latest-small, ml-latest, ml-20m, ml-25m, ml-32m: ratings.csv + movies.csv, header
    dat   ml-1m, ml-10m: ratings.dat + movies.dat, '::'-separated, latin-1
    100k  ml-100k: u.data (tab-separated) + u.item (pipe-separated, 19 genre flags), latin-1

The Movies Dataset (ratings_small.csv + links_small.csv + movies_metadata.csv) is read by
``trainer.movies_dataset``; ``load`` detects it too.

Bad input raises DataError with one sentence naming the file and the line or column, never a
traceback from inside pandas.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from movierec.artifacts import Movie
from movierec.errors import DataError

log = logging.getLogger(__name__)
RATING_COLUMNS = ["user_id", "movie_id", "rating", "timestamp"]
# ml-100k's u.genre, in flag order (used when u.genre itself is absent).
GENRES_100K = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip
_YEAR = re.compile(r"\((\d{4})(?:[-–]\d{0,4})?\)\s*$")
_NO_GENRES = {"(no genres listed)", ""}


@dataclass(frozen=True)
class MovieLens:
    """Ratings (columns user_id, movie_id, rating, timestamp) and the movie catalogue."""

    ratings: pd.DataFrame
    movies: list[Movie]
    layout: str


def detect_layout(folder: Path) -> str:
    """Name the layout of a MovieLens folder: 'csv', 'dat' or '100k'."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such directory")
    for layout, (ratings, movies) in _FILES.items():
        if (folder / ratings).exists() and (folder / movies).exists():
            return layout
    present = ", ".join(sorted(p.name for p in folder.iterdir())[:10]) or "nothing"
    raise DataError(
        f"{folder}: not a MovieLens folder: expected ratings.csv + movies.csv, "
        f"ratings.dat + movies.dat, u.data + u.item, or The Movies Dataset's "
        f"movies_metadata.csv; found {present}"
    )


def load(
    folder: Path | None = None, *, ratings: Path | None = None, movies: Path | None = None
) -> MovieLens:
    """Load a MovieLens folder, or explicit ratings/movies files (layout from their names)."""
    from trainer.movies_dataset import is_movies_dataset, load_movies_dataset

    if folder is not None and Path(folder).is_dir() and is_movies_dataset(folder):
        return load_movies_dataset(folder)
    if folder is not None:
        layout = detect_layout(folder)
        ratings_path, movies_path = (Path(folder) / f for f in _FILES[layout])
    elif ratings is not None and movies is not None:
        ratings_path, movies_path = Path(ratings), Path(movies)
        layout = _layout_of_file(ratings_path)
        for p in (ratings_path, movies_path):
            if not p.is_file():
                raise DataError(f"{p}: no such file")
    else:
        raise DataError("give a MovieLens folder, or both a ratings and a movies file")
    catalogue = _MOVIE_READERS[layout](movies_path)
    table = _read_ratings(ratings_path, layout)
    known = np.isin(table["movie_id"].to_numpy(), [m.movie_id for m in catalogue])
    if not known.all():  # kept: the movie gets a catalogue entry titled by its id
        first = int(np.flatnonzero(~known)[0])
        log.warning(
            "%s: %d ratings name movies that are not in %s (first: movie %d at line %d); "
            "kept, titled by their id", ratings_path, int((~known).sum()), movies_path.name,
            table["movie_id"].iat[first], _line(layout, first),
        )  # fmt: skip
    if table.empty:
        raise DataError(f"{ratings_path}: no ratings")
    return MovieLens(ratings=table, movies=catalogue, layout=layout)


def files(folder: Path) -> tuple[str, Path, Path]:
    """(layout, ratings file, movies file) of a MovieLens folder."""
    layout = detect_layout(folder)
    ratings, movies = _FILES[layout]
    return layout, Path(folder) / ratings, Path(folder) / movies


def read_movies(path: Path, layout: str) -> list[Movie]:
    """A MovieLens movies file of the given layout."""
    return _MOVIE_READERS[layout](Path(path))


def read_ratings(path: Path) -> pd.DataFrame:
    """A ratings file alone (e.g. an evaluation split's test file), layout from its name."""
    path = Path(path)
    table = _read_ratings(path, _layout_of_file(path))
    if table.empty:
        raise DataError(f"{path}: no ratings")
    return table


def split_test_file(split: Path) -> Path:
    """The held-out ratings of a split folder (``train/`` beside ``test.*``): a split keeps its
    source's layout, so test.csv, test.dat or test.data, whichever is there."""
    found = [p for p in (Path(split) / f"test{Path(r).suffix}" for r, _ in _FILES.values())
             if p.is_file()]  # fmt: skip
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise DataError(f"{split}: expected one of test.csv, test.dat, test.data; found {names}")
    return found[0]


def parse_title(title: str) -> tuple[str, int | None]:
    """Split 'Toy Story (1995)' into ('Toy Story (1995)', 1995); the title is kept whole."""
    m = _YEAR.search(title)
    return title.strip(), (int(m.group(1)) if m else None)


def _layout_of_file(path: Path) -> str:
    for layout, (ratings, _) in _FILES.items():
        if path.suffix == Path(ratings).suffix:
            return layout
    raise DataError(f"{path}: unknown ratings file type (expected .csv, .dat or u.data)")


def _line(layout: str, row: int) -> int:
    """1-based file line of a 0-based data row."""
    return row + (2 if layout == "csv" else 1)


def _read(path: Path, **kwargs: object) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)  # type: ignore[call-overload, no-any-return]
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        msg = str(e).strip().splitlines()[-1]
        raise DataError(f"{path}: cannot be parsed: {msg}") from None


_NUMERIC = {"user_id": np.int64, "movie_id": np.int64, "rating": np.float32, "timestamp": np.int64}


def _read_ratings(path: Path, layout: str) -> pd.DataFrame:
    """Parse numbers directly (fast); on failure re-read as text to name the first bad line."""
    read = _RATING_READERS[layout]
    try:
        return read(path, True)
    except DataError:
        _to_numbers(read(path, False), path, layout)  # raises naming the line, if it can
        raise


def _read_ratings_csv(path: Path, numeric: bool) -> pd.DataFrame:
    header = _read(path, nrows=0)
    wanted = {"userId": "user_id", "movieId": "movie_id", "rating": "rating"}
    missing = [c for c in wanted if c not in header.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; header has {list(header.columns)}"
        )
    if "timestamp" in header.columns:
        wanted["timestamp"] = "timestamp"
    dtype = {src: _NUMERIC[dst] if numeric else str for src, dst in wanted.items()}
    table = _read(path, dtype=dtype, keep_default_na=numeric).rename(columns=wanted)
    if "timestamp" not in table.columns:
        table["timestamp"] = np.int64(0)
    return table[RATING_COLUMNS]


def _read_ratings_dat(path: Path, numeric: bool) -> pd.DataFrame:
    # '::' read as ':' leaves empty columns between the fields; the C parser is 10x faster
    # than the python engine that a multi-character separator would need.
    dtype = dict(zip((0, 2, 4, 6), _NUMERIC.values() if numeric else [str] * 4, strict=True))
    table = _read(
        path,
        sep=":",
        header=None,
        usecols=[0, 2, 4, 6],
        dtype=dtype,
        keep_default_na=numeric,
        encoding="latin-1",
    )
    table.columns = RATING_COLUMNS
    return table


def _read_ratings_100k(path: Path, numeric: bool) -> pd.DataFrame:
    dtype = dict(enumerate(_NUMERIC.values() if numeric else [str] * 4))
    table = _read(path, sep="\t", header=None, dtype=dtype, keep_default_na=numeric)
    if table.shape[1] != 4:
        raise DataError(f"{path}: expected 4 tab-separated fields per line, found {table.shape[1]}")
    table.columns = RATING_COLUMNS
    return table


def _to_numbers(table: pd.DataFrame, path: Path, layout: str) -> None:
    """Raise DataError naming the first line whose field is not the number it should be."""
    for column, dtype in _NUMERIC.items():
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna().to_numpy()
        if dtype is np.int64:
            bad = bad | (values % 1 != 0).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path}:{_line(layout, row)}: column {column!r} has "
                f"{table[column].iat[row]!r}, expected a number"
            )


def _read_movies_csv(path: Path) -> list[Movie]:
    table = _read(path, dtype=str, keep_default_na=False)
    for column in ("movieId", "title", "genres"):
        if column not in table.columns:
            raise DataError(f"{path}: missing column {column!r}; header has {list(table.columns)}")
    return _movies(path, "csv", table["movieId"], table["title"], table["genres"].str.split("|"))


def _read_movies_dat(path: Path) -> list[Movie]:
    rows = []
    try:
        with open(path, encoding="latin-1") as f:
            for lineno, line in enumerate(f, 1):
                fields = line.rstrip("\r\n").split("::")
                if len(fields) != 3:
                    raise DataError(
                        f"{path}:{lineno}: expected 3 '::'-separated fields, found {len(fields)}"
                    )
                rows.append(fields)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    ids, titles, genres = zip(*rows, strict=True) if rows else ((), (), ())
    return _movies(
        path, "dat", pd.Series(ids), pd.Series(titles), pd.Series([g.split("|") for g in genres])
    )


def _read_movies_100k(path: Path) -> list[Movie]:
    genre_file = path.with_name("u.genre")
    names = GENRES_100K
    if genre_file.exists():
        names = [
            line.split("|")[0]
            for line in genre_file.read_text("latin-1").splitlines()
            if line.strip()
        ]
    table = _read(path, sep="|", header=None, dtype=str, keep_default_na=False, encoding="latin-1")
    if table.shape[1] != 5 + len(names):
        raise DataError(
            f"{path}: expected {5 + len(names)} '|'-separated fields per line "
            f"(id, title, dates, url, {len(names)} genre flags), found {table.shape[1]}"
        )
    flags = table.iloc[:, 5:].to_numpy() == "1"
    genres = pd.Series([[n for n, f in zip(names, row, strict=True) if f] for row in flags])
    return _movies(path, "100k", table[0], table[1], genres)


def _movies(
    path: Path, layout: str, ids: pd.Series, titles: pd.Series, genres: pd.Series
) -> list[Movie]:
    numeric = pd.to_numeric(ids, errors="coerce")
    bad = numeric.isna().to_numpy() | (numeric % 1 != 0).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}:{_line(layout, row)}: movie id {ids.iat[row]!r} is not a number")
    dup = numeric.duplicated().to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise DataError(f"{path}:{_line(layout, row)}: movie id {ids.iat[row]} appears twice")
    movies = []
    for movie_id, raw_title, raw_genres in zip(
        numeric.astype(np.int64), titles, genres, strict=True
    ):
        title, year = parse_title(str(raw_title))
        kept = tuple(g for g in raw_genres if g not in _NO_GENRES)
        movies.append(Movie(int(movie_id), title, kept, year))
    if not movies:
        raise DataError(f"{path}: no movies")
    return movies


_FILES = {
    "csv": ("ratings.csv", "movies.csv"),
    "dat": ("ratings.dat", "movies.dat"),
    "100k": ("u.data", "u.item"),
}
_RATING_READERS = {"csv": _read_ratings_csv, "dat": _read_ratings_dat, "100k": _read_ratings_100k}
_MOVIE_READERS = {"csv": _read_movies_csv, "dat": _read_movies_dat, "100k": _read_movies_100k}
