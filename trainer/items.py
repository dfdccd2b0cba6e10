"""An items file: the catalogue of an interaction log, every column but the id optional.

    item_id,title,genres,year          genres '|'-separated ("Comedy|Drama"), or a Parquet list
    sku-1,Blue Kettle,Kitchen|Gifts,   an empty year is unknown; without a year column, a year
    sku-2,,,                           at the end of the title ("Heat (1995)") is used

CSV, TSV, JSON lines or Parquet, as ``trainer.tables`` reads them. An item without a title is
shown by its id. Ids follow the interactions' rule (``trainer.interactions``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from movierec.artifacts import MAX_YEAR, MIN_YEAR, Movie
from movierec.errors import DataError
from movierec.ids import MAX_ID_CHARS, Key, as_key
from trainer.interactions import ITEM_COLUMNS, Columns
from trainer.movielens import parse_title
from trainer.tables import Table, find_column, open_table

TITLE_COLUMNS = ("title", "name")
GENRE_COLUMNS = ("genres", "genre", "categories", "category")
YEAR_COLUMNS = ("year", "release_year")
_NO_GENRES = {"", "(no genres listed)"}
_YEAR = re.compile(r"\s*(\d{4})")  # 1995, or the start of 1995-07-14


def read_items(
    path: Path, columns: Columns | None = None, item_column: str | None = None
) -> list[Movie]:
    """The catalogue in file order, ids as the file spells them (text or Parquet integers).
    The id column is ``columns.item`` or ``item_column`` (the interactions' own) when the
    header has it, else the first of the usual names."""
    columns = columns or Columns()
    table = open_table(path)
    named = [c for c in (columns.item, item_column) if c is not None and c in table.columns]
    candidates = (*named, *ITEM_COLUMNS, "id")
    id_column = find_column(table, None, candidates, "--item-col")
    if id_column is None:
        raise DataError(
            f"{table.path}: no item id column: none of {', '.join(dict.fromkeys(candidates))}; "
            f"header has {table.columns}; name it with --item-col"
        )
    title = find_column(table, columns.title, TITLE_COLUMNS, "--title-col")
    genres = find_column(table, columns.genres, GENRE_COLUMNS, "--genres-col")
    year = find_column(table, columns.year, YEAR_COLUMNS, "--year-col")
    wanted = list(dict.fromkeys(c for c in (id_column, title, genres, year) if c is not None))
    values: dict[str, list[Any]] = {c: [] for c in wanted}
    for batch in table.batches(wanted):
        for c in wanted:
            values[c].extend(batch.column(c).to_pylist())
    ids = values[id_column]
    if not ids:
        raise DataError(f"{table.path}: no items (a header and no rows)")
    seen: dict[Key, int] = {}
    movies = []
    for row, key in enumerate(ids):
        key = _id(table, row, id_column, key)
        if key in seen:
            raise DataError(f"{table.where(row)}: item {key!r} appears twice")
        seen[key] = row
        name = str(values[title][row] or "").strip() if title else ""
        parsed_title, title_year = parse_title(name) if name else (str(key), None)
        movies.append(
            Movie(
                key,
                parsed_title,
                _genres(values[genres][row]) if genres else (),
                _year(table, row, year, values[year][row]) if year else title_year,
            )
        )
    return movies


def _id(table: Table, row: int, column: str, key: object) -> Key:
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if not isinstance(key, str) or not key or as_key(key, "str") is None:
        what = "no id" if not key else (
            f"{key!r:.80}, not an id of 1 to {MAX_ID_CHARS} characters without NUL")  # fmt: skip
        raise DataError(f"{table.where(row)}: column {column!r} has {what}")
    return key


def _genres(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    parts = value if isinstance(value, list) else str(value).split("|")
    return tuple(g.strip() for g in map(str, parts) if g.strip() not in _NO_GENRES)


def _year(table: Table, row: int, column: str, value: object) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, float) and value != value:  # NaN: unknown
        return None
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and (MIN_YEAR <= value <= MAX_YEAR)
    ):
        return int(value)
    m = _YEAR.match(str(value))
    if m is None:
        raise DataError(
            f"{table.where(row)}: column {column!r} has {value!r}, expected a year (1995)"
        )
    return int(m.group(1))
