"""Batched Parquet parts that several processes may append to the same folder.

The returns server, ``raymail returns import`` and ``reclassify`` can all write events at
once, so a part's name carries the time, the process id and a random tag instead of a
counter (which two writers would both claim). Parts are written to a temporary name,
fsync'd and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from raymail._io import flocked, fsync_path, write_atomic

PART_GLOB = "part-*.parquet"


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write Parquet to ``path`` via a temporary file, fsync'd, then renamed into place."""
    write_atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


class PartWriter:
    """Buffers rows of one schema; ``flush`` writes them as one new part."""

    def __init__(self, folder: Path, schema: pa.Schema) -> None:
        self.folder = folder
        self.schema = schema
        self._rows: list[dict[str, object]] = []
        self._tag = f"{os.getpid()}-{secrets.token_hex(3)}"
        self._count = 0

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, rows: list[dict[str, object]]) -> None:
        self._rows.extend(rows)

    def flush(self) -> pa.Table | None:
        """Write what is buffered (one part); return it, or None when nothing was."""
        if not self._rows:
            return None
        table = pa.Table.from_pylist(self._rows, schema=self.schema)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        name = f"part-{stamp}-{self._tag}-{self._count:06d}.parquet"
        write_table_atomic(table, self.folder / name)
        self._count += 1
        self._rows.clear()
        return table


def read_parts(folder: Path, schema: pa.Schema) -> pl.DataFrame:
    """Every part in ``folder`` as one frame (empty, with the schema, when there are none)."""
    parts = sorted(folder.glob(PART_GLOB))
    if not parts:
        frame = pl.from_arrow(schema.empty_table())
    else:
        frame = pl.from_arrow(pa.concat_tables([pq.read_table(p, schema=schema) for p in parts]))
    assert isinstance(frame, pl.DataFrame)
    return frame


def compact_parts(
    folder: Path, schema: pa.Schema, *, min_parts: int = 32, small_bytes: int = 16 << 20
) -> int:
    """Merge the small parts into one once there are ``min_parts`` of them; return merged.

    A long-running writer adds a part per flush; this keeps the folder at few files. The
    merged part is in place (renamed) before the small ones are deleted, so a reader sees
    every row at any moment (some twice, briefly: readers de-duplicate by id). Writers
    take turns through an flock; parts written meanwhile are left for the next round.
    """
    small = [p for p in sorted(folder.glob(PART_GLOB)) if p.stat().st_size < small_bytes]
    if len(small) < min_parts:
        return 0
    with flocked(folder / ".compact.lock", wait=False) as mine:
        if not mine:
            return 0  # another process is compacting
        small = [p for p in small if p.exists()]
        merged = pa.concat_tables([pq.read_table(p, schema=schema) for p in small])
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        write_table_atomic(merged, folder / f"part-{stamp}-merged-{secrets.token_hex(3)}.parquet")
        for path in small:
            path.unlink(missing_ok=True)
        fsync_path(folder)
        return len(small)
