"""What a portion's sending records: outcome rows, observation rows and journal marks.

Every recipient gets exactly one outcome row: from its own SMTP reply (``_record``) or, when
no reply of its own exists (no MX, a refused or dropped connection), the same outcome for
all of a job's recipients (``_settle``). A journal marks a job in flight before its body is
sent and its fate after (held for the next in-flight write, or the portion's end), so
recovery after a crash knows which rows may have been accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from raymail.delivery.jobs import Job
from raymail.delivery.journal import STATE_OF_STATUS, FenceGuard, Journal, JournalState
from raymail.delivery.mx import MXTarget
from raymail.delivery.records import ObservationBuilder, OutcomeBuilder, from_ipc, now
from raymail.delivery.smtp_client import (
    DROPPED,
    BodyWrite,
    DeferBody,
    Reply,
    SmtpConnection,
    Transaction,
)
from raymail.driver.plan import PortionTask
from raymail.status import ACCEPTED, DEFERRED, FAILED


@dataclass(frozen=True, slots=True)
class PortionResult:
    """What a portion call returns: outcomes (one row per recipient) and observations (one
    row per SMTP transaction), as Arrow IPC bytes (cheap for Ray to move)."""

    task: PortionTask
    server: str
    outcomes_ipc: bytes
    observations_ipc: bytes

    @property
    def outcomes(self) -> pa.Table:
        return from_ipc(self.outcomes_ipc)

    @property
    def observations(self) -> pa.Table:
        return from_ipc(self.observations_ipc)


# A connection lost after the whole body was written: the server may have accepted it.
DROPPED_IN_DATA = Reply(0, "connection dropped after the message was sent (in doubt)")
# A recipient taken by RCPT whose transaction never got to DATA's reply: deferred.
_DATA_NOT_SENT = Reply(451, "4.3.0 DATA not sent")


def status_of(reply: Reply) -> str:
    if reply.klass == 2:
        return ACCEPTED
    return FAILED if reply.klass == 5 else DEFERRED


class OutcomeRecording:
    """The delivery server's recording part (a mixin of :class:`DeliveryServer`)."""

    journal: Journal | None
    fence: FenceGuard | None

    def _in_flight(self, task: PortionTask, job: Job) -> Callable[[], DeferBody] | None:
        """The journal write that must precede the message body (None without a journal):
        the mark is queued and the body's write waits for it (``Journal.mark_then``), so
        the marks of connections woken together share one write."""
        journal = self.journal
        if journal is None:
            return None
        rows = [row for row, _ in job.recipients]

        fence = self.fence

        def defer(write: BodyWrite) -> None:
            journal.mark_then(JournalState.IN_FLIGHT, task.portion, task.attempt, rows, write)

        def mark() -> DeferBody:
            if fence is not None:
                fence.check()  # raising here means the body is never sent
            job.in_flight = True
            return defer

        return mark

    def _journal_fates(self, task: PortionTask, job: Job, statuses: list[str]) -> None:
        journal = self.journal
        if journal is None or not job.in_flight:
            return
        if len(statuses) == 1:  # a personalised message: one recipient, one fate
            state = STATE_OF_STATUS[statuses[0]]
            journal.hold(state, task.portion, task.attempt, (job.recipients[0][0],))
            return
        by_state: dict[JournalState, list[int]] = {}
        for (row, _), status in zip(job.recipients, statuses, strict=True):
            by_state.setdefault(STATE_OF_STATUS[status], []).append(row)
        for state, rows in by_state.items():
            journal.hold(state, task.portion, task.attempt, rows)  # with the next mark

    def _record(
        self, job: Job, tx: Transaction, task: PortionTask, target: MXTarget, out: OutcomeBuilder
    ) -> None:
        """One outcome row per recipient of a transaction (this runs once per message)."""
        mail = tx.mail
        data = tx.data if tx.data is not None else _DATA_NOT_SENT
        finished = now()
        add = out.add
        mx_host, message_id, started = target.mx_host, job.message_id, job.started_at
        statuses = []
        for (row, email), rcpt in zip(job.recipients, tx.rcpts, strict=True):
            reply = mail if mail.klass != 2 else rcpt if rcpt.klass != 2 else data
            status = status_of(reply)
            statuses.append(status)
            add(
                row,
                email,
                status,
                reply.code,
                reply.enhanced,
                reply.text,
                mx_host,
                message_id,
                started,
                finished,
            )
        self._journal_fates(task, job, statuses)

    def _settle(
        self,
        jobs: list[Job],
        task: PortionTask,
        out: OutcomeBuilder,
        status: str,
        reply: Reply | None,
        exc: BaseException | None,
    ) -> None:
        """Give every recipient of ``jobs`` the same outcome (no SMTP reply of its own)."""
        text = reply.text if reply else ""
        if exc is not None:
            text = f"{text}: {exc}" if reply in (DROPPED, DROPPED_IN_DATA) else str(exc)
        for job in jobs:
            for row, email in job.recipients:
                out.add(
                    row=row,
                    email=email,
                    status=status,
                    smtp_code=reply.code if reply else None,
                    enhanced_status=reply.enhanced if reply else None,
                    response=text,
                    mx_host=None,
                    message_id=job.message_id,
                    started_at=job.started_at,
                )
            self._journal_fates(task, job, [status] * len(job.recipients))

    def _observe(
        self,
        obs: ObservationBuilder,
        conn: SmtpConnection,
        target: MXTarget,
        new_connection: bool,
        seconds: float,
        recipients: int,
        response_class: int,
        job: Job,
    ) -> None:
        obs.add(
            target.mx_host,
            conn.timing.connect_s if new_connection else None,
            conn.timing.banner_s if new_connection else None,
            seconds,
            recipients,
            response_class,
            len(job.message),
            conn.tls,
        )
