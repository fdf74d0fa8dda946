"""The delivery server (the seed's B server): an async Ray actor that personalises and sends.

One actor call carries one portion (about 100 recipients of one domain). The actor renders
each message, sends it over a pooled, reused SMTP connection (pipelined when offered) and
returns one outcome row per recipient plus one observation row per SMTP transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from raymail.compose.message import MessageTemplate
from raymail.delivery.admission import PriorityGate
from raymail.delivery.envelope import helo_name
from raymail.delivery.journal import (
    STATE_OF_STATUS,
    Fenced,
    FenceGuard,
    Journal,
    JournalState,
)
from raymail.delivery.metrics import DeliveryMetrics
from raymail.delivery.mx import MXResolver, MXTarget
from raymail.delivery.pool import ConnectionPool
from raymail.delivery.records import ObservationBuilder, OutcomeBuilder, from_ipc, now, to_ipc
from raymail.delivery.smtp_client import (
    DROPPED,
    ConnectionDropped,
    Reply,
    SmtpConnection,
    SmtpRefused,
    Transaction,
)
from raymail.driver.plan import PortionTask
from raymail.errors import MXResolutionError, SmtpProtocolError, TemplateError
from raymail.routing.table import default_table_dir
from raymail.shaping.limiter import LocalShaper
from raymail.shaping.persist import load_limits, save_limits
from raymail.spec import CampaignSpec
from raymail.status import ACCEPTED, DEFERRED, FAILED, IN_DOUBT

_MAX_RECONNECTS = 3
_MAX_REFUSALS = 20  # refused connections a shaped portion waits out before deferring


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


@dataclass(slots=True)
class ServerStats:
    """A delivery server's counters, read by the driver's watchdog."""

    name: str
    portions: int = 0
    recipients: int = 0
    accepted: int = 0
    deferred: int = 0
    failed: int = 0
    active_portions: int = 0
    open_connections: int = 0
    connections_opened: int = 0
    # Seconds since the server last made progress, on its own monotonic clock (set when
    # the stats are read): the driver judges stalls from it, never from wall clocks.
    since_progress_s: float = 0.0
    node_id: str = ""  # the Ray node it runs on (placement, and what a node loss took)
    # MX hosts in backoff: mx_host, connections, rate_per_s, suspended, reason, next_try_at
    backoff: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class _Job:
    """One SMTP transaction to make: the recipients share this exact message."""

    recipients: list[tuple[int, str]]
    message: bytes
    message_id: str
    mail_from: str
    started_at: datetime
    in_flight: bool = False  # the journal says "in flight": its fate must follow


@dataclass(slots=True)
class _Portion:
    """A portion being sent: its job queue, shared by the lanes (connections) sending it."""

    task: PortionTask
    targets: list[MXTarget]
    out: OutcomeBuilder
    obs: ObservationBuilder
    pending: deque[_Job]
    lanes: int = 0  # lanes started and not ended
    connected: int = 0  # lanes holding a connection now
    reconnects: int = 0  # dropped connections, all lanes together
    refusals: int = 0  # connections refused (shaped: tried again within the new limit)
    lanes_running: set[asyncio.Task[None]] = field(default_factory=set)


# A connection lost after the whole body was written: the server may have accepted it.
DROPPED_IN_DATA = Reply(0, "connection dropped after the message was sent (in doubt)")


def _status_of(reply: Reply) -> str:
    if reply.klass == 2:
        return ACCEPTED
    return FAILED if reply.klass == 5 else DEFERRED


class DeliveryServer:
    """The actor's implementation; ``DeliveryServerActor`` below is its Ray wrapper."""

    def __init__(
        self,
        name: str,
        spec: CampaignSpec,
        source_address: str | None = None,
        nameservers: list[tuple[str, int]] | None = None,
        journal_dir: str | None = None,
        epoch: int = 0,
        gate: PriorityGate | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.source_address = source_address
        self.template = MessageTemplate(spec)
        self.helo_name = helo_name(spec, source_address)  # this node's FQDN by default
        self._nameservers = nameservers
        self._resolver: MXResolver | None = None
        self._pool: ConnectionPool | None = None
        self._shaper: LocalShaper | None = None  # per-MX limits (raymail.shaping)
        # Lanes holding a connection, per mail exchanger (address, port), all portions.
        self._mx_lanes: dict[tuple[str, int], int] = {}
        self._per_mx_cap = spec.smtp.max_connections_per_mx or spec.concurrency
        self.stats = ServerStats(name, node_id=_node_id())
        self._progress_at = time.monotonic()  # the last SMTP transaction or portion done
        self.metrics = DeliveryMetrics(spec.campaign, name, spec.metrics_domains)
        self.journal = Journal(Path(journal_dir), name) if journal_dir else None
        self.fence = FenceGuard(Path(journal_dir), epoch) if journal_dir else None
        # Shared with the other campaigns of a shared delivery server (priority lanes):
        # a connection is used only while holding one of its slots.
        self.gate = gate
        self.priority = spec.priority
        # Signed messages are rendered in one thread of their own: the private-key operation
        # releases the GIL, so SMTP on the event loop goes on meanwhile. One thread, so the
        # template's caches are never used by two portions at once.
        self._renderer = (
            ThreadPoolExecutor(1, thread_name_prefix=f"{name}-render") if spec.dkim else None
        )

    def _started(self) -> tuple[MXResolver, ConnectionPool]:
        """Create the event-loop-bound parts on first use, inside the actor's send loop."""
        if self._resolver is None or self._pool is None:
            self._resolver = MXResolver(
                nameservers=self._nameservers,
                overrides=self.spec.mx_override,
                port=self.spec.smtp.port,
            )
            if self.spec.shaping.enabled:
                self._shaper = LocalShaper(
                    self.spec.shaping, self.spec.concurrency, load_limits(self._limits_dir())
                )
            self._pool = ConnectionPool(
                self.spec.concurrency,
                self._open,
                max_transactions=self.spec.smtp.max_messages_per_connection,
                limiter=self._shaper,
            )
        return self._resolver, self._pool

    async def _open(self, host: str, port: int) -> SmtpConnection:
        smtp = self.spec.smtp
        return await SmtpConnection.open(
            host,
            port,
            helo_name=self.helo_name,
            source_address=self.source_address,
            starttls=smtp.starttls,
            verify_certificates=smtp.verify_certificates,
            connect_timeout=smtp.connect_timeout_s,
            command_timeout=smtp.command_timeout_s,
            data_timeout=smtp.data_timeout_s,
        )

    async def deliver(self, task: PortionTask, rows_ipc: bytes) -> PortionResult:
        """Send one portion (its rows as Arrow IPC bytes); each recipient gets one outcome."""
        table = from_ipc(rows_ipc)
        resolver, pool = self._started()
        self.stats.active_portions += 1
        self.metrics.load(self.stats.active_portions)
        out = OutcomeBuilder(
            self.spec.campaign,
            self.name,
            self.source_address,
            task.portion,
            task.attempt,
            task.domain,
        )
        obs = ObservationBuilder(self.name, self.source_address, task.domain)
        try:
            if self._renderer is None:
                jobs = self._jobs(task, table, out)
            else:
                loop = asyncio.get_running_loop()
                jobs = await loop.run_in_executor(self._renderer, self._jobs, task, table, out)
            if jobs:
                try:
                    targets = await resolver.resolve(task.domain)
                except MXResolutionError as exc:
                    fate = FAILED if exc.permanent else DEFERRED
                    self._settle(jobs, task, out, fate, None, exc)
                else:
                    await self._send(jobs, task, targets, pool, out, obs)
        finally:
            self.stats.active_portions -= 1
        outcomes = out.table()
        self._count(outcomes)
        self.metrics.outcomes(task.domain, outcomes.column("status"))
        self.metrics.load(self.stats.active_portions, self.stats.open_connections)
        return PortionResult(task, self.name, to_ipc(outcomes), to_ipc(obs.table()))

    def _jobs(self, task: PortionTask, table: pa.Table, out: OutcomeBuilder) -> list[_Job]:
        """Render the portion's messages; a template failure fails only that recipient."""
        rows = table.column("row").to_pylist()
        emails = table.column("email").to_pylist()
        started = now()
        template = self.template
        if template.shareable:  # no merge fields and no per-recipient unsubscribe URL
            return self._shared_jobs(rows, emails, started)
        fields = [c for c in table.column_names if c in template.merge_fields]
        columns = [table.column(c).to_pylist() for c in fields]
        jobs: list[_Job] = []
        for i, (row, email) in enumerate(zip(rows, emails, strict=True)):
            values = {name: col[i] for name, col in zip(fields, columns, strict=True)}
            try:
                message = template.render(email, values)
            except TemplateError as exc:
                out.add_failed(row, email, f"template: {exc}", started)
                continue
            jobs.append(
                _Job(
                    [(row, email)],
                    message,
                    template.message_id(email),
                    template.envelope_sender(email),
                    started,
                )
            )
        return jobs

    def _shared_jobs(self, rows: list[int], emails: list[str], started: datetime) -> list[_Job]:
        """Identical content: one transaction carries up to max_rcpt recipients."""
        step = self.spec.smtp.max_rcpt_per_transaction
        jobs = []
        for i in range(0, len(rows), step):
            recipients = list(zip(rows[i : i + step], emails[i : i + step], strict=True))
            addresses = [e for _, e in recipients]
            message = self.template.render_shared(addresses)
            jobs.append(
                _Job(
                    recipients,
                    message,
                    self.template.shared_message_id(addresses),
                    self.template.envelope_sender(None),
                    started,
                )
            )
        return jobs

    async def _send(
        self,
        jobs: list[_Job],
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
        portion = _Portion(task, targets, out, obs, deque(jobs))
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

    def _add_lane(self, portion: _Portion, pool: ConnectionPool) -> None:
        portion.lanes += 1
        lane = asyncio.get_running_loop().create_task(self._lane(portion, pool))
        portion.lanes_running.add(lane)

    def _spread(self, portion: _Portion, pool: ConnectionPool, target: MXTarget) -> None:
        """Open one more lane (connection) for this portion when jobs wait, no lane of it
        is already waiting for a connection, the MX is under its per-server cap and the
        pool has a slot nobody waits for: connections, not portions, set the pace."""
        if not portion.pending or portion.lanes > portion.connected:
            return
        key = (target.address, target.port)
        if self._mx_lanes.get(key, 0) >= self._per_mx_cap:
            return
        gate = self.gate
        if gate is not None and (gate.busy >= gate.slots or self._urgent_waits()):
            return  # a shared server's slots are the campaigns' to share, by priority
        if pool.ready(target.address, target.port, target.mx_host):
            self._add_lane(portion, pool)

    async def _lane(self, portion: _Portion, pool: ConnectionPool) -> None:
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
                        status = _status_of(reply) if reply else DEFERRED
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
        portion: _Portion,
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
        ahead: _Job | None = None  # taken; its envelope may already be on this connection
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
                if pending and conn.transactions + 1 < max_tx and not urgent:
                    ahead = pending.popleft()
                    then = (
                        ahead.mail_from,
                        [email for _, email in ahead.recipients],
                        ahead.message,
                    )
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
        slow = usual > 0.0 and tx.seconds > settings.slow_factor * max(usual, 0.05)
        if slow:
            shaper.reply(key, 421, f"reply slowed down to {tx.seconds:.2f} s", signal=True)
        return slow or conn.errors_in_row >= settings.max_errors_per_connection

    def _urgent_waits(self) -> bool:
        """A more urgent campaign waits for a slot of the shared gate (priority lanes)."""
        return self.gate is not None and self.gate.contended(self.priority)

    def _in_flight(self, task: PortionTask, job: _Job) -> Callable[[], None] | None:
        """The journal write that must precede the message body (None without a journal)."""
        journal = self.journal
        if journal is None:
            return None
        rows = [row for row, _ in job.recipients]

        fence = self.fence

        def mark() -> None:
            if fence is not None:
                fence.check()  # raising here means the body is never sent
            job.in_flight = True
            journal.mark(JournalState.IN_FLIGHT, task.portion, task.attempt, rows)

        return mark

    def _journal_fates(self, task: PortionTask, job: _Job, statuses: list[str]) -> None:
        if self.journal is None or not job.in_flight:
            return
        by_state: dict[JournalState, list[int]] = {}
        for (row, _), status in zip(job.recipients, statuses, strict=True):
            by_state.setdefault(STATE_OF_STATUS[status], []).append(row)
        for state, rows in by_state.items():
            self.journal.mark(state, task.portion, task.attempt, rows)

    def _record(
        self, job: _Job, tx: Transaction, task: PortionTask, target: MXTarget, out: OutcomeBuilder
    ) -> None:
        statuses = []
        for (row, email), rcpt in zip(job.recipients, tx.rcpts, strict=True):
            reply = tx.mail if tx.mail.klass != 2 else rcpt
            if reply.klass == 2:
                reply = tx.data if tx.data is not None else Reply(451, "4.3.0 DATA not sent")
            statuses.append(_status_of(reply))
            out.add(
                row=row,
                email=email,
                status=statuses[-1],
                smtp_code=reply.code,
                enhanced_status=reply.enhanced,
                response=reply.text,
                mx_host=target.mx_host,
                message_id=job.message_id,
                started_at=job.started_at,
            )
        self._journal_fates(task, job, statuses)

    def _settle(
        self,
        jobs: list[_Job],
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
        job: _Job,
    ) -> None:
        obs.add(
            mx_host=target.mx_host,
            connect_s=conn.timing.connect_s if new_connection else None,
            banner_s=conn.timing.banner_s if new_connection else None,
            transaction_s=seconds,
            recipients=recipients,
            response_class=response_class,
            size=len(job.message),
            tls=conn.tls,
        )

    def _count(self, outcomes: pa.Table) -> None:
        stats = self.stats
        stats.portions += 1
        stats.recipients += outcomes.num_rows
        for status in outcomes.column("status").to_pylist():
            if status == ACCEPTED:
                stats.accepted += 1
            elif status in (DEFERRED, IN_DOUBT):
                stats.deferred += 1
            else:
                stats.failed += 1
        self._progress_at = time.monotonic()
        if self._pool is not None:
            stats.open_connections = self._pool.open_connections
            stats.connections_opened = self._pool.opened_total

    async def pull(self, broker: Any) -> ServerStats:
        """Pull mode: ask the broker for portions sized to free connections, until closed.

        Runs for the whole campaign in one call slot; each portion is delivered by the same
        code as in push mode, and its result handed back through the broker.
        """
        active: set[asyncio.Task[None]] = set()
        capacity = self.spec.concurrency
        for _ in range(10_000_000):  # bounded: ends when the broker closes
            free = capacity - len(active)
            if free <= 0:
                await asyncio.wait(active, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                free = capacity - len(active)
            # With no free slot this is a keep-alive: the broker sees the server is alive.
            items, closed = await broker.take.remote(self.name, free)
            for task, rows_ref in items:
                job = asyncio.create_task(self._pull_one(broker, task, rows_ref))
                active.add(job)
                job.add_done_callback(active.discard)
            if closed and not items:
                break
        if active:
            await asyncio.wait(active)
        return self._current_stats()

    async def _pull_one(self, broker: Any, task: PortionTask, rows_ref: Any) -> None:
        try:
            rows_ipc = await rows_ref
            result = await self.deliver(task, rows_ipc)
        except Exception as exc:  # reported, never lost: the driver recovers the portion
            await broker.failed.remote(self.name, task, f"{type(exc).__name__}: {exc}")
            return
        await broker.complete.remote(result)

    def _current_stats(self) -> ServerStats:
        self.stats.since_progress_s = time.monotonic() - self._progress_at
        if self._shaper is not None:
            self.stats.backoff = self._shaper.backoff()
        return self.stats

    @ray.method(concurrency_group="control")
    async def heartbeat(self) -> ServerStats:
        """Counters for the driver's watchdog; never queued behind sends."""
        return self._current_stats()

    @ray.method(concurrency_group="control")
    async def probe(
        self, domains: list[str], timeout_s: float = 10.0, max_hosts: int = 20
    ) -> bytes:
        """RTT and hop count to the MX hosts of ``domains``, from this server's own node and
        source address (routing probes). Runs in the control group, never in a send slot,
        with its own resolver (the send loop's resolver belongs to another event loop).
        Returns Arrow IPC bytes of ``raymail.routing.probes.PROBE_SCHEMA`` rows."""
        from raymail.routing.probes import probe_domains

        resolver = getattr(self, "_probe_resolver", None)
        if resolver is None:
            resolver = MXResolver(
                nameservers=self._nameservers,
                overrides=self.spec.mx_override,
                port=self.spec.smtp.port,
            )
            self._probe_resolver = resolver
        table = await probe_domains(
            domains,
            resolver,
            server=self.name,
            source_address=self.source_address,
            timeout_s=timeout_s,
            max_hosts=max_hosts,
        )
        return to_ipc(table)

    def _limits_dir(self) -> Path:
        """Where learned per-MX limits are kept: beside the routing table."""
        table = self.spec.routing.table
        return Path(table).expanduser() if table else default_table_dir()

    async def shutdown(self) -> ServerStats:
        """Close pooled connections politely; keep what shaping learned for the next run."""
        if self._pool is not None:
            await self._pool.close()
        if self._shaper is not None:
            try:
                save_limits(self._limits_dir(), list(self._shaper.hosts.values()))
            except OSError as exc:  # learned limits are a help, never a reason to fail
                logging.getLogger(__name__).warning("cannot save shaping limits: %s", exc)
        return self._current_stats()


def _node_id() -> str:
    """The Ray node this process runs on ("" outside Ray)."""
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


# Health calls run in their own group so they never wait behind sends.
DeliveryServerActor = ray.remote(concurrency_groups={"control": 2})(DeliveryServer)  # type: ignore[call-overload]
