"""Streaming intake: validate a recipient list batch by batch into the run directory.

The A server (driver) must not hold a list of millions in memory, so the list is read in
batches (``pyarrow.dataset`` for Parquet, pyarrow's streaming CSV reader for CSV), each batch
validated with the same vectorised checks as :func:`raymail.intake.recipients.load_recipients`, and
written straight to ``recipients.parquet`` and ``rejects.parquet`` (temp names, renamed when
complete, so a half-read list never looks like a whole one).

Duplicates across batches are found with :class:`SeenKeys`: two 64-bit hashes (128 bits) and
the first row of every kept address, in sorted numpy runs -- 24 bytes per recipient instead
of a Python string each (about 10x less; see the scale benchmark). Duplicates inside a batch
are compared exactly; across batches a false "duplicate" would need a 128-bit collision
(odds below 1e-20 for a billion addresses).

The result is the same as ``load_recipients`` on the whole file: same rows, row numbers,
normalised addresses, merge fields and rejects (tests/test_streaming.py checks it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from raymail.errors import RecipientError
from raymail.intake.recipients import (
    _MAX_REJECT_VALUE,
    REJECTS_FILE,
    _as_string,
    _clean_names,
    _csv_header,
    _duplicates,
    _first_line,
    _Malformed,
    _validate,
)
from raymail.intake.staging import locate
from raymail.schema import DOMAIN, EMAIL, REJECTS_SCHEMA, ROW

__all__ = ["BATCH_ROWS", "IntakeResult", "SeenKeys", "intake_recipients"]

BATCH_ROWS = 65_536  # rows per batch: big enough for vectorised checks, small for memory
_SECOND_SEED = 0x9E3779B97F4A7C15  # any seed but 0: a second, unrelated 64-bit hash
_U64 = npt.NDArray[np.uint64]
_I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class IntakeResult:
    """Counts of one intake, and what the duplicate check cost."""

    accepted: int
    rejected: int
    rows_read: int
    duplicates: int
    batches: int
    seen_bytes: int  # memory of the cross-batch duplicate check at the end


class SeenKeys:
    """The 128-bit hashes of every address kept so far, each with the row that kept it.

    Held as sorted numpy runs that merge like a binary counter (O(log n) runs), so a lookup
    is a few ``searchsorted`` calls per run and adding a batch never re-sorts everything.
    """

    def __init__(self) -> None:
        self._runs: list[tuple[_U64, _U64, _I64]] = []

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes + c.nbytes for a, b, c in self._runs)

    def lookup(self, h1: _U64, h2: _U64) -> _I64:
        """The first row of each key already seen, 0 where it is new."""
        found = np.zeros(len(h1), dtype=np.int64)
        for k1, k2, rows in self._runs:
            left = np.searchsorted(k1, h1, side="left")
            right = np.searchsorted(k1, h1, side="right")
            for i in np.flatnonzero(right > left).tolist():  # h1 matches are rare
                span = slice(int(left[i]), int(right[i]))
                hit = np.flatnonzero(k2[span] == h2[i])
                if len(hit) and found[i] == 0:
                    found[i] = rows[span][hit[0]]
        return found

    def add(self, h1: _U64, h2: _U64, rows: _I64) -> None:
        order = np.lexsort((h2, h1))
        self._runs.append((h1[order], h2[order], rows[order]))
        while len(self._runs) > 1 and len(self._runs[-2][0]) <= 2 * len(self._runs[-1][0]):
            newer, older = self._runs.pop(), self._runs.pop()
            k1, k2, rr = (np.concatenate([o, n]) for o, n in zip(older, newer, strict=True))
            order = np.lexsort((k2, k1))
            self._runs.append((k1[order], k2[order], rr[order]))


def _hashes(keys: pa.Array) -> tuple[_U64, _U64]:
    series = pl.Series(keys)
    return (
        series.hash(seed=0).to_numpy().astype(np.uint64, copy=False),
        series.hash(seed=_SECOND_SEED).to_numpy().astype(np.uint64, copy=False),
    )


# --- reading in batches --------------------------------------------------------------------


@dataclass
class _Batch:
    table: pa.Table  # columns as named in the file
    rows: _I64  # 1-based data row of each table row
    malformed: list[_Malformed]  # malformed CSV rows up to this batch's last row


def _csv_batches(path: Path, source: str, batch_rows: int) -> tuple[list[str], Iterator[_Batch]]:
    names = _csv_header(locate(path), source)
    malformed: list[_Malformed] = []

    def on_invalid(row: Any) -> str:
        if row.number is None:  # only with use_threads=True, which is never used here
            return "error"
        text = row.text[:_MAX_REJECT_VALUE]
        reason = f"malformed CSV row: expected {row.expected_columns} columns, got "
        malformed.append(_Malformed(row.number - 1, text, reason + str(row.actual_columns)))
        return "skip"

    try:
        reader = pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(
                use_threads=False, block_size=max(1 << 20, batch_rows * 64)
            ),  # a block must hold the longest row: at least 1 MiB
            parse_options=pa_csv.ParseOptions(
                newlines_in_values=True, invalid_row_handler=on_invalid
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types={name: pa.string() for name in names}, strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        raise RecipientError(f"{source}: cannot read CSV: {_csv_message(exc)}") from None

    def batches() -> Iterator[_Batch]:
        done = 0  # rows handed out so far, good and malformed
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
                raise RecipientError(f"{source}: cannot read CSV: {_csv_message(exc)}") from None
            # ``malformed`` holds only rows not yet handed out, all after the rows that were
            all_rows = _good_rows(done, batch.num_rows, [m.row for m in malformed])
            for start in range(0, batch.num_rows, batch_rows):  # blocks are bytes, not rows
                rows = all_rows[start : start + batch_rows]
                mine = [m for m in malformed if m.row <= int(rows[-1])]  # a prefix: in order
                del malformed[: len(mine)]
                done += len(rows) + len(mine)
                piece = pa.Table.from_batches([batch.slice(start, batch_rows)])
                yield _Batch(piece, rows, mine)
        rest = list(malformed)
        if rest:
            empty = pa.table({n: pa.array([], pa.string()) for n in names})
            yield _Batch(empty, np.empty(0, dtype=np.int64), rest)

    return names, batches()


def _good_rows(before: int, count: int, malformed: list[int]) -> _I64:
    """Data-row numbers of the next ``count`` good rows after row ``before``.

    ``malformed`` are the malformed rows after ``before`` known so far. The k-th good row is
    k plus the number of malformed rows at or before it: a fixed point reached in at most one
    step per malformed row in the way.
    """
    goods = np.arange(before + 1, before + count + 1, dtype=np.int64)
    if not malformed:
        return goods
    bad = np.asarray(malformed, dtype=np.int64)
    rows = goods
    for _ in range(len(bad) + 1):
        moved = goods + np.searchsorted(bad, rows, side="right")
        if np.array_equal(moved, rows):
            break
        rows = moved
    return rows


def _csv_message(exc: BaseException) -> str:
    message = _first_line(exc)
    if isinstance(exc, UnicodeDecodeError) or "UTF8" in message:
        message += " (the file must be UTF-8)"
    return message


def _parquet_batches(
    path: Path, source: str, batch_rows: int
) -> tuple[list[str], Iterator[_Batch]]:
    """Batches of a Parquet file (or a folder of them, in name order).

    ``ParquetFile.iter_batches`` decodes one row group at a time: about 10 MB in flight on
    a 1M-row list, where a dataset scanner read ahead 35-80 MB (measured).
    """
    try:
        files = sorted(ds.dataset(path, format="parquet").files) if path.is_dir() else [path]
        opened = [pq.ParquetFile(f) for f in files]
        names = list(opened[0].schema_arrow.names) if opened else [EMAIL]
    except (pa.ArrowException, OSError) as exc:
        raise RecipientError(f"{source}: cannot read Parquet: {_first_line(exc)}") from None

    def batches() -> Iterator[_Batch]:
        done = 0
        for parquet in opened:
            scanner = parquet.iter_batches(batch_size=batch_rows)
            while True:
                try:
                    batch = next(scanner)
                except StopIteration:
                    break
                except (pa.ArrowException, OSError) as exc:
                    message = _first_line(exc)
                    raise RecipientError(f"{source}: cannot read Parquet: {message}") from None
                rows = np.arange(done + 1, done + batch.num_rows + 1, dtype=np.int64)
                done += batch.num_rows
                if batch.num_rows:
                    yield _Batch(pa.Table.from_batches([batch]), rows, [])

    return names, batches()


_READERS: dict[str, Callable[[Path, str, int], tuple[list[str], Iterator[_Batch]]]] = {
    ".csv": _csv_batches,
    ".parquet": _parquet_batches,
}


# (position in the batch, field, value, reason) of accepted rows to reject after all
RowCheck = Callable[[pa.Table], list[tuple[int, str, str, str]]]


# --- the intake ----------------------------------------------------------------------------


def intake_recipients(
    path: str | Path,
    run_dir: Path,
    target: str,
    *,
    batch_rows: int = BATCH_ROWS,
    on_batch: Callable[[pa.Table], None] | None = None,
    label: str | None = None,
    row_check: RowCheck | None = None,
) -> IntakeResult:
    """Validate ``path`` batch by batch into ``run_dir/target`` and ``rejects.parquet``.

    ``on_batch`` sees each batch of accepted rows (e.g. to ledger suppressed ones) before
    the next is read. ``label`` names the list in errors and rejects (the s3:// URL of a
    staged copy). ``row_check`` returns (position, field, value, reason) of accepted rows
    to reject after all (composition's needs: attachments, certificates). Raises
    :class:`RecipientError` only when the file as a whole is unusable; every bad row
    becomes a reject with its row number and reason.
    """
    file, source = Path(path), label or str(path)  # errors name what the user wrote
    reader = _READERS.get(file.suffix.lower())
    if reader is None:
        raise RecipientError(
            f"{source}: unknown file type {file.suffix!r} (expected {', '.join(_READERS)})"
        )
    if not file.exists():
        raise RecipientError(f"{source}: file not found")
    if file.is_dir() and reader is _csv_batches:
        raise RecipientError(f"{source}: is a directory, not a CSV file")
    names, batches = reader(file, source, batch_rows)
    clean = _clean_names(names, source)
    fields = [n for n in clean if n != EMAIL]
    schema = pa.schema(
        [pa.field(ROW, pa.int64()), pa.field(EMAIL, pa.string()), pa.field(DOMAIN, pa.string())]
        + [pa.field(n, pa.string()) for n in fields]
    )
    out = run_dir / target
    rejects_out = run_dir / REJECTS_FILE
    for stale in (*run_dir.glob(f".{out.name}.*.tmp"), *run_dir.glob(f".{REJECTS_FILE}.*.tmp")):
        stale.unlink(missing_ok=True)  # left by a driver killed while reading the list
    tmp_out = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp_rejects = rejects_out.with_name(f".{REJECTS_FILE}.{os.getpid()}.tmp")
    seen = SeenKeys()
    accepted = rejected = rows_read = duplicates = count = 0
    try:
        with (
            pq.ParquetWriter(tmp_out, schema, compression="zstd") as writer,
            pq.ParquetWriter(tmp_rejects, REJECTS_SCHEMA) as reject_writer,
        ):
            for batch in batches:
                count += 1
                kept, rejects, dups = _check_batch(batch, clean, fields, source, seen)
                if row_check is not None and kept.num_rows:
                    kept, rejects = _checked_rows(kept, rejects, row_check(kept), source)
                rows_read += len(batch.rows) + len(batch.malformed)
                duplicates += dups
                if kept.num_rows:
                    writer.write_table(kept.cast(schema))
                    accepted += kept.num_rows
                    if on_batch is not None:
                        on_batch(kept)
                if rejects.num_rows:
                    reject_writer.write_table(rejects)
                    rejected += rejects.num_rows
        os.replace(tmp_out, out)
        os.replace(tmp_rejects, rejects_out)
    finally:
        for tmp in (tmp_out, tmp_rejects):
            tmp.unlink(missing_ok=True)
    return IntakeResult(accepted, rejected, rows_read, duplicates, count, seen.nbytes)


def _check_batch(
    batch: _Batch, names: list[str], fields: list[str], source: str, seen: SeenKeys
) -> tuple[pa.Table, pa.Table, int]:
    """(accepted rows, rejects, duplicates) of one batch; remembers its new addresses."""
    table = batch.table.rename_columns(names)
    raw_email = _as_string(table.column(EMAIL), EMAIL, source).combine_chunks()
    checked = _validate(raw_email)
    ok_pos = np.flatnonzero(checked.ok)
    keys = pc.ascii_lower(checked.email.take(ok_pos))
    # inside the batch: exact comparison
    dup_in_ok, first_in_ok = _duplicates(keys)
    unique = np.ones(len(ok_pos), dtype=bool)
    unique[dup_in_ok] = False
    # across batches: 128-bit hashes of the batch's first occurrences
    h1, h2 = _hashes(keys)
    earlier = np.zeros(len(ok_pos), dtype=np.int64)
    earlier[unique] = seen.lookup(h1[unique], h2[unique])
    rows_ok = batch.rows[ok_pos]
    new = unique & (earlier == 0)
    seen.add(h1[new], h2[new], rows_ok[new])
    # a repeat inside the batch of an address kept in an earlier batch names that row
    first_row = np.where(earlier > 0, earlier, rows_ok)
    dup_ok = np.concatenate([dup_in_ok, np.flatnonzero(earlier > 0)])
    dup_first = np.concatenate([first_row[first_in_ok], earlier[earlier > 0]])
    dup_pos = ok_pos[dup_ok]
    keep = checked.ok.copy()
    keep[dup_pos] = False

    mask = pa.array(keep)
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        ROW: pa.array(batch.rows[keep], pa.int64()),
        EMAIL: pc.filter(checked.email, mask),
        DOMAIN: pc.filter(checked.domain, mask),
    }
    for name in fields:
        column = _as_string(table.column(name), name, source)
        if column.null_count:
            column = pc.fill_null(column, "")
        columns[name] = pc.filter(column, mask)
    bad = np.asarray(checked.bad_index, dtype=np.int64)
    rejects = _rejects(
        source,
        batch,
        rows=np.concatenate([batch.rows[bad], batch.rows[dup_pos]]),
        values=pa.concat_arrays([raw_email.take(bad), raw_email.take(dup_pos)]),
        reasons=checked.bad_reason + [f"duplicate of row {r}" for r in dup_first.tolist()],
    )
    return pa.table(columns), rejects, len(dup_pos)


def _checked_rows(
    kept: pa.Table, rejects: pa.Table, problems: list[tuple[int, str, str, str]], source: str
) -> tuple[pa.Table, pa.Table]:
    """``kept`` without the rows ``problems`` names, which join ``rejects`` with reasons."""
    if not problems:
        return kept, rejects
    positions = [p[0] for p in problems]
    keep = np.ones(kept.num_rows, dtype=bool)
    keep[positions] = False
    extra = pa.table(
        {
            "file": pa.array([source] * len(problems), pa.string()),
            "row": kept.column(ROW).take(positions).combine_chunks().cast(pa.int64()),
            "field": pa.array([p[1] for p in problems], pa.string()),
            "value": pa.array([p[2] for p in problems], pa.string()),
            "reason": pa.array([p[3] for p in problems], pa.string()),
        },
        schema=REJECTS_SCHEMA,
    )
    both = pa.concat_tables([rejects, extra])
    return kept.filter(pa.array(keep)), both.sort_by("row")


def _rejects(
    source: str, batch: _Batch, *, rows: _I64, values: pa.Array, reasons: list[str]
) -> pa.Table:
    malformed = batch.malformed
    table = pa.table(
        {
            "file": pa.array([source] * (len(malformed) + len(rows)), pa.string()),
            "row": pa.concat_arrays(
                [pa.array([m.row for m in malformed], pa.int64()), pa.array(rows, pa.int64())]
            ),
            "field": pa.array([None] * len(malformed) + [EMAIL] * len(rows), pa.string()),
            "value": pa.concat_arrays(
                [pa.array([m.text for m in malformed], pa.string()), values.cast(pa.string())]
            ),
            "reason": pa.array([m.reason for m in malformed] + reasons, pa.string()),
        },
        schema=REJECTS_SCHEMA,
    )
    return table.sort_by("row") if table.num_rows > 1 else table
