"""Tabular files as the trainer reads them: CSV or TSV with a header line (the delimiter from
the extension, else sniffed from the header), JSON lines (one object per line, as logs are
often written) and Parquet, streamed in record batches by pyarrow so a 25M-row file is never
held whole as text or as Python objects. Text and JSON lines may be gzip- or bzip2-compressed
(``ratings.csv.gz``): read as they are decompressed.

Errors are one line naming the file and the line (CSV: counted as a person would, quoted
fields spanning lines and blank lines included) or the row (Parquet), never a traceback from
inside pyarrow: ``ratings.csv:5: column 'rating' has 'four', expected a number``.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from movierec.errors import DataError

PARQUET_SUFFIXES = (".parquet", ".pq")
TSV_SUFFIXES = (".tsv", ".tab")
JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open}  # pyarrow's readers detect both by suffix
SNIFFED = (",", "\t", ";", "|")  # delimiters a header is sniffed for, ties in this order
CSV_BLOCK = 8 << 20  # bytes of text per batch (~330k MovieLens rows): 16 MB took +90 MB
PARQUET_BATCH = 1 << 20  # rows per batch
TEXT = pa.string()
DICTIONARY = pa.dictionary(pa.int32(), pa.string())  # each batch's distinct strings, once


@dataclass(frozen=True)
class Table:
    """An opened tabular file: its header and how to read it (nothing read yet)."""

    path: Path
    columns: list[str]  # the header (JSON lines: the first objects' keys), in file order
    format: Literal["text", "json", "parquet"]
    delimiter: str = ","  # text only

    def batches(
        self, wanted: Sequence[str], dictionary: Sequence[str] = ()
    ) -> Iterator[pa.RecordBatch]:
        """The ``wanted`` columns, batch by batch. CSV columns arrive as text (those in
        ``dictionary`` dictionary-encoded); Parquet columns keep their stored types (text in
        ``dictionary`` dictionary-encoded)."""
        try:
            if self.format == "parquet":
                yield from self._parquet_batches(wanted, dictionary)
            elif self.format == "json":
                yield from self._json_batches(wanted)
            else:
                yield from self._csv_batches(wanted, dictionary)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, EOFError) as e:
            raise self._error(e) from None

    def max_rows(self) -> int:
        """At most how many rows the file holds (exact for Parquet; for text, a row takes at
        least one byte per column: the delimiters and the newline; for compressed text, an
        estimate)."""
        if self.format == "parquet":
            rows: int = pq.ParquetFile(self.path).metadata.num_rows
            return rows
        size = self.path.stat().st_size
        if self.path.suffix.lower() in COMPRESSED:  # an estimate: logs compress ~4-8x; the
            size *= 8  # buffers filled from it grow past it if need be
        return size // max(len(self.columns), 2) + 1

    def where(self, row: int) -> str:
        """'file:LINE' (CSV, JSON lines) or 'file: row N' (Parquet) for 0-based data row
        ``row``."""
        if self.format == "parquet":
            return f"{self.path}: row {row + 1}"
        if self.format == "json":
            return f"{self.path}:{self._json_line_of(row)}"
        return f"{self.path}:{self._line_of(row)}"

    def _csv_batches(
        self, wanted: Sequence[str], dictionary: Sequence[str]
    ) -> Iterator[pa.RecordBatch]:
        reader = pacsv.open_csv(
            self.path,
            read_options=pacsv.ReadOptions(block_size=CSV_BLOCK),
            # quoted fields may span lines (titles do); costs nothing measurable at 25M rows
            parse_options=pacsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                include_columns=list(wanted),
                column_types={c: DICTIONARY if c in dictionary else TEXT for c in wanted},
                strings_can_be_null=False,  # an empty field is "", refused where it matters
            ),
        )
        pool = pa.default_memory_pool()
        for batch in reader:
            yield batch
            pool.release_unused()  # mimalloc otherwise keeps every freed batch (~340 MB at 25M)

    def _parquet_batches(
        self, wanted: Sequence[str], dictionary: Sequence[str]
    ) -> Iterator[pa.RecordBatch]:
        text = [c for c in dictionary if _is_text(self._schema().field(c).type)]
        # pre_buffer would read ahead whole column chunks: +190 MB at 25M rows, no faster here
        file = pq.ParquetFile(self.path, read_dictionary=text, pre_buffer=False)
        pool = pa.default_memory_pool()
        for batch in file.iter_batches(batch_size=PARQUET_BATCH, columns=list(wanted)):
            yield batch
            pool.release_unused()

    def _json_batches(self, wanted: Sequence[str]) -> Iterator[pa.RecordBatch]:
        reader = pajson.open_json(self.path, read_options=pajson.ReadOptions(block_size=CSV_BLOCK))
        pool = pa.default_memory_pool()
        for batch in reader:
            missing = [c for c in wanted if c not in batch.schema.names]
            if missing:  # a key absent from a whole block: the column is all nulls there
                batch = _with_null_columns(batch, missing)
            yield batch.select(list(wanted))
            pool.release_unused()

    def _schema(self) -> pa.Schema:
        schema: pa.Schema = pq.read_schema(self.path)
        return schema

    def _line_of(self, row: int) -> int:
        """The line data row ``row`` starts on, found by reading the file again as a person
        counts lines (only on the way to an error, so speed does not matter)."""
        with _open_text(self.path) as f:
            reader = csv.reader(f, delimiter=self.delimiter or ",")
            start, seen = 1, -1  # the header is record -1
            for record in reader:
                if record:  # pyarrow skips empty lines; so does the count
                    if seen == row:
                        return start
                    seen += 1
                start = reader.line_num + 1
        return start

    def _error(self, e: Exception) -> DataError:
        message = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        if "invalid UTF8" in message:
            return DataError(f"{self.path}:{self._first_non_utf8_line()}: not UTF-8 text")
        if self.format == "text" and "Expected" in message and "columns" in message:
            line, found = self._first_ragged_line()
            if line:
                return DataError(
                    f"{self.path}:{line}: expected {len(self.columns)} "
                    f"{_name(self.delimiter)}-separated fields as in the header, found {found}"
                )
        return DataError(f"{self.path}: cannot be read: {message}")

    def _json_line_of(self, row: int) -> int:
        """JSON lines: one object per non-blank line."""
        with _open_text(self.path) as f:
            seen = -1
            for number, line in enumerate(f, 1):
                if line.strip():
                    seen += 1
                    if seen == row:
                        return number
        return 1

    def _first_ragged_line(self) -> tuple[int, int]:
        with _open_text(self.path) as f:
            reader = csv.reader(f, delimiter=self.delimiter or ",")
            start = 1
            for record in reader:
                if record and len(record) != len(self.columns):
                    return start, len(record)
                start = reader.line_num + 1
        return 0, 0

    def _first_non_utf8_line(self) -> int:
        with _open_binary(self.path) as f:
            for number, line in enumerate(f, 1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError:
                    return number
        return 1


def open_table(path: Path, delimiter: str | None = None) -> Table:
    """Open a CSV/TSV/JSON-lines/Parquet file and read its header; the format comes from the
    suffix (.parquet/.pq, .jsonl/.ndjson/.json, .tsv/.tab, each text one optionally followed
    by .gz or .bz2), anything else is delimited text whose delimiter is sniffed from the
    header line unless given."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = _format_suffix(path)
    if suffix in PARQUET_SUFFIXES:
        try:
            names = list(pq.read_schema(path).names)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: not a Parquet file ({str(e).strip()[:200]})") from None
        return Table(path, names, "parquet")
    try:
        with _open_binary(path) as f:
            head = f.read(1 << 16)
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot be decompressed ({e})") from None
    if not head.strip():
        raise DataError(f"{path}: empty file")
    if suffix in JSON_SUFFIXES:
        try:
            names = list(pajson.open_json(path).schema.names)
        except (pa.ArrowInvalid, OSError) as e:
            message = str(e).strip().splitlines()[-1][:200]
            raise DataError(f"{path}: not JSON lines, one object per line ({message})") from None
        return Table(path, names, "json")
    try:
        first = head.decode("utf-8").lstrip("\ufeff").splitlines()[0]
    except UnicodeDecodeError:
        first = head.decode("utf-8", errors="ignore").splitlines()[0]
        if not first.isascii():
            raise DataError(f"{path}:1: not UTF-8 text") from None
    if delimiter is None:
        delimiter = "\t" if suffix in TSV_SUFFIXES else _sniff(first)
    names = next(csv.reader(io.StringIO(first), delimiter=delimiter))
    return Table(path, [n.strip() for n in names], "text", delimiter)


def _format_suffix(path: Path) -> str:
    """'.csv' for ratings.csv and ratings.csv.gz alike."""
    suffixes = [s.lower() for s in path.suffixes]
    if len(suffixes) > 1 and suffixes[-1] in COMPRESSED:
        return suffixes[-2]
    return suffixes[-1] if suffixes else ""


def _open_binary(path: Path) -> IO[bytes]:
    opener = COMPRESSED.get(path.suffix.lower())
    return opener(path, "rb") if opener else open(path, "rb")  # type: ignore[operator]


def _open_text(path: Path) -> IO[str]:
    return io.TextIOWrapper(_open_binary(path), encoding="utf-8", errors="replace", newline="")


def _with_null_columns(batch: pa.RecordBatch, names: Sequence[str]) -> pa.RecordBatch:
    nulls = [pa.nulls(batch.num_rows) for _ in names]
    return pa.RecordBatch.from_arrays([*batch.columns, *nulls], names=[*batch.schema.names, *names])


def find_column(
    table: Table, given: str | None, candidates: Sequence[str], flag: str
) -> str | None:
    """The column named ``given`` (DataError if the header lacks it), else the first of
    ``candidates`` the header has, else None."""
    if given is not None:
        if given not in table.columns:
            raise DataError(
                f"{table.path}: no column {given!r} ({flag}); header has {table.columns}"
            )
        return given
    return next((c for c in candidates if c in table.columns), None)


def require_column(
    table: Table, given: str | None, candidates: Sequence[str], what: str, flag: str
) -> str:
    found = find_column(table, given, candidates, flag)
    if found is None:
        raise DataError(
            f"{table.path}: no {what} column: none of {', '.join(candidates)}; header has "
            f"{table.columns}; name it with {flag}"
        )
    return found


def _sniff(header: str) -> str:
    counts = [header.count(d) for d in SNIFFED]
    return SNIFFED[counts.index(max(counts))] if max(counts) else ","


def _name(delimiter: str) -> str:
    return {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}.get(
        delimiter, repr(delimiter)
    )


def _is_text(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))
