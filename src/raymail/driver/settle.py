"""Settling a portion's outcomes: what is final, what goes again, and after what delay.

Pure functions over Arrow tables and the run's :class:`Tally`, so the rules (retry limits,
the in-doubt policy, give-ups after internal failures) can be tested without Ray. The
dispatch loop writes the ledger rows they return and queues the next attempts.

One portion attempt becomes at most one next attempt: pull mode knows a lease by
(portion, attempt), so a failed call's retried and untouched rows travel together.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from raymail.delivery.records import OutcomeBuilder, now
from raymail.driver.dispatch import Work
from raymail.driver.plan import PortionTask
from raymail.driver.progress import Tally
from raymail.spec import RetrySettings
from raymail.status import ACCEPTED, DEFERRED, FAILED, IN_DOUBT

INTERNAL_RETRIES = 2  # re-runs of a portion whose call failed for a reason not SMTP's


@dataclass(frozen=True, slots=True)
class Retry:
    """Rows of a portion to send again as its next attempt, after ``delay_s``."""

    rows: pa.Array  # int64 row numbers; empty when nothing goes again
    delay_s: float = 0.0

    def __bool__(self) -> bool:
        return len(self.rows) > 0


NO_RETRY = Retry(pa.array([], pa.int64()))


@dataclass(frozen=True, slots=True)
class FailedCall:
    """How a portion whose call died is settled."""

    retry: Retry  # deferred rows (after backoff) and untouched rows (at once)
    given_up: pa.Table  # rows no attempt touched and that failed too often: now failed


def settle_outcomes(
    tally: Tally,
    task: PortionTask,
    outcomes: pa.Table,
    retry: RetrySettings,
    *,
    resend_doubt: bool,
) -> Retry:
    """Count final outcomes into ``tally``; say which rows (deferred and, when in-doubt rows
    are resent, in doubt) go again, and after what backoff."""
    statuses = outcomes.column("status")
    if task.attempt > 1:
        tally.retrying = max(tally.retrying - outcomes.num_rows, 0)
    tally.accepted += count(statuses, ACCEPTED)
    tally.failed += count(statuses, FAILED)
    if not resend_doubt:
        tally.in_doubt += count(statuses, IN_DOUBT)
    again_statuses = [DEFERRED, IN_DOUBT] if resend_doubt else [DEFERRED]
    again = outcomes.filter(pc.is_in(statuses, value_set=pa.array(again_statuses)))
    if not again.num_rows:
        return NO_RETRY
    if task.attempt >= retry.max_attempts:
        tally.deferred += count(again.column("status"), DEFERRED)
        tally.in_doubt += count(again.column("status"), IN_DOUBT)
        return NO_RETRY
    rows = plain(again.column("row"))
    tally.retrying += len(rows)
    return Retry(rows, retry.delay(task.attempt))


def settle_failed_call(
    tally: Tally,
    work: Work,
    recovered: pa.Table,
    retry: RetrySettings,
    *,
    resend_doubt: bool,
) -> FailedCall:
    """Settle a portion whose call died, from what its server's journal said (``recovered``).

    What the server had accepted is final; what it had in flight is in doubt; rows it never
    touched go again at once, unless the portion failed more than ``INTERNAL_RETRIES``
    times for reasons not SMTP's: then they are failed (returned in ``given_up``).
    """
    rows = work.rows
    again = NO_RETRY
    if recovered.num_rows:
        again = settle_outcomes(tally, work.task, recovered, retry, resend_doubt=resend_doubt)
    untouched = pc.filter(
        rows.column("row"),
        pc.invert(pc.is_in(rows.column("row"), value_set=recovered.column("row"))),
    )
    given_up = rows.schema.empty_table()
    if len(untouched) and work.internal_failures > INTERNAL_RETRIES:
        given_up = rows.filter(pc.is_in(rows.column("row"), value_set=untouched))
        tally.failed += given_up.num_rows
    elif len(untouched):  # never touched: at once, together with what goes again
        again = Retry(pa.concat_arrays([again.rows, plain(untouched)]), 0.0)
    return FailedCall(again, given_up)


def next_attempt(work: Work, rows: pa.Array) -> Work:
    """The piece of ``work`` holding ``rows``, as the portion's next attempt."""
    table = work.rows
    again = table.filter(pc.is_in(table.column("row"), value_set=rows))
    task = PortionTask(work.task.portion, work.task.domain, work.task.attempt + 1, again.num_rows)
    return Work(task, again, work.internal_failures)


def failed_outcomes(
    campaign: str, work: Work, rows: pa.Table, server: str, exc: BaseException
) -> pa.Table:
    """Ledger rows for recipients given up after internal errors (never SMTP's verdict)."""
    task = work.task
    out = OutcomeBuilder(campaign, server, None, task.portion, task.attempt, task.domain)
    started = now()
    reason = f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    for row, email in zip(
        rows.column("row").to_pylist(), rows.column("email").to_pylist(), strict=True
    ):
        out.add_failed(row, email, reason, started)
    return out.table()


def plain(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One int64 array from a column or an array (rows to send again)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values.cast(pa.int64())


def count(statuses: pa.ChunkedArray | pa.Array, status: str) -> int:
    """How many of ``statuses`` equal ``status``."""
    return int(pc.sum(pc.equal(statuses, status)).as_py() or 0)
