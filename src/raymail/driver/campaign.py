"""The driver (the seed's A server): load -> plan -> dispatch -> watch -> retry -> report.

The driver holds Arrow tables and object references, never per-recipient Python objects,
and never the whole list: it is validated batch by batch into the run directory
(``intake``) and read back a batch at a time only when the queue of portions runs low
(``driver.portions``), so memory stays flat as the list grows. Delivery servers do the
per-recipient work and hand back Arrow batches. Stages are recorded
in the run directory (the seed's checkpoints P100..P699) so a killed run resumes where it
stopped, with nobody sent twice (the journals say who was accepted) and nobody skipped.
"""

from __future__ import annotations

import heapq
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

from raymail.delivery.journal import (
    FENCE_WAIT_S,
    JOURNAL_DIR,
    journal_files,
    journal_states,
    write_fence,
)
from raymail.delivery.records import OutcomeBuilder, now, to_ipc
from raymail.delivery.server import DeliveryServerActor, PortionResult, ServerStats
from raymail.driver.broker import BrokerPoll, WorkBrokerActor
from raymail.driver.dispatch import LeastLoadedRouter, ServerView, Work, WorkQueue
from raymail.driver.plan import PortionTask, size_capacity
from raymail.driver.portions import PortionStream
from raymail.driver.progress import ProgressReporter, Tally
from raymail.errors import DeliveryError
from raymail.intake.staging import stage_recipients
from raymail.intake.stream import intake_recipients
from raymail.routing import make_router
from raymail.run.export import start_export
from raymail.run.ledger import Ledger
from raymail.run.recovery import recovered_outcomes, run_state
from raymail.run.report import build_report
from raymail.run.rundir import RECIPIENTS, REPORT, RunDir, write_json_atomic
from raymail.runtime import DELIVERY_RESOURCE, delivery_slots, ensure_ray
from raymail.schema import ACCEPTED, DEFERRED, FAILED, IN_DOUBT, SUPPRESSED
from raymail.spec import CampaignSpec

log = logging.getLogger(__name__)

_INTERNAL_RETRIES = 2  # re-runs of a portion whose call failed for a reason not SMTP's
_SERVER_FAILURE_LIMIT = 3  # failed calls after which a server gets no more work
_REPLACEMENTS = 3  # delivery servers started to replace dead or stalled ones
_WARMUP_S = 2.0
_FALLBACK_ROUTER = LeastLoadedRouter()
_HEARTBEAT_S = 2.0
_RESTART_PAUSE_S = 2.0  # no work for a server Ray is restarting (its node or process died)

# Stages, in order (the seed's P100 .. P699).
LOADING, PLANNED, DELIVERING, COMPLETE = "loading", "planned", "delivering", "complete"


@dataclass(slots=True)
class _Server:
    name: str
    handle: Any
    source_address: str | None
    inflight: int = 0
    failures: int = 0
    bad_streak: int = 0  # portions in a row in which nothing was accepted
    bad_domains: set[str] = field(default_factory=set)  # the domains of that streak
    last_progress: float = field(default_factory=time.monotonic)
    heartbeat: ray.ObjectRef[Any] | None = None
    heartbeat_sent: float = 0.0
    alive: bool = False  # answered a heartbeat: its actor has started
    unavailable_since: float | None = None  # Ray is restarting it (since this time)
    paused_until: float = 0.0  # no new work before this time (it is restarting)

    @property
    def healthy(self) -> bool:
        return self.failures < _SERVER_FAILURE_LIMIT


@dataclass
class _State:
    ready: WorkQueue = field(default_factory=WorkQueue)
    delayed: list[tuple[float, int, Work]] = field(default_factory=list)
    inflight: dict[ray.ObjectRef[Any], tuple[_Server, Work]] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)
    attempts: int = 0
    source: PortionStream | None = None  # the rest of the list, read when ready runs low
    peak_ready: int = 0  # most portions queued at once (back-pressure keeps it bounded)
    peak_inflight: int = 0  # most portions on delivery servers at once

    @property
    def more(self) -> bool:
        """Portions still to come from the list."""
        return self.source is not None and not self.source.exhausted


def run_campaign(
    spec: CampaignSpec, run_dir: str | Path, *, live_progress: bool | None = None
) -> dict[str, Any]:
    """Send a campaign and return its report (also written to RUN_DIR/report.json)."""
    return CampaignDriver(spec, RunDir(run_dir), live_progress=live_progress).run()


def resume_campaign(
    run_dir: str | Path, *, in_doubt: str | None = None, live_progress: bool | None = None
) -> dict[str, Any]:
    """Continue a killed or stopped run: accepted recipients are never sent again."""
    rd = RunDir(run_dir)
    spec = rd.spec()
    if in_doubt is not None:
        spec = spec.model_copy(update={"in_doubt": in_doubt})
    return CampaignDriver(spec, rd, live_progress=live_progress, resume=True).run()


class CampaignDriver:
    """Runs (or resumes) one campaign in one run directory."""

    def __init__(
        self,
        spec: CampaignSpec,
        run_dir: RunDir,
        *,
        live_progress: bool | None = None,
        resume: bool = False,
    ) -> None:
        self.spec = spec
        self.rd = run_dir
        self.live_progress = live_progress
        self.resume = resume
        self.servers: list[_Server] = []
        self.router = make_router(
            spec,
            run_dir=run_dir.path,
            servers=lambda: {s.name: s.handle for s in self.servers if s.healthy},
        )
        self._replacements = 0
        self._capacity_checked = False
        self._starved = False  # the router once handed out nothing with nothing in flight
        self._journals: dict[str, tuple[tuple[int, ...], pl.DataFrame]] = {}

    def run(self) -> dict[str, Any]:
        self.rd.lock()
        try:
            export = start_export(self.spec, self.rd.path)  # a bad bucket fails here
            try:
                return self._resume() if self.resume else self._start()
            finally:
                self._stop_servers()
                if export is not None:
                    export.close()  # the final copy, report included
        finally:
            self.rd.unlock()

    # -- stages ------------------------------------------------------------------------

    def _stage(self, stage: str, **fields: Any) -> None:
        manifest = self.rd.manifest()
        history = list(manifest.get("stages", []))
        history.append({"stage": stage, "at": _iso(time.time())})
        self.rd.update(status=stage, stages=history, **fields)

    def _start(self) -> dict[str, Any]:
        spec, rd = self.spec, self.rd
        rd.create(spec)
        self._stage(LOADING, started_at=_iso(time.time()), resumes=0, elapsed_s=0.0)
        from raymail.returns.suppression import apply_suppression  # the C servers' list

        ledger = Ledger(rd.path, spec.checkpoint_interval_s)
        suppressed_rows: list[np.ndarray[Any, np.dtype[np.int64]]] = []

        def suppress(batch: pa.Table) -> None:
            _, suppressed = apply_suppression(batch, spec)
            if suppressed.num_rows:  # ledgered before anything is sent: the report counts them
                ledger.add(suppressed, pa.table({}))
                suppressed_rows.append(suppressed.column("row").to_numpy())

        intake = intake_recipients(
            stage_recipients(spec.recipients, spec.s3, rd.path),
            rd.path,
            RECIPIENTS,
            batch_rows=spec.batch_rows,
            on_batch=suppress,
            label=str(spec.recipients),
        )
        ledger.flush()
        self._stage(
            PLANNED,
            recipients=intake.accepted,
            rejected_input=intake.rejected,
            intake={"batches": intake.batches, "dedup_bytes": intake.seen_bytes},
        )
        skip = np.sort(np.concatenate(suppressed_rows)) if suppressed_rows else None
        source = PortionStream(
            rd.path / RECIPIENTS, spec.portion_size, batch_rows=spec.batch_rows, skip=skip
        )
        return self._deliver(source, Tally())

    def _resume(self) -> dict[str, Any]:
        rd = self.rd
        manifest = rd.manifest()
        if manifest.get("status") == COMPLETE:
            report = build_report(rd.path)
            report["note"] = "the run was already complete: nothing was sent"
            return report
        if not (rd.path / RECIPIENTS).exists():  # killed before the list was saved
            rd.manifest_path.unlink()
            return self._start()
        # Fence off delivery servers of earlier drivers that may outlive them, and give
        # them time to notice, before the journals are read as final. The new epoch is
        # recorded before any server of it starts, so the next resume fences those too.
        epoch = int(manifest.get("resumes", 0)) + 1
        write_fence(rd.path / JOURNAL_DIR, epoch)
        fenced_at = time.monotonic()
        self._stage(DELIVERING, resumes=epoch)
        # Starting Ray and the delivery servers takes seconds: do it during the fence wait.
        # The servers are of the new epoch and get work only once the journals are read.
        ensure_ray()
        self._start_servers(self.spec.delivery_servers)
        time.sleep(max(0.0, FENCE_WAIT_S - (time.monotonic() - fenced_at)))
        recovered, final = run_state(rd.path, rd.path / RECIPIENTS, self.spec.campaign)
        ledger = Ledger(rd.path, self.spec.checkpoint_interval_s)
        ledger.add(recovered, pa.table({}))
        ledger.flush()
        source, tally = self._remaining(final)
        return self._deliver(source, tally)

    def _remaining(self, final: pl.DataFrame) -> tuple[PortionStream, Tally]:
        """The recipients still to send (as a stream), and the tally of those settled.

        Only row numbers and attempt counts are held (16 bytes per recipient tried): the
        stream skips settled rows as it reads the list.
        """
        resend_doubt = self.spec.in_doubt == "resend"
        settled_statuses = [ACCEPTED, FAILED, SUPPRESSED] + ([] if resend_doubt else [IN_DOUBT])
        is_settled = pl.col("status").is_in(settled_statuses)
        settled = final.filter(is_settled)
        tally = Tally(
            accepted=int((settled["status"] == ACCEPTED).sum()),
            failed=int((settled["status"] == FAILED).sum()),
            in_doubt=int((settled["status"] == IN_DOUBT).sum()),
        )
        tried = final.filter(~is_settled).sort("row")
        first_portion = int(final.get_column("portion").cast(pl.Int64).max() or 0) + 1  # type: ignore[arg-type]
        source = PortionStream(
            self.rd.path / RECIPIENTS,
            self.spec.portion_size,
            first_id=first_portion,
            batch_rows=self.spec.batch_rows,
            skip=np.sort(settled["row"].cast(pl.Int64).to_numpy()),
            prev_rows=tried["row"].cast(pl.Int64).to_numpy(),
            prev_attempts=tried["attempt"].cast(pl.Int64).to_numpy(),
        )
        return source, tally

    def _deliver(self, source: PortionStream, tally: Tally) -> dict[str, Any]:
        """Dispatch the portions of ``source`` until every row is settled."""
        spec, rd = self.spec, self.rd
        ensure_ray()
        state = _State(tally=tally, source=source, ready=WorkQueue(new_id=source.new_id))
        self._start_servers(spec.delivery_servers - len(self.servers))  # a resume started some
        self._stage(
            DELIVERING,
            batch_rows=spec.batch_rows,
            delivery_servers=len(self.servers),
            concurrency=spec.concurrency,
        )
        ledger = Ledger(rd.path, spec.checkpoint_interval_s)
        total = int(rd.manifest()["recipients"])
        progress = ProgressReporter(total, live=self.live_progress)
        started = time.monotonic()
        try:
            if spec.dispatch == "pull":
                self._dispatch_pull(state, ledger, progress, started)
            else:
                self._dispatch(state, ledger, progress, started)
        finally:
            ledger.flush()
            self.router.close()  # what the run learned reaches the routing table
            progress.close(state.tally)
            elapsed = time.monotonic() - started
            previous = float(rd.manifest().get("elapsed_s") or 0.0)
            attempts = int(rd.manifest().get("attempts") or 0) + state.attempts
            stream = {
                "batches": source.batches,
                "portions": source.portions,
                "peak_ready_portions": state.peak_ready,
                "peak_inflight_portions": state.peak_inflight,
            }
            rd.update(elapsed_s=previous + elapsed, attempts=attempts, stream=stream)
        self._stage(COMPLETE, finished_at=_iso(time.time()))
        for path in journal_files(rd.path):  # the ledger now holds all they said
            path.unlink()
        report = build_report(rd.path)
        write_json_atomic(rd.path / REPORT, report)
        return report

    # -- delivery servers -------------------------------------------------------------

    def _start_servers(self, count: int) -> None:
        spec = self.spec
        use_resource = delivery_slots() > 0
        if not use_resource:
            log.warning(
                "no node offers the '%s' resource; delivery servers go wherever Ray puts "
                "them (see cluster.yaml)",
                DELIVERY_RESOURCE,
            )
        nameservers = [_host_port(ns) for ns in spec.nameservers] or None
        journal_dir = str((self.rd.path / JOURNAL_DIR).resolve())
        for _ in range(count):
            i = len(self.servers)
            # Names differ per resume, so a server's journal is never confused with the
            # journal of the same-numbered server of an earlier driver.
            resumes = int(self.rd.manifest().get("resumes") or 0)
            name = f"ds{i}" if resumes == 0 else f"r{resumes}-ds{i}"
            source = (
                spec.source_addresses[i % len(spec.source_addresses)]
                if spec.source_addresses
                else None
            )
            options: dict[str, Any] = {
                "max_concurrency": spec.concurrency + 1,  # + pull mode's loop
                "max_restarts": 3,
                "num_cpus": 0,
            }
            if use_resource:
                options["resources"] = {DELIVERY_RESOURCE: 1}
            handle = DeliveryServerActor.options(**options).remote(
                name, spec, source, nameservers, journal_dir, resumes
            )
            self.servers.append(_Server(name, handle, source))

    def _stop_servers(self) -> None:
        handles = [s.handle for s in self.servers]
        if not handles:
            return
        try:
            ray.wait([h.shutdown.remote() for h in handles], num_returns=len(handles), timeout=5)
        except Exception:  # a dead actor cannot shut down politely; it is killed below
            log.debug("delivery server shutdown failed", exc_info=True)
        for handle in handles:
            ray.kill(handle)
        self.servers.clear()

    def _capacity_per_server(self) -> int:
        return self.spec.concurrency + max(2, self.spec.concurrency // 2)

    # -- the dispatch loop ---------------------------------------------------------------

    def _dispatch(
        self, state: _State, ledger: Ledger, progress: ProgressReporter, started: float
    ) -> None:
        while state.ready or state.delayed or state.inflight or state.more:
            self._refill(state)
            self._promote_delayed(state)
            self._submit(state)
            state.peak_inflight = max(state.peak_inflight, len(state.inflight))
            if not state.inflight:
                wait = state.delayed[0][0] - time.monotonic() if state.delayed else 0.1
                time.sleep(min(max(wait, 0.01), 1.0))
                continue
            refs = list(state.inflight)
            done, rest = ray.wait(refs, num_returns=1, timeout=0.5)
            if done and rest:
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                done += more
            for ref in done:
                self._collect(state, ref, ledger)
            self._watch(state)
            self.router.tick()
            if ledger.due():
                ledger.flush()
            progress.update(state.tally)
            self._maybe_resize(state, progress, started)

    def _dispatch_pull(
        self, state: _State, ledger: Ledger, progress: ProgressReporter, started: float
    ) -> None:
        """Pull mode: servers ask the broker for work; the driver answers and reclaims.

        The driver still owns completion: a server that stops asking (or dies) while it
        holds portions has them settled from its journal and handed to the others.
        """
        broker = WorkBrokerActor.remote()
        leased: dict[tuple[int, int], tuple[_Server, Work]] = {}
        loops = {s.name: s.handle.pull.remote(broker) for s in self.servers}
        by_name = {s.name: s for s in self.servers}
        try:
            while state.ready or state.delayed or leased or state.more:
                self._refill(state)
                self._promote_delayed(state)
                poll: BrokerPoll = ray.get(broker.poll.remote())
                for result in poll.results:
                    key = (result.task.portion, result.task.attempt)
                    if key in leased:
                        server, work = leased.pop(key)
                        server.inflight -= 1
                        self._handle_result(state, server, work, result, ledger)
                for _name, task, error in poll.failures:
                    if (task.portion, task.attempt) in leased:
                        server, work = leased.pop((task.portion, task.attempt))
                        server.inflight -= 1
                        self._call_failed(state, server, work, RuntimeError(error), ledger)
                self._offer(state, broker, poll, by_name, leased)
                state.peak_inflight = max(state.peak_inflight, len(leased))
                self._watch(state)  # progress: a server that asks but never finishes
                self._reclaim(state, poll, leased, loops, broker, ledger)
                self.router.tick()
                if ledger.due():
                    ledger.flush()
                progress.update(state.tally)
                self._maybe_resize(state, progress, started)
                for server in self.servers:  # started by resizing or replacement
                    if server.name not in loops:
                        loops[server.name] = server.handle.pull.remote(broker)
                        by_name[server.name] = server
                if not (poll.results or poll.failures):
                    time.sleep(0.05)
        finally:
            ray.get(broker.close.remote())
            ray.wait(list(loops.values()), num_returns=len(loops), timeout=10)
            ray.kill(broker)

    def _offer(
        self,
        state: _State,
        broker: Any,
        poll: BrokerPoll,
        by_name: dict[str, _Server],
        leased: dict[tuple[int, int], tuple[_Server, Work]],
    ) -> None:
        """Answer each healthy server's request through the router."""
        for name, wanted in poll.wanted.items():
            server = by_name.get(name)
            if server is None or not server.healthy or not state.ready:
                continue
            free = min(wanted, self.spec.concurrency - server.inflight)
            if free <= 0:
                continue
            view = ServerView(
                self.servers.index(server), server.name, server.source_address,
                server.inflight, self.spec.concurrency,
            )  # fmt: skip
            works = self._take(view, state.ready, free, idle=not leased)
            if not works:
                continue
            for work in works:
                leased[(work.task.portion, work.task.attempt)] = (server, work)
                server.inflight += 1
                state.attempts += 1
            if server.inflight == len(works):
                server.last_progress = time.monotonic()
            broker.offer.remote(name, [(w.task, ray.put(to_ipc(w.rows))) for w in works])

    def _reclaim(
        self,
        state: _State,
        poll: BrokerPoll,
        leased: dict[tuple[int, int], tuple[_Server, Work]],
        loops: dict[str, ray.ObjectRef[Any]],
        broker: Any,
        ledger: Ledger,
    ) -> None:
        """Take back the portions of servers that died or stopped asking."""
        now_wall = time.time()
        for server in self.servers:
            held = [k for k, (s, _) in leased.items() if s is server]
            loop_ref = loops.get(server.name)
            dead = False
            if loop_ref is not None:
                ready, _ = ray.wait([loop_ref], timeout=0)
                if ready:
                    try:
                        ray.get(ready[0])
                    except (RayActorError, RayTaskError):
                        dead = True
                    del loops[server.name]
                    if dead and server.healthy:
                        loops[server.name] = server.handle.pull.remote(broker)  # restarted
            silent = now_wall - poll.last_seen.get(server.name, now_wall)
            if held and server.healthy and silent > self.spec.stall_timeout_s:
                self._replace(server, f"it stopped asking for work {silent:.0f} s ago")
                dead = True
            if dead:
                for key in held:
                    _, work = leased.pop(key)
                    server.inflight -= 1
                    self._call_failed(
                        state, server, work, RuntimeError("delivery server lost"), ledger
                    )

    def _refill(self, state: _State) -> None:
        """Back-pressure: read the next batch of the list only when the queue runs low.

        The low-water mark is twice what the servers can hold, so they never wait for the
        list; the queue then holds at most that plus one batch's portions.
        """
        source = state.source
        low_water = max(16, 2 * len(self.servers) * self._capacity_per_server())
        while source is not None and not source.exhausted and len(state.ready) < low_water:
            for task, rows in source.next_portions():
                state.ready.push(Work(task, rows))
        state.peak_ready = max(state.peak_ready, len(state.ready))

    def _promote_delayed(self, state: _State) -> None:
        now_ = time.monotonic()
        while state.delayed and state.delayed[0][0] <= now_:
            _, _, work = heapq.heappop(state.delayed)
            state.ready.push(work)

    def _healthy(self) -> list[_Server]:
        healthy = [s for s in self.servers if s.healthy]
        if not healthy and self._replacements < _REPLACEMENTS:
            self._replacements += 1
            log.warning("no healthy delivery server left; starting a replacement")
            self._start_servers(1)
            healthy = [self.servers[-1]]
        if not healthy:
            raise DeliveryError("no healthy delivery server left, and no replacement worked")
        return healthy

    def _submit(self, state: _State) -> None:
        """Let the router fill each healthy server's free capacity (most free first)."""
        if not state.ready:
            return
        cap = self._capacity_per_server()
        now_ = time.monotonic()
        for server in sorted(self._healthy(), key=lambda s: s.inflight):
            free = cap - server.inflight
            if free <= 0 or not state.ready or server.paused_until > now_:
                continue
            view = ServerView(
                self.servers.index(server), server.name, server.source_address,
                server.inflight, cap,
            )  # fmt: skip
            for work in self._take(view, state.ready, free, idle=not state.inflight):
                # Rows enter the object store only when handed out: its use stays
                # bounded by the work in flight, whatever the size of the list.
                ref = server.handle.deliver.remote(work.task, to_ipc(work.rows))
                if server.inflight == 0:
                    server.last_progress = time.monotonic()
                server.inflight += 1
                state.inflight[ref] = (server, work)
                state.attempts += 1

    def _take(self, view: ServerView, queue: WorkQueue, limit: int, *, idle: bool) -> list[Work]:
        """The router's choice of portions; when it hands out nothing while no call is in
        flight anywhere, the queue's next ones instead: whatever a routing policy believes
        (say, that a dead server still holds a domain), the run must go on to its end."""
        works = self.router.take(view, queue, limit)
        if works or not idle or not queue:
            return works
        if not self._starved:
            self._starved = True
            log.warning(
                "the router handed out no work while %d portions wait and none is in "
                "flight; dispatching them least-loaded",
                len(queue),
            )
        return _FALLBACK_ROUTER.take(view, queue, limit)

    def _collect(self, state: _State, ref: ray.ObjectRef[Any], ledger: Ledger) -> None:
        server, work = state.inflight.pop(ref)
        server.inflight -= 1
        try:
            result: PortionResult = ray.get(ref)
        except (RayActorError, RayTaskError) as exc:
            self._call_failed(state, server, work, exc, ledger)
            return
        self._handle_result(state, server, work, result, ledger)

    def _handle_result(
        self, state: _State, server: _Server, work: Work, result: PortionResult, ledger: Ledger
    ) -> None:
        server.last_progress = time.monotonic()
        server.unavailable_since = None
        outcomes = result.outcomes
        observations = result.observations
        ledger.add(outcomes, observations)
        again, backoff = self._settle(state, work, outcomes)
        if len(again):
            self._requeue(state, work, again, delay=backoff)
        self._judge(server, outcomes, work.task.domain)
        self.router.observe(server.name, outcomes, observations)

    def _judge(self, server: _Server, outcomes: pa.Table, domain: str) -> None:
        """Demote a server that keeps failing where the other servers succeed.

        Trouble with one domain only is the router's to handle (it demotes the pair), so
        the whole server is given up only when its streak spans two domains, or is long.
        """
        statuses = outcomes.column("status")
        if _count(statuses, ACCEPTED) or _count(statuses, FAILED) == outcomes.num_rows:
            server.bad_streak = 0
            server.bad_domains.clear()
            return
        server.bad_streak += 1
        server.bad_domains.add(domain)
        others_fine = any(s.healthy and s.bad_streak == 0 for s in self.servers if s is not server)
        widespread = len(server.bad_domains) >= 2 or server.bad_streak >= 3 * _SERVER_FAILURE_LIMIT
        if (
            server.bad_streak >= _SERVER_FAILURE_LIMIT
            and widespread
            and others_fine
            and server.healthy
        ):
            log.warning(
                "delivery server %s keeps failing (%d portions with nothing accepted) while "
                "others deliver; it gets no more work",
                server.name,
                server.bad_streak,
            )
            server.failures = _SERVER_FAILURE_LIMIT
            self.router.server_gone(server.name)

    def _settle(
        self, state: _State, work: Work, outcomes: pa.Table
    ) -> tuple[pa.ChunkedArray | pa.Array, float]:
        """Count final outcomes; say which rows (deferred and, by policy, in doubt) go again,
        and after what backoff. The caller requeues them: one portion attempt must become at
        most one next attempt, since pull mode knows a lease by (portion, attempt)."""
        statuses = outcomes.column("status")
        tally = state.tally
        if work.task.attempt > 1:
            tally.retrying = max(tally.retrying - outcomes.num_rows, 0)
        tally.accepted += _count(statuses, ACCEPTED)
        tally.failed += _count(statuses, FAILED)
        resend_doubt = self.spec.in_doubt == "resend"
        if not resend_doubt:
            tally.in_doubt += _count(statuses, IN_DOUBT)
        again_statuses = [DEFERRED, IN_DOUBT] if resend_doubt else [DEFERRED]
        again = outcomes.filter(pc.is_in(statuses, value_set=pa.array(again_statuses)))
        none = pa.array([], pa.int64())
        if not again.num_rows:
            return none, 0.0
        retry = self.spec.retry
        if work.task.attempt >= retry.max_attempts:
            tally.deferred += _count(again.column("status"), DEFERRED)
            tally.in_doubt += _count(again.column("status"), IN_DOUBT)
            return none, 0.0
        again_rows = again.column("row")
        backoff = min(
            retry.initial_backoff_s * retry.multiplier ** (work.task.attempt - 1),
            retry.max_backoff_s,
        )
        tally.retrying += len(again_rows)
        return again_rows, backoff

    def _requeue(
        self, state: _State, work: Work, rows: pa.ChunkedArray | pa.Array, *, delay: float
    ) -> None:
        """Send some rows of a portion again, as the next attempt, after ``delay``."""
        table = work.rows
        again = table.filter(pc.is_in(table.column("row"), value_set=rows))
        task = PortionTask(
            work.task.portion, work.task.domain, work.task.attempt + 1, again.num_rows
        )
        item = Work(task, again, work.internal_failures)
        heapq.heappush(state.delayed, (time.monotonic() + delay, task.portion, item))

    def _call_failed(
        self, state: _State, server: _Server, work: Work, exc: Exception, ledger: Ledger
    ) -> None:
        """A call died with its actor (or raised): settle from the journal, requeue the rest.

        What the dead server had accepted is never sent again; what it had in flight is in
        doubt; what it never touched goes to another attempt right away.
        """
        if not self._restarting(server, exc):
            server.failures += 1
            work.internal_failures += 1
        self.router.failed(server.name, work.task.portion, work.task.attempt)
        if not server.healthy:
            self.router.server_gone(server.name)
        log.warning("portion %d failed on %s: %s", work.task.portion, server.name, exc)
        rows = work.rows
        journal = self._journal(server.name).filter(
            (pl.col("portion") == work.task.portion) & (pl.col("attempt") == work.task.attempt)
        )
        known = pl.DataFrame(schema={"row": pl.Int64, "attempt": pl.Int32})
        recovered = recovered_outcomes(journal, known, rows, self.spec.campaign)
        again: pa.ChunkedArray | pa.Array = pa.array([], pa.int64())
        backoff = 0.0
        if recovered.num_rows:
            ledger.add(recovered, pa.table({}))
            again, backoff = self._settle(state, work, recovered)
        untouched = pc.filter(
            rows.column("row"),
            pc.invert(pc.is_in(rows.column("row"), value_set=recovered.column("row"))),
        )
        if len(untouched) and work.internal_failures > _INTERNAL_RETRIES:
            failed = rows.filter(pc.is_in(rows.column("row"), value_set=untouched))
            ledger.add(_failed_outcomes(self.spec, work, failed, server.name, exc), pa.table({}))
            state.tally.failed += failed.num_rows
        elif len(untouched):  # never touched: at once, together with what goes again
            again = pa.concat_arrays([_plain(again), _plain(untouched)])
            backoff = 0.0
        if len(again):
            self._requeue(state, work, again, delay=backoff)

    def _restarting(self, server: _Server, exc: Exception) -> bool:
        """True while Ray restarts the server (its node was lost, or its process died).

        Every call it had in flight fails at once, and so does each call sent before it is
        back: counted as failures they would retire a server that comes back healthy (all
        of them, when one node hosted them) and fail portions that never reached it. It
        gets no work for a moment instead; after ``stall_timeout_s`` unavailable, its
        failures count again.
        """
        if not isinstance(exc, ActorUnavailableError):
            return False
        now_ = time.monotonic()
        if server.unavailable_since is None:
            server.unavailable_since = now_
        server.paused_until = now_ + _RESTART_PAUSE_S
        return now_ - server.unavailable_since < self.spec.stall_timeout_s

    def _journal(self, server: str) -> pl.DataFrame:
        """A server's journal states, re-read only when its files changed."""
        files = journal_files(self.rd.path, server)
        key = tuple(f.stat().st_size for f in files)
        cached = self._journals.get(server)
        if cached is None or cached[0] != key:
            cached = (key, journal_states(files))
            self._journals[server] = cached
        return cached[1]

    def _watch(self, state: _State) -> None:
        """Heartbeats through the control group; replace servers that stall with work."""
        now_ = time.monotonic()
        timeout = self.spec.stall_timeout_s
        for server in self.servers:
            if not server.healthy:
                continue
            if server.heartbeat is not None:
                ready, _ = ray.wait([server.heartbeat], timeout=0)
                if ready:
                    try:
                        stats: ServerStats = ray.get(ready[0])
                        seen = now_ - (time.time() - stats.last_progress)
                        if not server.alive:  # the stall clock starts once it runs
                            server.alive = True
                            seen = now_
                        server.unavailable_since, server.paused_until = None, 0.0  # back
                        server.last_progress = max(server.last_progress, seen)
                    except (RayActorError, RayTaskError):
                        pass  # a dead actor shows in its calls; Ray restarts it
                    server.heartbeat = None
                elif server.alive and now_ - server.heartbeat_sent > timeout:
                    self._replace(server, "its heartbeat went unanswered")
                    continue
            if server.heartbeat is None and now_ - server.heartbeat_sent >= _HEARTBEAT_S:
                server.heartbeat = server.handle.heartbeat.remote()
                server.heartbeat_sent = now_
            if server.alive and server.inflight and now_ - server.last_progress > timeout:
                self._replace(server, f"no progress for {timeout:.0f} s")

    def _replace(self, server: _Server, why: str) -> None:
        """Stop a stalled server; its portions come back through _call_failed."""
        log.warning("delivery server %s stalled (%s); reassigning its portions", server.name, why)
        server.failures = _SERVER_FAILURE_LIMIT
        self.router.server_gone(server.name)
        ray.kill(server.handle, no_restart=True)

    def _maybe_resize(self, state: _State, progress: ProgressReporter, started: float) -> None:
        """Once after warm-up: size servers to meet target_minutes (seed: P400 sizing)."""
        spec = self.spec
        if spec.target_minutes is None or self._capacity_checked:
            return
        elapsed = time.monotonic() - started
        settled = state.tally.settled
        if elapsed < _WARMUP_S or settled == 0:
            return
        self._capacity_checked = True
        total = int(self.rd.manifest()["recipients"])
        connections = len(self.servers) * spec.concurrency
        max_servers = spec.max_delivery_servers or max(len(self.servers), delivery_slots())
        plan = size_capacity(
            remaining=total - settled,
            target_s=max(spec.target_minutes * 60 - elapsed, 1.0),
            rate_per_connection=settled / elapsed / connections,
            concurrency=spec.concurrency,
            current_servers=len(self.servers),
            max_servers=max_servers,
        )
        progress.note(plan.message)
        if plan.servers > len(self.servers):
            self._start_servers(plan.servers - len(self.servers))
        self.rd.update(
            capacity={
                "servers": plan.servers,
                "concurrency": plan.concurrency,
                "estimated_s": round(plan.estimated_s, 1),
                "feasible": plan.feasible,
                "message": plan.message,
            },
            delivery_servers=len(self.servers),
        )


def _failed_outcomes(
    spec: CampaignSpec, work: Work, rows: pa.Table, server: str, exc: Exception
) -> pa.Table:
    out = OutcomeBuilder(
        spec.campaign, server, None, work.task.portion, work.task.attempt, work.task.domain
    )
    started = now()
    reason = f"internal error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    for row, email in zip(
        rows.column("row").to_pylist(), rows.column("email").to_pylist(), strict=True
    ):
        out.add(
            row=row,
            email=email,
            status=FAILED,
            smtp_code=None,
            enhanced_status=None,
            response=reason,
            mx_host=None,
            message_id=None,
            started_at=started,
        )
    return out.table()


def _plain(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One int64 array from a column or an array (rows to send again)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values.cast(pa.int64())


def _count(statuses: pa.ChunkedArray | pa.Array, status: str) -> int:
    return int(pc.sum(pc.equal(statuses, status)).as_py() or 0)


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()
