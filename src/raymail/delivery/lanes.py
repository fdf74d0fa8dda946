"""Sending a portion over lanes: connections that share the portion's job queue.

A portion starts on one connection and spreads over more while jobs wait, the pool has a
free slot and the MX is under its per-server cap (``_spread``): with a slow receiver, more
connections, not more portions, set the pace. Each job is taken off the shared queue by
exactly one lane; jobs a lane could not send go back to the front for another. A dropped
connection is reconnected (bounded per portion); a refused one under shaping waits for a
permit under the MX's lowered limit (bounded) before the portion is deferred.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

from raymail.delivery.admission import PriorityGate
from raymail.delivery.jobs import Job
from raymail.delivery.journal import Fenced, FenceGuard
from raymail.delivery.metrics import DeliveryMetrics
from raymail.delivery.mx import MXTarget
from raymail.delivery.outcomes import DROPPED_IN_DATA, OutcomeRecording, status_of
from raymail.delivery.pool import ConnectionPool
from raymail.delivery.records import ObservationBuilder, OutcomeBuilder
from raymail.delivery.smtp_client import (
    DROPPED,
    ConnectionDropped,
    SmtpConnection,
    SmtpRefused,
    Transaction,
)
from raymail.driver.plan import PortionTask
from raymail.errors import SmtpProtocolError
from raymail.shaping.limiter import LocalShaper
from raymail.spec import CampaignSpec
from raymail.status import DEFERRED, FAILED, IN_DOUBT

_MAX_RECONNECTS = 3
_MAX_REFUSALS = 20  # refused connections a shaped portion waits out before deferring
_SLOW_BASELINE = 4  # transactions on a connection before a slow reply counts as a tarpit


@dataclass(slots=True)
class Portion:
    """A portion being sent: its job queue, shared by the lanes (connections) sending it."""

    task: PortionTask
    targets: list[MXTarget]
    out: OutcomeBuilder
    obs: ObservationBuilder
    pending: deque[Job]
    lanes: int = 0  # lanes started and not ended
    connected: int = 0  # lanes holding a connection now
    reconnects: int = 0  # dropped connections, all lanes together
    refusals: int = 0  # connections refused (shaped: tried again within the new limit)
    lanes_running: set[asyncio.Task[None]] = field(default_factory=set)


class LaneSending(OutcomeRecording):
    """The delivery server's sending part (a mixin of :class:`DeliveryServer`)."""

    spec: CampaignSpec
    gate: PriorityGate | None
    priority: int
    fence: FenceGuard | None
    metrics: DeliveryMetrics
    _pool: ConnectionPool | None
    _shaper: LocalShaper | None
    _mx_lanes: dict[tuple[str, int], int]
    _per_mx_cap: int
    _progress_at: float

    async def _send(
        self,
        jobs: list[Job],
        task: PortionTask,
        targets: list[MXTarget],
        pool: ConnectionPool,
        out: OutcomeBuilder,
        obs: ObservationBuilder,
    ) -> None:
        """Send the portion's jobs over one connection, and over more while the receiver is
        slow and the pool has free slots (see ``_spread``): with 1 s per message, a portion
        of 100 then takes seconds, not 100 s. The jobs form one queue that every lane takes
        from, so each job is sent by exactly one connection."""
        portion = Portion(task, targets, out, obs, deque(jobs))
        self._add_lane(portion, pool)
        try:
            while portion.lanes_running:
                done, _ = await asyncio.wait(
                    portion.lanes_running, return_when=asyncio.FIRST_EXCEPTION
                )
                for lane in done:
                    portion.lanes_running.discard(lane)
                    lane.result()  # re-raises a lane's exception (Fenced, a bug)
        finally:
            for lane in portion.lanes_running:
                lane.cancel()
            if portion.lanes_running:
                await asyncio.gather(*portion.lanes_running, return_exceptions=True)
        if portion.pending:  # every lane ended without them (cannot happen; never lost)
            self._settle(list(portion.pending), task, out, DEFERRED, DROPPED, None)

    def _add_lane(self, portion: Portion, pool: ConnectionPool) -> None:
        portion.lanes += 1
        lane = asyncio.get_running_loop().create_task(self._lane(portion, pool))
        portion.lanes_running.add(lane)

    def _spread(self, portion: Portion, pool: ConnectionPool, target: MXTarget) -> None:
        """Open one more lane (connection) for this portion while jobs wait, none of its
        lanes waits for a connection already, the MX is under its per-server cap (and its
        shaping limit) and the pool has a slot nobody waits for: connections, not
        portions, set the pace with a slow receiver. With a fast one the pool is busy and
        nothing spreads. One lane at a time (the new one spreads again once connected): a
        burst would hand one portion every free slot while the others queue for the pool."""
        if not portion.pending or portion.lanes > portion.connected:
            return
        room = min(
            1,
            self._per_mx_cap - self._mx_lanes.get((target.address, target.port), 0),
            pool.spare(target.address, target.port, target.mx_host),
        )
        gate = self.gate
        if gate is not None:
            if self._urgent_waits():
                return  # a shared server's slots go to the most urgent campaign first
            room = min(room, gate.slots - gate.busy)
        if room > 0:
            self._add_lane(portion, pool)

    async def _lane(self, portion: Portion, pool: ConnectionPool) -> None:
        """One connection's share of a portion: take jobs until none is left; reconnect
        after a drop (bounded per portion)."""
        task, out, pending = portion.task, portion.out, portion.pending
        try:
            while pending:
                if self.gate is not None:
                    await self.gate.acquire(self.priority)
                try:
                    try:
                        conn, fresh, target = await self._connect(portion.targets, pool)
                    except SmtpProtocolError as exc:
                        if portion.connected or not pending:
                            return  # other lanes of this portion carry on with the jobs
                        if self._shaper is not None and portion.refusals < _MAX_REFUSALS:
                            portion.refusals += 1  # the MX's limit fell: wait for a permit
                            continue
                        reply = exc.reply if isinstance(exc, SmtpRefused) else None
                        status = status_of(reply) if reply else DEFERRED
                        jobs = list(pending)
                        pending.clear()
                        self._settle(jobs, task, out, status, reply, exc)
                        return
                    key = (target.address, target.port)
                    portion.connected += 1
                    self._mx_lanes[key] = self._mx_lanes.get(key, 0) + 1
                    try:
                        dropped = await self._run_jobs(conn, fresh, target, portion, pool)
                    except BaseException:
                        conn.broken = True  # left mid-transaction (Fenced, cancelled)
                        raise
                    finally:
                        portion.connected -= 1
                        self._mx_lanes[key] -= 1
                        await pool.release(conn)
                finally:
                    if self.gate is not None:
                        self.gate.release()
                if dropped:
                    portion.reconnects += 1
                    if portion.reconnects > _MAX_RECONNECTS and pending:
                        jobs = list(pending)
                        pending.clear()
                        self._settle(jobs, task, out, DEFERRED, DROPPED, None)
                        return
        finally:
            portion.lanes -= 1

    async def _connect(
        self, targets: list[MXTarget], pool: ConnectionPool
    ) -> tuple[SmtpConnection, bool, MXTarget]:
        """A connection to the most preferred reachable mail exchanger."""
        last: SmtpProtocolError | None = None
        for target in targets:
            try:
                conn, fresh = await pool.acquire(target.address, target.port, target.mx_host)
                return conn, fresh, target
            except SmtpRefused as exc:
                if exc.reply.klass == 5:
                    raise
                self._shaped(target, exc.reply.code, exc.reply.text)
                last = exc
            except SmtpProtocolError as exc:
                self._shaped(target, 421, str(exc))  # refused or cut off: a slow-down signal
                last = exc
        raise last or ConnectionDropped("no mail exchanger to try")

    def _shaped(self, target: MXTarget, code: int, text: str) -> None:
        """A connection to ``target`` was refused: the MX's shaping state learns of it."""
        shaper = self._shaper
        if shaper is not None:
            open_ok = shaper.in_use.get(target.mx_host, 0)  # its permit is already back
            shaper.reply(target.mx_host, code, text, signal=True, open_ok=open_ok)

    async def _run_jobs(
        self,
        conn: SmtpConnection,
        fresh: bool,
        target: MXTarget,
        portion: Portion,
        pool: ConnectionPool,
    ) -> bool:
        """Send jobs on one connection until none is left or it breaks; True if it dropped.

        A job is taken off the shared queue when this connection starts it, and the next
        one too when its envelope rides in the same write (``ahead``); jobs not sent go
        back to the front of the queue for another lane.
        """
        task, out, obs, pending = portion.task, portion.out, portion.obs, portion.pending
        first = True
        max_tx = self.spec.smtp.max_messages_per_connection
        if self._pool is not None:
            max_tx = self._pool.max_transactions(conn.limit_key or conn.host)
        ahead: Job | None = None  # taken; its envelope may already be on this connection
        try:
            while ahead is not None or pending:
                if self.fence is not None:
                    self.fence.check()
                urgent = self._urgent_waits()
                if urgent and not first and ahead is None and not conn.prefetched:
                    self.gate.preemptions += 1  # type: ignore[union-attr]
                    return False  # a more urgent campaign waits: its turn at this boundary
                self._spread(portion, pool, target)
                job = ahead if ahead is not None else pending.popleft()
                ahead = None
                rcpts = [email for _, email in job.recipients]
                then = None
                # The next envelope rides with this body only while jobs outnumber lanes (at
                # the tail, another lane sends it sooner than after this reply), and not on a
                # lane's first job: while a portion spreads, each new lane takes a job of its
                # own at once (a 4-message trial at 1 s latency: 1 s, not 2.4 s in pairs).
                if (
                    not first
                    and len(pending) > portion.lanes
                    and conn.transactions + 1 < max_tx
                    and not urgent
                ):
                    ahead = pending.popleft()
                    then = (
                        ahead.mail_from,
                        [email for _, email in ahead.recipients],
                        ahead.message,
                    )
                if self._shaper is not None:
                    await self._shaper.pace(target.mx_host)  # the MX's message rate
                try:
                    tx = await conn.send(
                        job.mail_from,
                        rcpts,
                        job.message,
                        before_data=self._in_flight(task, job),
                        then=then,
                    )
                except Fenced:
                    conn.broken = True  # left after DATA's 354: never reuse
                    raise
                except ConnectionDropped as exc:
                    if first and not fresh and not exc.data_sent:
                        # A stale pooled connection: the job goes again on a new one.
                        if ahead is not None:
                            pending.appendleft(ahead)
                            ahead = None
                        pending.appendleft(job)
                        return True
                    if exc.data_sent:  # the server may have taken it: in doubt, never "deferred"
                        self._settle([job], task, out, IN_DOUBT, DROPPED_IN_DATA, exc)
                    else:
                        self._settle([job], task, out, DEFERRED, DROPPED, exc)
                    self._observe(obs, conn, target, fresh and first, 0.0, len(rcpts), 0, job)
                    return True
                except ValueError as exc:  # an address unsafe for the envelope
                    self._settle([job], task, out, FAILED, None, exc)
                    continue
                self._record(job, tx, task, target, out)
                self._progress_at = time.monotonic()
                worst = max((r.klass for r in (tx.mail, *tx.rcpts)), default=2)
                if tx.data is not None:
                    worst = max(worst, tx.data.klass)
                self._observe(
                    obs, conn, target, fresh and first, tx.seconds, len(rcpts), worst, job
                )
                self.metrics.transaction(task.domain, tx.seconds)
                first = False
                if self._shaper is not None and self._shape_reply(conn, target, tx, worst):
                    conn.broken = True  # collecting errors: closed and replaced, not tarpitted
                    return False
                if any(r.code == 421 for r in (tx.mail, *tx.rcpts)) or conn.transactions >= max_tx:
                    conn.broken = conn.broken or conn.transactions < max_tx
                    return False
            return False
        finally:
            if ahead is not None:  # taken but not sent here: first in line for another lane
                pending.appendleft(ahead)

    def _shape_reply(
        self, conn: SmtpConnection, target: MXTarget, tx: Transaction, worst: int
    ) -> bool:
        """Feed a transaction's replies to the MX's shaping state; True when this connection
        should be replaced (several 5xx in a row, or a reply many times slower than usual)."""
        shaper = self._shaper
        assert shaper is not None
        key = target.mx_host
        settings = self.spec.shaping
        if worst == 2:
            shaper.success(key)
            conn.errors_in_row = 0
        else:
            replies = [tx.mail, *tx.rcpts] + ([tx.data] if tx.data is not None else [])
            bad = next(r for r in replies if r.klass != 2)
            shaper.reply(key, bad.code, bad.text)
            conn.errors_in_row = conn.errors_in_row + 1 if worst == 5 else 0
        usual = conn.usual_s
        conn.usual_s = tx.seconds if usual == 0.0 else 0.9 * usual + 0.1 * tx.seconds
        # Judged only against a baseline of a few transactions: one quick first reply (a
        # receiver's delay varies, and a pipelined sink answers in batches) made every
        # later ordinary one look like a tarpit and cut the whole MX's connections.
        slow = conn.transactions > _SLOW_BASELINE and tx.seconds > settings.slow_factor * max(
            usual, 0.05
        )
        if slow:
            shaper.reply(key, 421, f"reply slowed down to {tx.seconds:.2f} s", signal=True)
        return slow or conn.errors_in_row >= settings.max_errors_per_connection

    def _urgent_waits(self) -> bool:
        """A more urgent campaign waits for a slot of the shared gate (priority lanes)."""
        return self.gate is not None and self.gate.contended(self.priority)
