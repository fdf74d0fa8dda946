"""The delivery server (the seed's B server): an async Ray actor that personalises and sends.

One actor call carries one portion (about 100 recipients of one domain). The actor renders
each message, sends it over a pooled, reused SMTP connection (pipelined when offered) and
returns one outcome row per recipient plus one observation row per SMTP transaction.

The class is composed of one part per job: :mod:`~raymail.delivery.jobs` renders rows into
SMTP jobs, :mod:`~raymail.delivery.lanes` sends them over one or more connections,
:mod:`~raymail.delivery.outcomes` records outcomes, observations and journal marks, and
:mod:`~raymail.delivery.stats` keeps the counters the heartbeat reports. This module holds
the actor's calls (deliver, pull, heartbeat, probe, shutdown) and its Ray wrapper.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from raymail.compose.message import MessageTemplate
from raymail.delivery.admission import PriorityGate
from raymail.delivery.envelope import helo_name
from raymail.delivery.jobs import Job, JobRendering
from raymail.delivery.journal import FenceGuard, Journal
from raymail.delivery.lanes import LaneSending
from raymail.delivery.metrics import DeliveryMetrics
from raymail.delivery.mx import MXResolver
from raymail.delivery.outcomes import PortionResult
from raymail.delivery.pool import ConnectionPool
from raymail.delivery.records import ObservationBuilder, OutcomeBuilder, from_ipc, to_ipc
from raymail.delivery.smtp_client import SmtpConnection
from raymail.delivery.stats import ServerStats, StatsReporting, node_id
from raymail.driver.plan import PortionTask
from raymail.errors import MXResolutionError
from raymail.routing.table import default_table_dir
from raymail.shaping.fleet import FleetShaper, shaper_for
from raymail.shaping.limiter import LocalShaper
from raymail.shaping.persist import load_limits, save_limits
from raymail.spec import CampaignSpec
from raymail.status import DEFERRED, FAILED

# Signed messages rendered per turn of the event loop (see DeliveryServer.__init__).
SIGNED_RENDER_SLICE = 16

# Imported from here by the driver and the shared servers.
__all__ = ["DeliveryServer", "DeliveryServerActor", "PortionResult", "ServerStats"]


class DeliveryServer(JobRendering, LaneSending, StatsReporting):
    """The actor's implementation; ``DeliveryServerActor`` below is its Ray wrapper (a
    plain object inside the actor: see ``DeliveryServerCalls``)."""

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
        self.stats = ServerStats(name, node_id=node_id())
        self._progress_at = time.monotonic()  # the last SMTP transaction or portion done
        self.metrics = DeliveryMetrics(spec.campaign, name, spec.metrics_domains)
        self.journal = Journal(Path(journal_dir), name) if journal_dir else None
        self.fence = FenceGuard(Path(journal_dir), epoch) if journal_dir else None
        # Shared with the other campaigns of a shared delivery server (priority lanes):
        # a connection is used only while holding one of its slots.
        self.gate = gate
        self.priority = spec.priority
        # Signed messages are rendered on the event loop, a slice of rows at a time with a
        # yield to SMTP between slices. A render thread was tried (69fb9b7: the private-key
        # operation releases the GIL), but on 2 cores with 2 servers it cost ~100 us of CPU
        # per message in GIL hand-offs with the loop and gained nothing (README, DKIM).
        self._sign_slice = SIGNED_RENDER_SLICE if spec.dkim else 0

    def _started(self) -> tuple[MXResolver, ConnectionPool]:
        """Create the event-loop-bound parts on first use, inside the actor's send loop."""
        if self._resolver is None or self._pool is None:
            self._resolver = MXResolver(
                nameservers=self._nameservers,
                overrides=self.spec.mx_override,
                port=self.spec.smtp.port,
            )
            if self.spec.shaping.enabled:
                self._shaper = shaper_for(  # shared with the fleet when the driver says so
                    self.spec.shaping,
                    self.spec.concurrency,
                    self.name,
                    load_limits(self._limits_dir()),
                )
            self._pool = ConnectionPool(
                self.spec.concurrency,
                self._open,
                max_transactions=self.spec.smtp.max_messages_per_connection,
                limiter=self._shaper,
            )
            if self._shaper is not None:
                self._shaper.attach(self._pool)
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
            jobs = await self._rendered(task, table, out)
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
            if self.journal is not None:
                self.journal.flush()  # this portion's held fates, before its result leaves
        outcomes = out.table()
        self._count(outcomes)
        self.metrics.outcomes(task.domain, outcomes.column("status"))
        self.metrics.flush()  # this portion's latencies, before its result leaves
        self.metrics.load(self.stats.active_portions, self.stats.open_connections)
        return PortionResult(task, self.name, to_ipc(outcomes), to_ipc(obs.table()))

    async def _rendered(self, task: PortionTask, table: pa.Table, out: OutcomeBuilder) -> list[Job]:
        """The portion's jobs; signed ones a slice at a time, yielding to SMTP in between
        (a slice of RSA-2048 signatures is ~5 ms of CPU: the loop is never held longer)."""
        step = self._sign_slice
        if not step or table.num_rows <= step or self.template.shareable:
            return self._jobs(task, table, out)  # shared jobs: one signature per transaction
        jobs: list[Job] = []
        for start in range(0, table.num_rows, step):
            if start:
                await asyncio.sleep(0)
            jobs += self._jobs(task, table.slice(start, step), out)
        return jobs

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

    async def heartbeat(self) -> ServerStats:
        """Counters for the driver's watchdog; never queued behind sends."""
        return self._current_stats()

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
        self.metrics.flush()
        if self._pool is not None:
            await self._pool.close()
        if isinstance(self._shaper, FleetShaper):
            await self._shaper.close()  # the last outcomes to the fleet's state
        if self._shaper is not None:
            try:
                save_limits(self._limits_dir(), list(self._shaper.hosts.values()))
            except OSError as exc:  # learned limits are a help, never a reason to fail
                logging.getLogger(__name__).warning("cannot save shaping limits: %s", exc)
        return self._current_stats()


class DeliveryServerCalls:
    """The actor's calls, each handed to a :class:`DeliveryServer` held inside.

    Ray wraps every method of an actor class, inherited ones too, in a tracing shim that
    costs about 0.5 us a call even with tracing off (measured on Ray 2.60: 0.53 us against
    0.04 us for a plain method); the delivery server calls a dozen of its own methods per
    message, so they live on a plain object and only these few calls are wrapped.
    """

    def __init__(
        self,
        name: str,
        spec: CampaignSpec,
        source_address: str | None = None,
        nameservers: list[tuple[str, int]] | None = None,
        journal_dir: str | None = None,
        epoch: int = 0,
    ) -> None:
        self._server = DeliveryServer(name, spec, source_address, nameservers, journal_dir, epoch)

    async def deliver(self, task: PortionTask, rows_ipc: bytes) -> PortionResult:
        return await self._server.deliver(task, rows_ipc)

    async def pull(self, broker: Any) -> ServerStats:
        return await self._server.pull(broker)

    # Health calls run in their own group so they never wait behind sends.
    @ray.method(concurrency_group="control")
    async def heartbeat(self) -> ServerStats:
        return await self._server.heartbeat()

    @ray.method(concurrency_group="control")
    async def probe(
        self, domains: list[str], timeout_s: float = 10.0, max_hosts: int = 20
    ) -> bytes:
        return await self._server.probe(domains, timeout_s, max_hosts)

    async def shutdown(self) -> ServerStats:
        return await self._server.shutdown()


DeliveryServerActor = ray.remote(concurrency_groups={"control": 2})(DeliveryServerCalls)  # type: ignore[call-overload]
