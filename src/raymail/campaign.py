"""The driver (the seed's A server): load -> plan -> dispatch -> watch -> retry -> report.

The driver holds Arrow tables and object references, never per-recipient Python objects;
delivery servers do the per-recipient work and hand back Arrow batches.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.exceptions import RayActorError, RayTaskError

from raymail.delivery.records import OutcomeBuilder, from_ipc, now, to_ipc
from raymail.delivery.server import DeliveryServerActor, PortionResult
from raymail.errors import DeliveryError
from raymail.ledger import Ledger
from raymail.plan import PortionTask, size_capacity, split_portions
from raymail.progress import ProgressReporter, Tally
from raymail.recipients import load_recipients, write_rejects
from raymail.report import build_report
from raymail.rundir import REPORT, RunDir, write_json_atomic
from raymail.runtime import DELIVERY_RESOURCE, delivery_slots, ensure_ray
from raymail.schema import ACCEPTED, DEFERRED, FAILED
from raymail.spec import CampaignSpec

log = logging.getLogger(__name__)

_INTERNAL_RETRIES = 2  # re-runs of a portion whose call failed for a reason not SMTP's
_SERVER_FAILURE_LIMIT = 3  # failed calls after which a server gets no more work
_WARMUP_S = 2.0


@dataclass(slots=True)
class _Work:
    """A portion waiting for, or on, a delivery server."""

    task: PortionTask
    rows: ray.ObjectRef[Any]  # the portion's rows, Arrow IPC bytes in the object store
    internal_failures: int = 0


@dataclass(slots=True)
class _Server:
    name: str
    handle: Any
    source_address: str | None
    inflight: int = 0
    failures: int = 0

    @property
    def healthy(self) -> bool:
        return self.failures < _SERVER_FAILURE_LIMIT


@dataclass
class _State:
    ready: deque[_Work] = field(default_factory=deque)
    delayed: list[tuple[float, int, _Work]] = field(default_factory=list)
    inflight: dict[ray.ObjectRef[Any], tuple[_Server, _Work]] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)
    attempts: int = 0


def run_campaign(
    spec: CampaignSpec, run_dir: str | Path, *, live_progress: bool | None = None
) -> dict[str, Any]:
    """Send a campaign and return its report (also written to RUN_DIR/report.json)."""
    return CampaignDriver(spec, RunDir(run_dir), live_progress=live_progress).run()


class CampaignDriver:
    """Runs one campaign in one run directory."""

    def __init__(
        self, spec: CampaignSpec, run_dir: RunDir, *, live_progress: bool | None = None
    ) -> None:
        self.spec = spec
        self.rd = run_dir
        self.live_progress = live_progress
        self.servers: list[_Server] = []
        self._capacity_checked = False

    def run(self) -> dict[str, Any]:
        self.rd.lock()
        try:
            return self._run()
        finally:
            self._stop_servers()
            self.rd.unlock()

    def _run(self) -> dict[str, Any]:
        spec, rd = self.spec, self.rd
        rd.create(spec)
        started = time.time()
        rd.update(status="loading", started_at=_iso(started))
        loaded = load_recipients(spec.recipients)
        write_rejects(loaded.rejects, rd.path)
        table = loaded.table
        rd.update(
            status="planning", recipients=table.num_rows, rejected_input=loaded.rejects.num_rows
        )
        ensure_ray()
        state = _State()
        for task, rows in split_portions(table, spec.portion_size):
            state.ready.append(_Work(task, ray.put(to_ipc(rows))))
        del table, loaded
        self._start_servers(spec.delivery_servers)
        rd.update(
            status="delivering",
            portions=len(state.ready),
            delivery_servers=len(self.servers),
            concurrency=spec.concurrency,
        )
        ledger = Ledger(rd.path, spec.checkpoint_interval_s)
        progress = ProgressReporter(int(rd.manifest()["recipients"]), live=self.live_progress)
        send_started = time.monotonic()
        try:
            self._dispatch(state, ledger, progress, send_started)
        finally:
            ledger.flush()
            progress.close(state.tally)
        elapsed = time.monotonic() - send_started
        rd.update(
            status="complete",
            finished_at=_iso(time.time()),
            elapsed_s=elapsed,
            attempts=state.attempts,
        )
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
        for _ in range(count):
            i = len(self.servers)
            name = f"ds{i}"
            source = (
                spec.source_addresses[i % len(spec.source_addresses)]
                if spec.source_addresses
                else None
            )
            options: dict[str, Any] = {
                "max_concurrency": spec.concurrency,
                "max_restarts": 3,
                "num_cpus": 0,
            }
            if use_resource:
                options["resources"] = {DELIVERY_RESOURCE: 1}
            nameservers = [_host_port(ns) for ns in spec.nameservers] or None
            handle = DeliveryServerActor.options(**options).remote(name, spec, source, nameservers)
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
        while state.ready or state.delayed or state.inflight:
            self._promote_delayed(state)
            self._submit(state)
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
            if ledger.due():
                ledger.flush()
            progress.update(state.tally)
            self._maybe_resize(state, progress, started)

    def _promote_delayed(self, state: _State) -> None:
        now = time.monotonic()
        while state.delayed and state.delayed[0][0] <= now:
            _, _, work = heapq.heappop(state.delayed)
            state.ready.append(work)

    def _submit(self, state: _State) -> None:
        cap = self._capacity_per_server()
        healthy = [s for s in self.servers if s.healthy]
        if not healthy:
            raise DeliveryError("no healthy delivery server left")
        while state.ready:
            server = min(healthy, key=lambda s: s.inflight)
            if server.inflight >= cap:
                return
            work = state.ready.popleft()
            ref = server.handle.deliver.remote(work.task, work.rows)
            server.inflight += 1
            state.inflight[ref] = (server, work)
            state.attempts += 1

    def _collect(self, state: _State, ref: ray.ObjectRef[Any], ledger: Ledger) -> None:
        server, work = state.inflight.pop(ref)
        server.inflight -= 1
        try:
            result: PortionResult = ray.get(ref)
        except (RayActorError, RayTaskError) as exc:
            self._call_failed(state, server, work, exc, ledger)
            return
        ledger.add(result.outcomes, result.observations)
        self._settle(state, work, result.outcomes)

    def _settle(self, state: _State, work: _Work, outcomes: pa.Table) -> None:
        """Count final outcomes and schedule deferred recipients for another attempt."""
        statuses = outcomes.column("status")
        tally = state.tally
        tally.accepted += pc.sum(pc.equal(statuses, ACCEPTED)).as_py() or 0
        tally.failed += pc.sum(pc.equal(statuses, FAILED)).as_py() or 0
        deferred_rows = outcomes.filter(pc.equal(statuses, DEFERRED)).column("row")
        if work.task.attempt > 1:
            tally.retrying -= work.task.size
        if not len(deferred_rows):
            return
        retry = self.spec.retry
        if work.task.attempt >= retry.max_attempts:
            tally.deferred += len(deferred_rows)
            return
        rows = from_ipc(ray.get(work.rows))
        again = rows.filter(pc.is_in(rows.column("row"), value_set=deferred_rows))
        task = PortionTask(
            work.task.portion, work.task.domain, work.task.attempt + 1, again.num_rows
        )
        backoff = min(
            retry.initial_backoff_s * retry.multiplier ** (work.task.attempt - 1),
            retry.max_backoff_s,
        )
        tally.retrying += again.num_rows
        heapq.heappush(
            state.delayed,
            (time.monotonic() + backoff, task.portion, _Work(task, ray.put(to_ipc(again)))),
        )

    def _call_failed(
        self, state: _State, server: _Server, work: _Work, exc: Exception, ledger: Ledger
    ) -> None:
        """A call died with its actor or raised: run the portion again elsewhere."""
        server.failures += 1
        work.internal_failures += 1
        log.warning("portion %d failed on %s: %s", work.task.portion, server.name, exc)
        if work.internal_failures <= _INTERNAL_RETRIES:
            state.ready.appendleft(work)
            return
        rows = from_ipc(ray.get(work.rows))
        ledger.add(_failed_outcomes(self.spec, work, rows, server.name, exc), pa.table({}))
        state.tally.failed += rows.num_rows

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
    spec: CampaignSpec, work: _Work, rows: pa.Table, server: str, exc: Exception
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


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()
