"""The ledger: every recipient attempt's outcome, batched into few Parquet files.

Actors return Arrow batches per portion; the driver buffers them and writes one Parquet
part per checkpoint interval (not one file per message or per portion), atomically, so a
killed driver loses at most the interval's buffer and never leaves half a file.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from raymail._io import write_atomic
from raymail.run.rundir import OBSERVATIONS, OUTCOMES
from raymail.schema import OBSERVATION_SCHEMA, OUTCOME_SCHEMA

COMPACT_PARTS = 16  # small parts merged into one, so a long run keeps few files


class _PartWriter:
    """Buffers Arrow tables of one schema and writes them as numbered Parquet parts.

    Every COMPACT_PARTS small parts are merged into one ``part-FIRST-LAST.parquet``: a run
    of a million recipients writes a part every checkpoint interval, and without merging
    would leave hundreds of files. The merged file is complete (renamed into place) before
    the parts it covers are removed, and readers skip parts a merged file covers, so a
    crash in between neither loses nor doubles a row.
    """

    def __init__(self, folder: Path, schema: pa.Schema) -> None:
        self.folder = folder
        self.schema = schema
        folder.mkdir(parents=True, exist_ok=True)
        self._buffer: list[pa.Table] = []
        self._rows = 0
        spans = [_span(p) for p in folder.glob("part-*.parquet")]
        self._next = max((span[1] for span in spans if span), default=-1) + 1

    @property
    def buffered_rows(self) -> int:
        return self._rows

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self._buffer.append(table)
            self._rows += table.num_rows

    def flush(self) -> Path | None:
        if not self._buffer:
            return None
        table = pa.concat_tables(self._buffer).cast(self.schema)
        path = self._write(table, f"{self._next:06d}")
        self._next += 1
        self._buffer.clear()
        self._rows = 0
        self._compact()
        return path

    def _write(self, table: pa.Table, name: str) -> Path:
        path = self.folder / f"part-{name}.parquet"
        write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
        return path

    def _compact(self) -> None:
        small = [p for p in ledger_parts(self.folder) if (s := _span(p)) and s[0] == s[1]]
        if len(small) < COMPACT_PARTS:
            return
        first, last = _span(small[0]), _span(small[-1])
        assert first is not None and last is not None
        merged = pa.concat_tables([pq.read_table(p) for p in small]).cast(self.schema)
        self._write(merged, f"{first[0]:06d}-{last[1]:06d}")
        for part in small:
            part.unlink(missing_ok=True)


class Ledger:
    """Outcomes and observations of one run, flushed at a bounded interval."""

    def __init__(self, run_dir: Path, flush_interval_s: float = 2.0) -> None:
        self.outcomes = _PartWriter(run_dir / OUTCOMES, OUTCOME_SCHEMA)
        self.observations = _PartWriter(run_dir / OBSERVATIONS, OBSERVATION_SCHEMA)
        self.flush_interval_s = flush_interval_s
        self._last_flush = time.monotonic()

    def add(self, outcomes: pa.Table, observations: pa.Table) -> None:
        self.outcomes.add(outcomes)
        self.observations.add(observations)

    def due(self) -> bool:
        return time.monotonic() - self._last_flush >= self.flush_interval_s

    def flush(self) -> None:
        """Persist what is buffered (outcomes first: they are the truth)."""
        self.outcomes.flush()
        self.observations.flush()
        self._last_flush = time.monotonic()


def _span(path: Path) -> tuple[int, int] | None:
    """(first, last) part number a file holds: ``part-N`` or a merged ``part-N-M``."""
    pieces = path.name.removesuffix(".parquet").split("-")[1:]
    if not 1 <= len(pieces) <= 2 or not all(p.isdigit() for p in pieces):
        return None
    return int(pieces[0]), int(pieces[-1])


def ledger_parts(folder: Path) -> list[Path]:
    """The part files to read, in order; parts a merged file covers are left out."""
    spans = [(span, p) for p in folder.glob("part-*.parquet") if (span := _span(p))]
    merged = [span for span, _ in spans if span[0] < span[1]]

    def covered(span: tuple[int, int]) -> bool:
        return any(m != span and m[0] <= span[0] and span[1] <= m[1] for m in merged)

    return [p for span, p in sorted(spans) if not covered(span)]


def read_outcomes(run_dir: str | Path, columns: list[str] | None = None) -> pl.DataFrame:
    """Every attempt row of a run (empty frame with the schema when there are none).

    ``columns`` reads only those: a million-row ledger costs a fraction of the memory.
    """
    return _read_parts(Path(run_dir) / OUTCOMES, OUTCOME_SCHEMA, columns)


def read_observations(run_dir: str | Path) -> pl.DataFrame:
    """Every SMTP transaction observation of a run."""
    return _read_parts(Path(run_dir) / OBSERVATIONS, OBSERVATION_SCHEMA)


def scan_outcomes(run_dir: str | Path) -> pl.LazyFrame:
    """The ledger as a lazy frame: queries read only the columns and rows they need."""
    parts = ledger_parts(Path(run_dir) / OUTCOMES)
    if not parts:
        return pl.from_arrow(OUTCOME_SCHEMA.empty_table()).lazy()  # type: ignore[union-attr]
    return pl.scan_parquet(parts)


def _read_parts(folder: Path, schema: pa.Schema, columns: list[str] | None = None) -> pl.DataFrame:
    def read() -> pl.DataFrame:
        parts = ledger_parts(folder)
        if not parts:
            empty = schema.empty_table()
            return pl.from_arrow(empty.select(columns) if columns else empty)  # type: ignore[return-value]
        return pl.read_parquet(parts, columns=columns)

    return retry_merged(read)


_T = TypeVar("_T")
_READ_TRIES = 5


def retry_merged(read: Callable[[], _T]) -> _T:
    """``read()`` again when a part vanished under it.

    A reader in another process (``raymail status`` during a run) may list parts just before
    the driver merges them; the merged file holds the same rows, so listing again is right.
    """
    for attempt in range(_READ_TRIES):
        try:
            return read()
        except FileNotFoundError:
            if attempt == _READ_TRIES - 1:
                raise
    raise AssertionError("unreachable")


_Frame = TypeVar("_Frame", pl.DataFrame, pl.LazyFrame)


def final_outcomes(outcomes: _Frame) -> _Frame:
    """One row per recipient: its latest attempt decides."""
    return outcomes.sort(["row", "attempt", "finished_at"]).unique(
        subset=["row"], keep="last", maintain_order=True
    )
