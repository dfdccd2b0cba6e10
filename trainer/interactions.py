"""An interaction log of any shape, read into compact arrays: who (a user code), what (an
item code), how it was rated (or nothing: an implicit log, every row a positive) and when.

    movierec train --interactions events.csv --user-col visitor --item-col sku --out ART

Ids are the data's own. A column whose every id is a canonical int64 ("42"; not "042",
"+42" or "4.2e1") stays integer, as MovieLens does; otherwise every id in it is a string
(UUIDs, SKUs, slugs) of at most MAX_ID_CHARS characters. Codes follow the sorted ids, so
ordering by code is ordering by id.

Memory: rows arrive in batches (``trainer.tables``) and are kept as int32 codes, float32
ratings and float64 times, about 20 bytes a row; each batch's distinct ids pass through one
dict, the rows' own strings never become Python objects.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from movierec.errors import DataError
from movierec.ids import MAX_ID_CHARS, Key
from trainer.tables import Table, find_column, open_table, require_column

# Looked for, in this order, when a column is not named: what common logs call them.
USER_COLUMNS = ("user_id", "userId", "user", "visitor", "visitor_id", "customer_id", "session_id")
ITEM_COLUMNS = ("item_id", "itemId", "movie_id", "movieId", "item", "movie", "product_id", "sku")
RATING_COLUMNS = ("rating", "stars")
TIME_COLUMNS = ("timestamp", "time", "ts", "event_time", "datetime")
_CANONICAL_INT = re.compile(r"-?(?:0|[1-9][0-9]{0,18})")  # int64 range checked after


@dataclass(frozen=True)
class Columns:
    """Which column holds what. None: the first of the usual names the header has (a
    rating or time column may be absent); "" for rating or time: ignore such a column."""

    user: str | None = None
    item: str | None = None
    rating: str | None = None
    time: str | None = None
    title: str | None = None  # items file
    genres: str | None = None  # items file: '|'-separated text, or a list column
    year: str | None = None  # items file; without one, a year in the title ("Heat (1995)")


@dataclass(frozen=True)
class Interactions:
    """Row i: user ``user_ids[users[i]]`` interacted with item ``item_ids[items[i]]``."""

    users: npt.NDArray[np.int32]
    items: npt.NDArray[np.int32]
    ratings: npt.NDArray[np.float32] | None  # None: implicit, every row a positive
    times: npt.NDArray[np.float64] | None  # seconds since 1970; None: the file's order
    user_ids: npt.NDArray[Any]  # sorted, unique: int64 or fixed-width str
    item_ids: npt.NDArray[Any]
    columns: dict[str, str | None]  # which column was read as what (for the manifest)

    def __len__(self) -> int:
        return len(self.users)


def read_interactions(
    path: Path, columns: Columns | None = None, int_ids: bool = False
) -> Interactions:
    """Read an interaction file (CSV, TSV, JSON lines or Parquet). ``int_ids`` refuses ids
    that are not integers (the MovieLens layouts) instead of reading every id as a string."""
    columns = columns or Columns()
    table = open_table(path)
    user = require_column(table, columns.user, USER_COLUMNS, "user", "--user-col")
    item = require_column(table, columns.item, ITEM_COLUMNS, "item", "--item-col")
    rating = _optional(table, columns.rating, RATING_COLUMNS, "--rating-col")
    time = _optional(table, columns.time, TIME_COLUMNS, "--time-col")
    if user == item:
        raise DataError(f"{table.path}: the user and item columns are both {user!r}")
    rows = table.max_rows()
    users, items = IdColumn(table, user, rows, int_ids), IdColumn(table, item, rows, int_ids)
    ratings, times = Buffer(np.float32, rows), Buffer(np.float64, rows)
    wanted = [c for c in (user, item, rating, time) if c is not None]
    offset = 0
    for batch in table.batches(wanted, dictionary=(user, item)):
        users.add(batch.column(user), offset)
        items.add(batch.column(item), offset)
        if rating is not None:
            ratings.append(numbers(table, batch.column(rating), rating, offset))
        if time is not None:
            times.append(seconds(table, batch.column(time), time, offset))
        offset += batch.num_rows
    if offset == 0:
        raise DataError(f"{table.path}: no interactions (a header and no rows)")
    user_ids, user_codes = users.finish()
    item_ids, item_codes = items.finish()
    return Interactions(
        users=user_codes,
        items=item_codes,
        ratings=ratings.array() if rating is not None else None,
        times=times.array() if time is not None else None,
        user_ids=user_ids,
        item_ids=item_ids,
        columns={"user": user, "item": item, "rating": rating, "time": time},
    )


class IdColumn:
    """One id column, factorised batch by batch: every distinct id gets a code in order of
    appearance; ``finish`` renumbers them in id order."""

    def __init__(self, table: Table, column: str, rows: int, int_ids: bool = False) -> None:
        self.table, self.column, self.int_ids = table, column, int_ids
        self._code: dict[Key, int] = {}
        self._codes = Buffer(np.int32, rows)

    def add(self, values: pa.Array | pa.ChunkedArray, offset: int) -> None:
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if values.null_count:
            row = offset + _first(values.is_null())
            raise DataError(f"{self.table.where(row)}: column {self.column!r} has no id")
        if pa.types.is_integer(values.type):
            keys, indices = np.unique(values.to_numpy(), return_inverse=True)
            keys = keys.tolist()
        elif pa.types.is_dictionary(values.type) or _is_text(values.type):
            encoded = values if pa.types.is_dictionary(values.type) else values.dictionary_encode()
            self._check_text(encoded.dictionary, encoded.indices, offset)
            keys, indices = encoded.dictionary.to_pylist(), encoded.indices.to_numpy()
        else:
            raise DataError(
                f"{self.table.path}: column {self.column!r} holds {values.type}; ids must be "
                "integers or text"
            )
        code = self._code
        lookup = np.fromiter((code.setdefault(k, len(code)) for k in keys), np.int32, len(keys))
        self._codes.append(lookup[indices])

    def _check_text(self, dictionary: pa.Array, indices: pa.Array, offset: int) -> None:
        lengths = pc.utf8_length(dictionary).to_numpy()
        nul = pc.match_substring(dictionary, "\0").fill_null(False).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero((lengths == 0) | (lengths > MAX_ID_CHARS) | nul)
        if len(bad):
            row = offset + _first(pc.equal(indices, int(bad[0])))
            value = dictionary[int(bad[0])].as_py()
            what = "an empty id"
            if value and "\0" in value:
                what = f"an id holding a NUL character ({value[:20]!r})"
            elif value:
                what = (
                    f"an id of {len(value)} characters ({value[:20]!r}...; at most {MAX_ID_CHARS})"
                )
            raise DataError(f"{self.table.where(row)}: column {self.column!r} has {what}")

    def finish(self) -> tuple[npt.NDArray[Any], npt.NDArray[np.int32]]:
        """(the sorted distinct ids, each row's code into them)."""
        keys = list(self._code)
        ids = id_values(keys)
        if self.int_ids and ids.dtype.kind == "U":
            bad = next(k for k in keys if as_int(k) is None)
            codes = self._codes.array()
            row = int(np.argmax(codes == self._code[bad]))
            raise DataError(
                f"{self.table.where(row)}: column {self.column!r} has {bad!r}, expected an "
                "integer id"
            )
        order = np.argsort(ids, kind="stable")
        rank = np.empty(len(ids), np.int32)
        rank[order] = np.arange(len(ids), dtype=np.int32)
        codes = self._codes.array()
        for s in range(0, len(codes), 1 << 22):  # in place, in slices: no second full copy
            codes[s : s + (1 << 22)] = rank[codes[s : s + (1 << 22)]]
        return ids[order], codes


def id_values(keys: Sequence[Key]) -> npt.NDArray[Any]:
    """Ids as one array: int64 when every one is an int or a canonical int64 string, else
    fixed-width strings (the artifact's two id kinds)."""
    ints = [as_int(k) for k in keys]
    if all(i is not None for i in ints):
        return np.array(ints, dtype=np.int64)
    text = [str(k) for k in keys]
    return np.array(text, dtype=f"<U{max([1, *map(len, text)])}")


def as_int(key: Key) -> int | None:
    """``key`` as an int64 if it is one or spells one canonically, else None."""
    if isinstance(key, int):
        return key
    if not _CANONICAL_INT.fullmatch(key):
        return None
    value = int(key)
    return value if -(2**63) <= value < 2**63 else None


def numbers(table: Table, values: pa.Array, column: str, offset: int) -> npt.NDArray[np.float64]:
    """A numeric column (text parsed here) as finite float64s, or DataError naming the line."""
    values = _plain(values)
    if _is_text(values.type):
        try:
            parsed = pc.cast(values, pa.float64())
        except pa.ArrowInvalid:
            row = _first_failure(values, lambda part: pc.cast(part, pa.float64()))
            raise _bad(table, offset + row, column, values[row].as_py(), "a number") from None
    elif pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        parsed = values.cast(pa.float64())
    else:
        raise DataError(f"{table.path}: column {column!r} holds {values.type}, expected numbers")
    if parsed.null_count:
        row = _first(parsed.is_null())
        raise _bad(table, offset + row, column, values[row].as_py(), "a number")
    out: npt.NDArray[np.float64] = parsed.to_numpy(zero_copy_only=False)
    finite = np.isfinite(out)
    if not finite.all():
        row = int(np.argmin(finite))
        raise _bad(table, offset + row, column, values[row].as_py(), "a finite number")
    return out


def seconds(table: Table, values: pa.Array, column: str, offset: int) -> npt.NDArray[np.float64]:
    """A time column as seconds since 1970: numbers (epoch seconds, or any unit: only their
    order matters), ISO-8601 text ("2024-05-01T12:30:00Z", offsets, dates) or Parquet
    timestamps and dates."""
    values = _plain(values)
    if pa.types.is_timestamp(values.type) or pa.types.is_date(values.type):
        if values.null_count:
            raise _bad(table, offset + _first(values.is_null()), column, None, "a time")
        micros = pc.cast(values, pa.timestamp("us", getattr(values.type, "tz", None)))
        as_int: npt.NDArray[np.int64] = micros.cast(pa.int64()).to_numpy()
        return as_int / 1e6
    if not _is_text(values.type):
        return numbers(table, values, column, offset)
    try:
        return numbers(table, values, column, offset)
    except DataError:
        pass  # not all numbers: each value a number or an ISO-8601 time, then
    text = values.to_pandas()
    number = pd.to_numeric(text, errors="coerce").to_numpy(np.float64, na_value=np.nan)
    time = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    is_time = time.notna().to_numpy()
    bad = ~(np.isfinite(number) | is_time)
    if bad.any():
        row = int(np.argmax(bad))
        raise _bad(table, offset + row, column, values[row].as_py(),
                   "a number or an ISO-8601 time")  # fmt: skip
    micros = time.dt.tz_localize(None).to_numpy("datetime64[us]").astype(np.int64)
    out: npt.NDArray[np.float64] = np.where(is_time, micros / 1e6, number)
    return out


def _optional(table: Table, given: str | None, candidates: Sequence[str], flag: str) -> str | None:
    if given == "":
        return None
    return find_column(table, given, candidates, flag)


def _bad(table: Table, row: int, column: str, value: object, expected: str) -> DataError:
    return DataError(f"{table.where(row)}: column {column!r} has {value!r}, expected {expected}")


def _first_failure(values: pa.Array, convert: Callable[[pa.Array], object]) -> int:
    """The first element ``convert`` refuses, by bisection: pyarrow's own rules, O(log n)
    conversions."""
    lo, hi = 0, len(values)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            convert(values.slice(lo, mid - lo))
            lo = mid
        except pa.ArrowInvalid:
            hi = mid
    return lo


def _first(mask: pa.Array) -> int:
    return int(np.argmax(mask.to_numpy(zero_copy_only=False)))


def _plain(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    return values


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


class Buffer:
    """A column filled batch by batch into one array allocated up front at the most rows
    the file can hold: pages never written are never resident, so the generous capacity
    costs address space, not memory, and no batch is copied twice."""

    def __init__(self, dtype: type, capacity: int) -> None:
        self._data: npt.NDArray[Any] = np.empty(max(capacity, 1), dtype)
        self._size = 0

    def append(self, values: npt.NDArray[Any]) -> None:
        end = self._size + len(values)
        if end > len(self._data):  # only if the capacity was an estimate
            grown = np.empty(max(end, 2 * len(self._data)), self._data.dtype)
            grown[: self._size] = self._data[: self._size]
            self._data = grown
        self._data[self._size : end] = values
        self._size = end

    def array(self) -> npt.NDArray[Any]:
        return self._data[: self._size]
