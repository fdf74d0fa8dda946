"""Reading a recipient file in batches: CSV (any encoding, bad rows set aside) and Parquet.

A reader yields :class:`Batch` es of string columns named as in the file, each row with its
1-based data-row number, plus the rows that could not be read (:class:`Unreadable`): a
CSV row with the wrong number of columns, or with bytes that are not valid in the file's
encoding. Those become rejects with their row number and reason; the rest is sent. Only a
file that cannot be read at all (missing, not CSV/Parquet, a header that cannot be
decoded) raises :class:`RecipientError`.
"""

from __future__ import annotations

import codecs
import csv
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from raymail.errors import RecipientError, first_line
from raymail.schema import EMAIL

__all__ = ["READERS", "Batch", "Unreadable", "csv_batches", "parquet_batches"]

MAX_REJECT_VALUE = 1000  # an unreadable row's text is cut to this many characters
UTF8 = "utf-8"
_ENCODING_HINT = "set recipients_encoding in the spec (e.g. cp1252, latin-1) to read it whole"
_I64 = npt.NDArray[np.int64]


class Unreadable(NamedTuple):
    """A row that never became a recipient row, and why."""

    row: int  # 1-based data row
    text: str  # the row (or the undecodable field), cut to MAX_REJECT_VALUE
    reason: str
    field: str | None = None  # the column at fault; None: the whole row


@dataclass
class Batch:
    table: pa.Table  # string columns as named in the file
    rows: _I64  # 1-based data row of each table row
    unreadable: list[Unreadable]  # rows set aside up to this batch's last row


Reader = Callable[[Path, str, int, str], tuple[list[str], Iterator[Batch]]]


def csv_header(path: Path, source: str, encoding: str = UTF8) -> list[str]:
    """The header's column names as pyarrow will see them (BOM dropped, not stripped)."""
    codec = "utf-8-sig" if codecs.lookup(encoding).name == UTF8 else encoding
    try:  # undecodable bytes kept as surrogates: only the header's own ones matter here
        with path.open(encoding=codec, errors="surrogateescape", newline="") as handle:
            header = next(csv.reader(handle), None)
    except (OSError, csv.Error) as exc:
        raise RecipientError(f"{source}: cannot read CSV header: {exc}") from None
    for name in header or []:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError as exc:
            where = f"byte 0x{ord(name[exc.start]) - 0xDC00:02x} in {name!r}"
            raise RecipientError(
                f"{source}: cannot read CSV: the header is not valid {encoding} ({where}); "
                f"the file must be UTF-8, or {_ENCODING_HINT}"
            ) from None
    if not header:
        raise RecipientError(f"{source}: empty file (no header row)")
    return header


def csv_batches(
    path: Path, source: str, batch_rows: int, encoding: str = UTF8
) -> tuple[list[str], Iterator[Batch]]:
    """Batches of a CSV file in ``encoding``; rows that cannot be read are set aside.

    Columns are read as bytes and decoded per batch, so one row with bytes that are not
    valid UTF-8 (a list exported from a spreadsheet) is rejected alone instead of making
    the whole file unreadable.
    """
    names = csv_header(path, source, encoding)
    set_aside: list[Unreadable] = []

    def on_invalid(row: Any) -> str:
        if row.number is None:  # only with use_threads=True, which is never used here
            return "error"
        reason = f"malformed CSV row: expected {row.expected_columns} columns, got "
        text = row.text[:MAX_REJECT_VALUE]
        set_aside.append(Unreadable(row.number - 1, text, reason + str(row.actual_columns)))
        return "skip"

    try:
        reader = pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(
                use_threads=False,
                block_size=max(1 << 20, batch_rows * 64),
                encoding=_arrow_encoding(encoding),
            ),  # a block must hold the longest row: at least 1 MiB
            parse_options=pa_csv.ParseOptions(
                newlines_in_values=True, invalid_row_handler=on_invalid
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types={name: pa.binary() for name in names}, strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise RecipientError(f"{source}: cannot read CSV: {first_line(exc)}") from None

    def batches() -> Iterator[Batch]:
        done = 0  # rows handed out so far, read or set aside
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
                raise RecipientError(f"{source}: cannot read CSV: {first_line(exc)}") from None
            # ``set_aside`` holds only rows not yet handed out, all after those that were
            all_rows = _good_rows(done, batch.num_rows, [m.row for m in set_aside])
            for start in range(0, batch.num_rows, batch_rows):  # blocks are bytes, not rows
                rows = all_rows[start : start + batch_rows]
                mine = [m for m in set_aside if m.row <= int(rows[-1])]  # a prefix: in order
                del set_aside[: len(mine)]
                done += len(rows) + len(mine)
                piece = pa.Table.from_batches([batch.slice(start, batch_rows)])
                table, rows, undecodable = _decoded(piece, rows, encoding)
                yield Batch(table, rows, sorted(mine + undecodable))
        rest = list(set_aside)
        if rest:
            empty = pa.table({n: pa.array([], pa.string()) for n in names})
            yield Batch(empty, np.empty(0, dtype=np.int64), rest)

    return names, batches()


def _arrow_encoding(encoding: str) -> str:
    """pyarrow's name: its own "utf8" reads UTF-8 natively; any other goes through Python."""
    return "utf8" if codecs.lookup(encoding).name == UTF8 else encoding


def _decoded(table: pa.Table, rows: _I64, encoding: str) -> tuple[pa.Table, _I64, list[Unreadable]]:
    """``table``'s byte columns as strings, without the rows whose bytes are not UTF-8.

    pyarrow hands over UTF-8 (it transcodes other encodings itself), so a row that fails
    here has bytes invalid in ``encoding``. The common case is one cast per column.
    """
    bad: dict[int, Unreadable] = {}
    for name in table.column_names:
        try:
            table.column(name).cast(pa.string())
            continue
        except pa.ArrowInvalid:
            pass
        for position, value in enumerate(table.column(name).to_pylist()):
            if position in bad or value is None:
                continue
            try:
                value.decode("utf-8")
            except UnicodeDecodeError as exc:
                where = f"byte 0x{value[exc.start]:02x} at offset {exc.start}"
                reason = f"column {name!r} is not valid {encoding} ({where}); {_ENCODING_HINT}"
                text = value.decode("utf-8", errors="backslashreplace")[:MAX_REJECT_VALUE]
                bad[position] = Unreadable(int(rows[position]), text, reason, name)
    if bad:
        keep = np.ones(table.num_rows, dtype=bool)
        keep[list(bad)] = False
        table, rows = table.filter(pa.array(keep)), rows[keep]
    strings = pa.table({n: table.column(n).cast(pa.string()) for n in table.column_names})
    return strings, rows, list(bad.values())


def _good_rows(before: int, count: int, set_aside: list[int]) -> _I64:
    """Data-row numbers of the next ``count`` parsed rows after row ``before``.

    ``set_aside`` are the rows after ``before`` pyarrow skipped so far. The k-th parsed row
    is k plus the number of skipped rows at or before it: a fixed point reached in at most
    one step per skipped row in the way.
    """
    goods = np.arange(before + 1, before + count + 1, dtype=np.int64)
    if not set_aside:
        return goods
    bad = np.asarray(set_aside, dtype=np.int64)
    rows = goods
    for _ in range(len(bad) + 1):
        moved = goods + np.searchsorted(bad, rows, side="right")
        if np.array_equal(moved, rows):
            break
        rows = moved
    return rows


def parquet_batches(
    path: Path, source: str, batch_rows: int, encoding: str = UTF8
) -> tuple[list[str], Iterator[Batch]]:
    """Batches of a Parquet file (or a folder of them, in name order); ``encoding`` unused.

    ``ParquetFile.iter_batches`` decodes one row group at a time: about 10 MB in flight on
    a 1M-row list, where a dataset scanner read ahead 35-80 MB (measured).
    """
    try:
        files = sorted(ds.dataset(path, format="parquet").files) if path.is_dir() else [path]
        opened = [pq.ParquetFile(f) for f in files]
        names = list(opened[0].schema_arrow.names) if opened else [EMAIL]
    except (pa.ArrowException, OSError) as exc:
        raise RecipientError(f"{source}: cannot read Parquet: {first_line(exc)}") from None

    def batches() -> Iterator[Batch]:
        done = 0
        for parquet in opened:
            scanner = parquet.iter_batches(batch_size=batch_rows)
            while True:
                try:
                    batch = next(scanner)
                except StopIteration:
                    break
                except (pa.ArrowException, OSError) as exc:
                    message = first_line(exc)
                    raise RecipientError(f"{source}: cannot read Parquet: {message}") from None
                rows = np.arange(done + 1, done + batch.num_rows + 1, dtype=np.int64)
                done += batch.num_rows
                if batch.num_rows:
                    yield Batch(pa.Table.from_batches([batch]), rows, [])

    return names, batches()


READERS: dict[str, Reader] = {".csv": csv_batches, ".parquet": parquet_batches}
