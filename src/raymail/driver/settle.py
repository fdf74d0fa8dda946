"""Settling a portion's outcomes: what is final, what goes again, and after what delay.

Pure functions over Arrow tables and the run's :class:`Tally`, so the rules (retry limits,
the in-doubt policy, give-ups after internal failures) can be tested without Ray. The
dispatch loop writes the ledger rows they return and queues the next attempts.

One portion attempt becomes at most one next attempt: pull mode knows a lease by
(portion, attempt), so a failed call's retried and untouched rows travel together.

With a retry schedule (the deferral queue) a deferred row is retried until ``retry.max_age``
has passed since its first attempt, then given up as ``expired``. The first-attempt time
travels with the row (the ``FIRST_ATTEMPT`` column of its work, set on retries and by a
resumed run's portion stream); a row without it is on its first attempt, whose start the
outcome gives.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from raymail.delivery.records import OutcomeBuilder, now
from raymail.driver.dispatch import Work
from raymail.driver.plan import PortionTask
from raymail.driver.portions import FIRST_ATTEMPT
from raymail.driver.progress import Tally
from raymail.errors import first_line
from raymail.schema import HOP_STRIDE
from raymail.spec import RetrySettings
from raymail.status import ACCEPTED, DEFERRED, EXPIRED, FAILED, IN_DOUBT

INTERNAL_RETRIES = 2  # re-runs of a portion whose call failed for a reason not SMTP's


@dataclass(frozen=True, slots=True)
class Retry:
    """Rows of a portion to send again as its next attempt, after ``delay_s``."""

    rows: pa.Array  # int64 row numbers; empty when nothing goes again
    delay_s: float = 0.0
    first_at: pa.Array | None = None  # float64 Unix seconds of each row's first attempt
    expired: pa.Table | None = None  # ledger rows of recipients given up by age (not again)

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
    sent: pa.Table | None = None,
    at: float | None = None,
) -> Retry:
    """Count final outcomes into ``tally``; say which rows (deferred and, when in-doubt rows
    are resent, in doubt) go again, and after what backoff.

    ``sent`` is the work's rows (their ``FIRST_ATTEMPT`` times, when retried before); ``at``
    the time of settling (Unix seconds, default now). With a schedule, rows whose first
    attempt is ``retry.max_age`` old are expired instead of retried.
    """
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
    if retry.gives_up(local_attempt(task.attempt)):
        tally.deferred += count(again.column("status"), DEFERRED)
        tally.in_doubt += count(again.column("status"), IN_DOUBT)
        return NO_RETRY
    if not retry.deferral_queue:
        rows = plain(again.column("row"))
        tally.retrying += len(rows)
        return Retry(rows, retry.delay(local_attempt(task.attempt)))
    return _schedule(tally, task, again, retry, sent, time.time() if at is None else at)


def _schedule(
    tally: Tally,
    task: PortionTask,
    again: pa.Table,
    retry: RetrySettings,
    sent: pa.Table | None,
    at: float,
) -> Retry:
    """The deferral queue: expire the rows ``max_age`` old, retry the rest by the schedule
    (never later than the oldest row's deadline, so each gets a last try at its max_age)."""
    first = first_attempts(again, sent)
    deadline = pc.add(first, retry.max_age_s)
    old = pc.less_equal(deadline, at)
    expired = again.filter(old)
    tally.expired += expired.num_rows
    keep = again.filter(pc.invert(old))
    expired_rows = expired_outcomes(expired, retry, at) if expired.num_rows else None
    if not keep.num_rows:
        return Retry(NO_RETRY.rows, expired=expired_rows)
    kept_first = first.filter(pc.invert(old))
    soonest = float(pc.min(pc.add(kept_first, retry.max_age_s)).as_py())
    delay = max(0.0, min(retry.delay(local_attempt(task.attempt)), soonest - at))
    rows = plain(keep.column("row"))
    tally.retrying += len(rows)
    return Retry(rows, delay, kept_first, expired_rows)


def first_attempts(outcomes: pa.Table, sent: pa.Table | None) -> pa.Array:
    """Unix seconds of each outcome row's first attempt: the work's ``FIRST_ATTEMPT`` when
    the row was tried before, else this attempt's start."""
    started = pc.divide(
        pc.cast(pc.cast(outcomes.column("started_at"), pa.timestamp("us", "UTC")), pa.int64()),
        1_000_000.0,
    )
    started = started.combine_chunks() if isinstance(started, pa.ChunkedArray) else started
    if sent is None or FIRST_ATTEMPT not in sent.column_names:
        return started
    where = pc.index_in(outcomes.column("row"), value_set=sent.column("row"))
    known = pc.take(sent.column(FIRST_ATTEMPT), where)
    known = known.combine_chunks() if isinstance(known, pa.ChunkedArray) else known
    return pc.coalesce(known.cast(pa.float64()), started)


def expired_outcomes(deferred: pa.Table, retry: RetrySettings, at: float) -> pa.Table:
    """Ledger rows settling ``deferred`` outcome rows as expired (attempt + 1, its own row,
    so the last reply stays beside it in the ledger)."""
    stamp = pa.scalar(int(at * 1_000_000), pa.timestamp("us", "UTC"))
    n = deferred.num_rows
    note = f"expired: only temporary failures for retry.max_age {retry.max_age}; last: "
    columns = {
        "status": pa.array([EXPIRED] * n, pa.string()),
        "attempt": pc.add(deferred.column("attempt"), 1),
        "response": pc.binary_join_element_wise(
            pa.array([note] * n, pa.string()), pc.fill_null(deferred.column("response"), ""), ""
        ),
        "started_at": pa.array([stamp] * n, stamp.type),
        "finished_at": pa.array([stamp] * n, stamp.type),
    }
    table = deferred
    for name, values in columns.items():
        field = table.schema.field(name)
        table = table.set_column(table.schema.get_field_index(name), field, values.cast(field.type))
    return table


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
        again = settle_outcomes(
            tally, work.task, recovered, retry, resend_doubt=resend_doubt, sent=work.rows
        )
    untouched = pc.filter(
        rows.column("row"),
        pc.invert(pc.is_in(rows.column("row"), value_set=recovered.column("row"))),
    )
    given_up = rows.schema.empty_table()
    if len(untouched) and work.internal_failures > INTERNAL_RETRIES:
        given_up = rows.filter(pc.is_in(rows.column("row"), value_set=untouched))
        tally.failed += given_up.num_rows
    elif len(untouched):  # never touched: at once, together with what goes again
        rows_again = pa.concat_arrays([again.rows, plain(untouched)])
        firsts = _firsts(work.rows, rows_again)
        if again.first_at is not None:  # the deferred rows' own, then the untouched rows'
            known = _firsts(work.rows, plain(untouched))
            rest = known if known is not None else pa.nulls(len(untouched), pa.float64())
            firsts = pa.concat_arrays([again.first_at.cast(pa.float64()), rest.cast(pa.float64())])
        again = Retry(rows_again, 0.0, firsts, again.expired)
    return FailedCall(again, given_up)


def next_attempt(work: Work, rows: pa.Array, first_at: pa.Array | None = None) -> Work:
    """The piece of ``work`` holding ``rows``, as the portion's next attempt; ``first_at``
    (aligned with ``rows``) becomes its ``FIRST_ATTEMPT`` column (deferral queue)."""
    table = work.rows
    again = table.filter(pc.is_in(table.column("row"), value_set=rows))
    if first_at is not None:
        where = pc.index_in(again.column("row"), value_set=rows)
        values = pc.take(first_at, where).cast(pa.float64())
        if FIRST_ATTEMPT in again.column_names:
            index = again.schema.get_field_index(FIRST_ATTEMPT)
            again = again.set_column(index, FIRST_ATTEMPT, values)
        else:
            again = again.append_column(FIRST_ATTEMPT, values)
    task = PortionTask(work.task.portion, work.task.domain, work.task.attempt + 1, again.num_rows)
    return Work(task, again, work.internal_failures, work.avoid)


def _firsts(table: pa.Table, rows: pa.Array) -> pa.Array | None:
    """The known ``FIRST_ATTEMPT`` of ``rows`` (null where never tried), if the work has it."""
    if FIRST_ATTEMPT not in table.column_names:
        return None
    where = pc.index_in(rows, value_set=table.column("row"))
    values = pc.take(table.column(FIRST_ATTEMPT), where)
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def failed_outcomes(
    campaign: str, work: Work, rows: pa.Table, server: str, exc: BaseException
) -> pa.Table:
    """Ledger rows for recipients given up after internal errors (never SMTP's verdict)."""
    task = work.task
    out = OutcomeBuilder(campaign, server, None, task.portion, task.attempt, task.domain)
    started = now()
    reason = f"internal error: {type(exc).__name__}: {first_line(exc)[:200]}"
    for row, email in zip(
        rows.column("row").to_pylist(), rows.column("email").to_pylist(), strict=True
    ):
        out.add_failed(row, email, reason, started)
    return out.table()


def local_attempt(attempt: int) -> int:
    """An attempt's number at its own address: a hop's (issue 14) count from 1 again."""
    return attempt % HOP_STRIDE


def plain(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One int64 array from a column or an array (rows to send again)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values.cast(pa.int64())


def count(statuses: pa.ChunkedArray | pa.Array, status: str) -> int:
    """How many of ``statuses`` equal ``status``."""
    return int(pc.sum(pc.equal(statuses, status)).as_py() or 0)
