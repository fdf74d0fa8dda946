"""Load, validate and normalise a recipient list into one Arrow table, plus its rejects.

:func:`load_recipients` loads a whole list at once (CLI checks, tests); the A server (driver)
streams lists of millions through :mod:`raymail.intake.stream`, which applies these same checks
batch by batch. Either way the common case never touches Python per row: the whole
``email`` column is checked by one RE2 match and a few string kernels, and only the rows
that fail that fast check (bad addresses, non-ASCII domains, stray non-breaking spaces) go through
:func:`check_address`, which finds the specific reason or the IDNA form. Duplicates are found
by hashing the normalised addresses; only rows whose hash collides are compared exactly.

Every input row ends up in exactly one place: the recipient table or the rejects table.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raymail.errors import RecipientError
from raymail.intake.address import ATEXT, MAX_ADDRESS, MAX_LOCAL, check_address
from raymail.intake.staging import Location, locate
from raymail.schema import DOMAIN, EMAIL, REJECTS_SCHEMA, ROW
from raymail.spec import S3Settings

__all__ = ["RecipientLoad", "load_recipients", "write_rejects"]

REJECTS_FILE = "rejects.parquet"
_MAX_REJECT_VALUE = 1000  # a malformed row's text is cut to this many characters
_LABEL = "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# ASCII-only addresses that need nothing but lower-casing of the domain; RE2 syntax. Every
# address it matches (within the length limits) check_address accepts unchanged.
_FAST_RE = rf"^[{ATEXT}]+(?:\.[{ATEXT}]+)*@(?:{_LABEL}\.)+{_LABEL}$"


@dataclass(frozen=True)
class RecipientLoad:
    """A loaded recipient list: the clean table, the rejected rows, and their counts.

    ``table`` has ``row`` (int64, 1-based data row), ``email``, ``domain`` and then every
    other input column as a string merge field. ``rejects`` follows
    :data:`raymail.schema.REJECTS_SCHEMA`; ``field`` is null for a malformed CSV row (the
    whole row is the problem) and ``"email"`` otherwise.
    """

    table: pa.Table
    rejects: pa.Table
    source: str
    rows_read: int  # data rows in the input, malformed ones included
    duplicates: int  # rejected as "duplicate of row N"

    @property
    def accepted(self) -> int:
        return int(self.table.num_rows)

    @property
    def rejected(self) -> int:
        return int(self.rejects.num_rows)


# --- reading -------------------------------------------------------------------------------


class _Malformed(NamedTuple):
    row: int
    text: str
    reason: str


class _Raw(NamedTuple):
    table: pa.Table  # every column a string (or castable to one); names as in the file
    rows: npt.NDArray[np.int64]  # 1-based data row number of each table row
    malformed: list[_Malformed]


def _read_csv(loc: Location, source: str) -> _Raw:
    names = _csv_header(loc, source)
    malformed: list[_Malformed] = []

    def on_invalid(row: Any) -> str:
        if row.number is None:  # only happens with use_threads=True, which we never use
            return "error"
        text = row.text if len(row.text) <= _MAX_REJECT_VALUE else row.text[:_MAX_REJECT_VALUE]
        reason = f"malformed CSV row: expected {row.expected_columns} columns, got "
        malformed.append(_Malformed(row.number - 1, text, reason + str(row.actual_columns)))
        return "skip"

    # One thread: as fast as two on this machine kind, and the only way pyarrow numbers
    # the invalid rows. newlines_in_values: a quoted address field may span lines.
    try:
        with loc.fs.open_input_stream(loc.path) as stream:
            table = pa_csv.read_csv(
                stream,
                read_options=pa_csv.ReadOptions(use_threads=False),
                parse_options=pa_csv.ParseOptions(
                    newlines_in_values=True, invalid_row_handler=on_invalid
                ),
                convert_options=pa_csv.ConvertOptions(
                    column_types={name: pa.string() for name in names},
                    strings_can_be_null=False,
                ),
            )
        table.column_names  # noqa: B018 -- decodes the names: a non-UTF-8 header fails here
    except (pa.ArrowInvalid, OSError, UnicodeDecodeError) as exc:
        message = _first_line(exc)
        if isinstance(exc, UnicodeDecodeError) or "UTF8" in message:
            message += " (the file must be UTF-8)"
        raise RecipientError(f"{source}: cannot read CSV: {message}") from None
    total = table.num_rows + len(malformed)
    rows = np.arange(1, total + 1, dtype=np.int64)
    if malformed:
        keep = np.ones(total, dtype=bool)
        keep[[m.row - 1 for m in malformed]] = False
        rows = rows[keep]
    return _Raw(table, rows, malformed)


def _csv_header(loc: Location, source: str) -> list[str]:
    """The header's column names as pyarrow will see them (BOM dropped, not stripped)."""
    try:
        with (
            loc.fs.open_input_stream(loc.path) as stream,
            io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="") as handle,
        ):
            header = next(csv.reader(handle), None)
    except (OSError, csv.Error) as exc:
        raise RecipientError(f"{source}: cannot read CSV header: {exc}") from None
    if not header:
        raise RecipientError(f"{source}: empty file (no header row)")
    return header


def _read_parquet(loc: Location, source: str) -> _Raw:
    try:
        table = pq.read_table(loc.path, filesystem=loc.fs)
    except (pa.ArrowException, OSError) as exc:
        raise RecipientError(f"{source}: cannot read Parquet: {_first_line(exc)}") from None
    rows = np.arange(1, table.num_rows + 1, dtype=np.int64)
    return _Raw(table, rows, [])


_READERS: dict[str, Callable[[Location, str], _Raw]] = {
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _clean_names(names: list[str], source: str) -> list[str]:
    """Strip column names; refuse empty, duplicate and reserved ones, require ``email``."""
    stripped = [name.strip() for name in names]
    for position, name in enumerate(stripped, start=1):
        if not name:
            raise RecipientError(f"{source}: column {position} has an empty name")
    seen: set[str] = set()
    for name in stripped:
        if name in seen:
            raise RecipientError(f"{source}: column {name!r} appears more than once")
        seen.add(name)
    for reserved in (ROW, DOMAIN):
        if reserved in seen:
            raise RecipientError(
                f"{source}: column {reserved!r} is reserved (raymail adds it); rename it"
            )
    if EMAIL not in seen:
        found = ", ".join(repr(n) for n in stripped) or "none"
        hint = [n for n in stripped if n.lower() == EMAIL]
        extra = f" (names are case-sensitive: found {hint[0]!r})" if hint else ""
        raise RecipientError(f"{source}: no 'email' column{extra}; columns found: {found}")
    return stripped


def _as_string(column: pa.ChunkedArray, name: str, source: str) -> pa.ChunkedArray:
    if column.type != pa.string():
        try:
            column = pc.cast(column, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise RecipientError(
                f"{source}: column {name!r} of type {column.type} cannot be a text field: "
                f"{_first_line(exc)}"
            ) from None
    return column


# --- validation ----------------------------------------------------------------------------


class _Validated(NamedTuple):
    ok: npt.NDArray[np.bool_]
    email: pa.Array  # normalised where ok; anything elsewhere
    domain: pa.Array
    bad_index: list[int]
    bad_reason: list[str]


def _validate(raw: pa.Array) -> _Validated:
    """Vectorised fast check, then :func:`check_address` for the rows that fail it."""
    trimmed = pc.utf8_trim_whitespace(raw)
    fast = pc.and_(
        pc.match_substring_regex(trimmed, _FAST_RE),
        pc.and_(
            pc.less_equal(pc.binary_length(trimmed), MAX_ADDRESS),
            pc.less_equal(pc.find_substring(trimmed, "@"), MAX_LOCAL),
        ),
    )
    ok = pc.fill_null(fast, False).to_numpy(zero_copy_only=False)
    # Rows that failed get a placeholder so the split below always yields two parts.
    safe = pc.if_else(pa.array(ok), trimmed, pa.scalar("x@x", pa.string()))
    parts = pc.split_pattern(safe, "@", max_splits=1)
    domain = pc.ascii_lower(pc.list_element(parts, 1))
    email = pc.binary_join_element_wise(pc.list_element(parts, 0), domain, "@")

    slow = np.flatnonzero(~ok)
    if len(slow) == 0:
        return _Validated(ok, email, domain, [], [])
    ok = ok.copy()
    fixed_index: list[int] = []
    fixed_email: list[str] = []
    fixed_domain: list[str] = []
    bad_index: list[int] = []
    bad_reason: list[str] = []
    for index, value in zip(slow.tolist(), raw.take(slow).to_pylist(), strict=True):
        result = check_address(value)
        if result.reason is None:
            fixed_index.append(index)
            fixed_email.append(result.email or "")
            fixed_domain.append(result.domain or "")
        else:
            bad_index.append(index)
            bad_reason.append(result.reason)
    if fixed_index:
        mask = np.zeros(len(ok), dtype=bool)
        mask[fixed_index] = True
        ok[fixed_index] = True
        email = pc.replace_with_mask(email, pa.array(mask), pa.array(fixed_email, pa.string()))
        domain = pc.replace_with_mask(domain, pa.array(mask), pa.array(fixed_domain, pa.string()))
    return _Validated(ok, email, domain, bad_index, bad_reason)


def _duplicates(keys: pa.Array) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Positions of repeated keys and the position of each one's first occurrence.

    Hashing and sorting 64-bit hashes is about ten times faster than hashing the strings
    into a dictionary; equal hashes are then compared exactly, so a collision never drops
    a recipient.
    """
    hashes = pl.Series(keys).hash(seed=0).to_numpy()
    empty = np.empty(0, dtype=np.int64)
    ordered = np.sort(hashes)  # a plain sort is 5x faster than argsort: check first
    if not (ordered[1:] == ordered[:-1]).any():
        return empty, empty
    order = np.argsort(hashes, kind="stable")
    ordered = hashes[order]
    same = ordered[1:] == ordered[:-1]
    shared = np.zeros(len(ordered), dtype=bool)
    shared[1:] |= same
    shared[:-1] |= same
    candidates = np.sort(order[shared])
    first_seen: dict[str, int] = {}
    dup_pos: list[int] = []
    first_pos: list[int] = []
    for position, key in zip(candidates.tolist(), keys.take(candidates).to_pylist(), strict=True):
        first = first_seen.setdefault(key, position)
        if first != position:
            dup_pos.append(position)
            first_pos.append(first)
    return np.array(dup_pos, dtype=np.int64), np.array(first_pos, dtype=np.int64)


# --- public entry points -------------------------------------------------------------------


def load_recipients(path: str | Path, s3: S3Settings | None = None) -> RecipientLoad:
    """Read a .csv or .parquet recipient list (a path or an s3:// URL); split it into clean
    rows and rejects. ``s3`` configures the object store (default: the environment).

    Raises :class:`RecipientError` only when the file as a whole is unusable (missing,
    unreadable, unknown extension, no ``email`` column, bad column names); every problem
    with a single row becomes a reject with its row number and reason.
    """
    source = str(path)
    try:
        loc = locate(path, s3)
        kind = loc.info().type
    except (OSError, pa.ArrowException) as exc:  # object store unreachable, access denied
        raise RecipientError(f"{source}: cannot open: {_first_line(exc)}") from None
    reader = _READERS.get(loc.suffix)
    if reader is None:
        known = ", ".join(_READERS)
        raise RecipientError(f"{source}: unknown file type {loc.suffix!r} (expected {known})")
    if kind == pafs.FileType.NotFound:
        raise RecipientError(f"{source}: file not found")
    if kind == pafs.FileType.Directory and reader is _read_csv:
        raise RecipientError(f"{source}: is a directory, not a CSV file")
    raw = reader(loc, source)
    names = _clean_names(raw.table.column_names, source)
    table = raw.table.rename_columns(names)

    raw_email = _as_string(table.column(EMAIL), EMAIL, source).combine_chunks()
    checked = _validate(raw_email)
    ok_pos = np.flatnonzero(checked.ok)
    all_ok = len(ok_pos) == len(raw_email)
    keys = pc.ascii_lower(checked.email if all_ok else checked.email.take(ok_pos))
    dup_in_ok, first_in_ok = _duplicates(keys)
    dup_pos, first_pos = ok_pos[dup_in_ok], ok_pos[first_in_ok]
    keep = checked.ok.copy()
    keep[dup_pos] = False

    rejects = _rejects(source, raw, raw_email, checked, dup_pos, first_pos)
    keep_mask = None if keep.all() else pa.array(keep)

    def kept(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
        return column if keep_mask is None else pc.filter(column, keep_mask)

    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        ROW: pa.array(raw.rows[keep], pa.int64()),
        EMAIL: kept(checked.email),
        DOMAIN: kept(checked.domain),
    }
    for name in names:
        if name != EMAIL:
            column = _as_string(table.column(name), name, source)
            if column.null_count:
                column = pc.fill_null(column, "")
            columns[name] = kept(column)
    return RecipientLoad(
        table=pa.table(columns),
        rejects=rejects,
        source=source,
        rows_read=len(raw.rows) + len(raw.malformed),
        duplicates=len(dup_pos),
    )


def _rejects(
    source: str,
    raw: _Raw,
    raw_email: pa.Array,
    checked: _Validated,
    dup_pos: npt.NDArray[np.int64],
    first_pos: npt.NDArray[np.int64],
) -> pa.Table:
    rows: list[int] = [m.row for m in raw.malformed]
    fields: list[str | None] = [None] * len(raw.malformed)
    values: list[str | None] = [m.text for m in raw.malformed]
    reasons: list[str] = [m.reason for m in raw.malformed]

    bad = np.array(checked.bad_index, dtype=np.int64)
    rows += raw.rows[bad].tolist()
    values += raw_email.take(bad).to_pylist()
    reasons += checked.bad_reason

    rows += raw.rows[dup_pos].tolist()
    values += raw_email.take(dup_pos).to_pylist()
    reasons += [f"duplicate of row {first}" for first in raw.rows[first_pos].tolist()]

    fields += [EMAIL] * (len(rows) - len(fields))
    table = pa.table(
        {
            "file": pa.array([source] * len(rows), pa.string()),
            "row": pa.array(rows, pa.int64()),
            "field": pa.array(fields, pa.string()),
            "value": pa.array(values, pa.string()),
            "reason": pa.array(reasons, pa.string()),
        },
        schema=REJECTS_SCHEMA,
    )
    return table.sort_by("row") if table.num_rows > 1 else table


def write_rejects(rejects: pa.Table, run_dir: Path) -> Path:
    """Write ``rejects.parquet`` into an existing run directory, atomically (temp + rename).

    A reader never sees a half-written file, and a rerun simply replaces it.
    """
    target = Path(run_dir) / REJECTS_FILE
    temporary = target.with_name(f".{REJECTS_FILE}.{os.getpid()}.tmp")
    pq.write_table(rejects.cast(REJECTS_SCHEMA), temporary)
    os.replace(temporary, target)
    return target
