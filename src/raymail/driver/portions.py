"""Portions planned as the validated list is read, so the driver never holds the whole list.

The driver asks for more portions only when its queue runs low (back-pressure), and each
ask reads one batch of ``recipients.parquet``. A portion is rows of one domain; a batch holds
only a slice of each domain, so the rows of a domain that do not fill a portion are carried
over to the next batch (at most ``carry_limit`` rows: past that the partial portions go
out as they are, so many tiny domains cannot make the carry grow with the list).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raymail.driver.plan import PortionTask
from raymail.intake.recipients import BATCH_ROWS
from raymail.schema import DOMAIN, ROW

__all__ = ["FIRST_ATTEMPT", "PREV_ATTEMPT", "PortionStream"]

PREV_ATTEMPT = "prev_attempt"  # attempts a row already had (resume); dropped before sending
# Unix seconds of a row's first attempt (deferral queue: max_age counts from it); null when
# never tried. Travels with a retried row's work; delivery servers ignore it.
FIRST_ATTEMPT = "_raymail_first_attempt_at"
_DUE = "_raymail_due_at"  # when a resumed row may be tried again (Unix s); 0: at once
_I64 = npt.NDArray[np.int64]


def _member(sorted_values: _I64, rows: _I64) -> npt.NDArray[np.bool_]:
    """Which ``rows`` are in ``sorted_values`` (binary search: no hash set per call)."""
    if not len(sorted_values):
        return np.zeros(len(rows), dtype=bool)
    at = np.searchsorted(sorted_values, rows).clip(max=len(sorted_values) - 1)
    return np.asarray(sorted_values[at] == rows)


class PortionStream:
    """Reads ``path`` in batches and cuts them into portions of one domain each.

    ``skip`` (sorted row numbers) are left out: rows already settled, or suppressed.
    ``prev_rows``/``prev_attempts`` (sorted by row) give rows that were tried before their
    attempt count, so a resumed portion continues the attempt numbering. With a deferral
    queue, ``prev_first`` (Unix seconds of each such row's first attempt) becomes the rows'
    ``FIRST_ATTEMPT`` column, and ``prev_due`` (when each may be tried again) the portion's
    entry in :attr:`not_before` (the latest of its rows: none is tried before its time).
    """

    def __init__(
        self,
        path: Path,
        portion_size: int,
        *,
        first_id: int = 0,
        batch_rows: int = BATCH_ROWS,
        carry_limit: int | None = None,
        skip: _I64 | None = None,
        prev_rows: _I64 | None = None,
        prev_attempts: _I64 | None = None,
        prev_first: npt.NDArray[np.float64] | None = None,
        prev_due: npt.NDArray[np.float64] | None = None,
    ) -> None:
        self.portion_size = portion_size
        self.next_id = first_id
        self.carry_limit = carry_limit if carry_limit is not None else 2 * batch_rows
        self._skip = skip if skip is not None else np.empty(0, dtype=np.int64)
        self._prev_rows = prev_rows if prev_rows is not None else np.empty(0, dtype=np.int64)
        self._prev_attempts = (
            prev_attempts if prev_attempts is not None else np.empty(0, dtype=np.int64)
        )
        self._prev_first = prev_first
        self._prev_due = prev_due
        self.not_before: dict[int, float] = {}  # portion id -> Unix s before which it waits
        self._batches: Iterator[pa.RecordBatch] = pq.ParquetFile(path).iter_batches(
            batch_size=batch_rows
        )
        self._carry: pa.Table | None = None
        self.exhausted = False
        self.batches = 0  # batches read so far
        self.portions = 0  # portions handed out so far
        self.rows = 0  # rows handed out so far

    def next_portions(self) -> list[tuple[PortionTask, pa.Table]]:
        """Portions from the next batch (empty only when the list is exhausted)."""
        while not self.exhausted:
            try:
                batch = next(self._batches)
            except StopIteration:
                self.exhausted = True
                return self._plan(None, final=True)
            self.batches += 1
            portions = self._plan(self._prepare(pa.Table.from_batches([batch])), final=False)
            if portions:
                return portions
        return []

    def _prepare(self, table: pa.Table) -> pa.Table:
        rows = table.column(ROW).to_numpy()
        keep = ~_member(self._skip, rows)
        if not keep.all():
            table = table.filter(pa.array(keep))
            rows = rows[keep]
        attempts = np.zeros(len(rows), dtype=np.int64)
        known = np.zeros(len(rows), dtype=bool)
        where = np.zeros(0, dtype=np.int64)
        if len(self._prev_rows):
            known = _member(self._prev_rows, rows)
            where = np.searchsorted(self._prev_rows, rows[known])
            attempts[known] = self._prev_attempts[where]
        table = table.append_column(PREV_ATTEMPT, pa.array(attempts, pa.int64()))
        if self._prev_first is not None and self._prev_due is not None:
            first = np.full(len(rows), np.nan)
            due = np.zeros(len(rows))
            first[known] = self._prev_first[where]
            due[known] = self._prev_due[where]
            table = table.append_column(
                FIRST_ATTEMPT, pa.array(first, pa.float64(), mask=np.isnan(first))
            ).append_column(_DUE, pa.array(due, pa.float64()))
        return table

    def _plan(self, table: pa.Table | None, *, final: bool) -> list[tuple[PortionTask, pa.Table]]:
        parts = [t for t in (self._carry, table) if t is not None and t.num_rows]
        self._carry = None
        if not parts:
            return []
        ordered = (
            pa.concat_tables(parts)
            .sort_by([(DOMAIN, "ascending"), (ROW, "ascending")])
            .combine_chunks()
        )
        out: list[tuple[PortionTask, pa.Table]] = []
        rests: list[tuple[str, pa.Table]] = []
        offset = 0
        size = self.portion_size
        for item in pc.value_counts(ordered.column(DOMAIN)).to_pylist():
            domain, count = str(item["values"]), int(item["counts"])
            full, rest = divmod(count, size)
            for _ in range(full):
                out.append(self._portion(domain, ordered.slice(offset, size)))
                offset += size
            if rest:
                rests.append((domain, ordered.slice(offset, rest)))
                offset += rest
        carried = sum(t.num_rows for _, t in rests)
        if final or carried > self.carry_limit:
            out.extend(self._portion(domain, rows) for domain, rows in rests)
        elif rests:
            self._carry = pa.concat_tables([t for _, t in rests])
        return out

    def new_id(self) -> int:
        """A portion id nothing else in this run has (for pieces cut off a portion)."""
        self.next_id += 1
        self.portions += 1
        return self.next_id - 1

    def _portion(self, domain: str, rows: pa.Table) -> tuple[PortionTask, pa.Table]:
        attempt = int(pc.max(rows.column(PREV_ATTEMPT)).as_py() or 0) + 1
        task = PortionTask(self.new_id(), domain, attempt, rows.num_rows)
        self.rows += rows.num_rows
        if _DUE in rows.column_names:
            due = float(pc.max(rows.column(_DUE)).as_py() or 0.0)
            if due > 0:
                self.not_before[task.portion] = due
            rows = rows.drop([_DUE])
        return task, rows.drop([PREV_ATTEMPT])
