"""The ledger: every recipient attempt's outcome, batched into few Parquet files.

Actors return Arrow batches per portion; the driver buffers them and writes one Parquet
part per checkpoint interval (not one file per message or per portion), atomically, so a
killed driver loses at most the interval's buffer and never leaves half a file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from raymail.rundir import OBSERVATIONS, OUTCOMES
from raymail.schema import OBSERVATION_SCHEMA, OUTCOME_SCHEMA


class _PartWriter:
    """Buffers Arrow tables of one schema and writes them as numbered Parquet parts."""

    def __init__(self, folder: Path, schema: pa.Schema) -> None:
        self.folder = folder
        self.schema = schema
        folder.mkdir(parents=True, exist_ok=True)
        self._buffer: list[pa.Table] = []
        self._rows = 0
        existing = [int(p.stem.split("-")[1]) for p in folder.glob("part-*.parquet")]
        self._next = max(existing, default=-1) + 1

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
        path = self.folder / f"part-{self._next:06d}.parquet"
        tmp = self.folder / f".part-{self._next:06d}.parquet.tmp"
        pq.write_table(table, tmp, compression="zstd")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        self._next += 1
        self._buffer.clear()
        self._rows = 0
        return path


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


def read_outcomes(run_dir: str | Path) -> pl.DataFrame:
    """Every attempt row of a run (empty frame with the schema when there are none)."""
    return _read_parts(Path(run_dir) / OUTCOMES, OUTCOME_SCHEMA)


def read_observations(run_dir: str | Path) -> pl.DataFrame:
    """Every SMTP transaction observation of a run."""
    return _read_parts(Path(run_dir) / OBSERVATIONS, OBSERVATION_SCHEMA)


def _read_parts(folder: Path, schema: pa.Schema) -> pl.DataFrame:
    parts = sorted(folder.glob("part-*.parquet"))
    if not parts:
        return pl.from_arrow(schema.empty_table())  # type: ignore[return-value]
    return pl.read_parquet(parts)


def final_outcomes(outcomes: pl.DataFrame) -> pl.DataFrame:
    """One row per recipient: its latest attempt decides."""
    return outcomes.sort(["row", "attempt", "finished_at"]).unique(
        subset=["row"], keep="last", maintain_order=True
    )
