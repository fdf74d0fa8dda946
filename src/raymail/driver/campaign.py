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

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from raymail._io import write_json_atomic
from raymail.compose.checks import recipient_checks
from raymail.compose.preflight import check_templates
from raymail.delivery.envelope import sender_setup_warnings
from raymail.delivery.journal import FENCE_WAIT_S, JOURNAL_DIR, journal_files, write_fence
from raymail.driver.alternates import NO_RESUME_HOPS, resume_hops
from raymail.driver.dispatch import Router, WorkQueue
from raymail.driver.fleet import Fleet, Server
from raymail.driver.loop import DispatchLoop, DispatchState
from raymail.driver.portions import PortionStream
from raymail.driver.progress import ProgressReporter, Tally
from raymail.driver.reroute import NO_RESUME_BLOCKED, resume_blocked, server_key
from raymail.driver.sizing import TargetSizer
from raymail.intake.recipients import intake_recipients
from raymail.intake.staging import stage_recipients
from raymail.returns.ledger_import import record_run_rejections
from raymail.routing import make_router
from raymail.run.export import start_export
from raymail.run.ledger import Ledger
from raymail.run.recovery import run_state
from raymail.run.report import RunReport, build_report
from raymail.run.rundir import RECIPIENTS, REPORT, RunDir
from raymail.runtime import ensure_ray
from raymail.spec import CampaignSpec
from raymail.status import (
    ACCEPTED,
    DEFERRED,
    EXPIRED,
    FAILED,
    IN_DOUBT,
    SUPPRESSED,
    InDoubtPolicy,
)

log = logging.getLogger(__name__)

# Stages, in order (the seed's P100 .. P699). WAITING: only deferrals due later are left
# (deferral queue); the process ended and a resume continues the run when they are due.
LOADING, PLANNED, DELIVERING, COMPLETE = "loading", "planned", "delivering", "complete"
WAITING = "waiting"


def run_campaign(
    spec: CampaignSpec, run_dir: str | Path, *, live_progress: bool | None = None
) -> RunReport:
    """Send a campaign and return its report (also written to RUN_DIR/report.json)."""
    return CampaignDriver(spec, RunDir(run_dir), live_progress=live_progress).run()


def resume_campaign(
    run_dir: str | Path,
    *,
    in_doubt: InDoubtPolicy | str | None = None,
    live_progress: bool | None = None,
) -> RunReport:
    """Continue a killed or stopped run: accepted recipients are never sent again."""
    rd = RunDir(run_dir)
    spec = rd.spec()
    if in_doubt is not None:
        on_failure = spec.on_failure.model_copy(update={"in_doubt": None})  # the option wins
        spec = spec.model_copy(
            update={"in_doubt": InDoubtPolicy(in_doubt), "on_failure": on_failure}
        )
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
        router = make_router(spec, run_dir=run_dir.path, servers=lambda: self.fleet.handles())
        self.fleet = Fleet(spec, run_dir.path, router)
        self._resume_hops = NO_RESUME_HOPS
        self._resume_blocked = NO_RESUME_BLOCKED

    @property
    def router(self) -> Router:
        return self.fleet.router

    @router.setter
    def router(self, router: Router) -> None:
        """Another router (benchmarks compare policies); set it before :meth:`run`."""
        self.fleet.router = router

    @property
    def servers(self) -> list[Server]:
        """The delivery servers started so far (tests watch their placement)."""
        return self.fleet.servers

    def run(self) -> RunReport:
        self.rd.lock()
        try:
            export = start_export(self.spec, self.rd.path)  # a bad bucket fails here
            try:
                return self._resume() if self.resume else self._start()
            finally:
                self.fleet.stop()
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

    def _start(self) -> RunReport:
        spec, rd = self.spec, self.rd
        rd.create(spec)
        for warning in sender_setup_warnings(spec):  # HELO name, DKIM alignment
            log.warning("%s", warning)
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
            row_check=recipient_checks(spec),  # attachments and certificates it will need
            encoding=spec.recipients_encoding,
        )
        ledger.flush()
        check_templates(spec, rd.path / RECIPIENTS)  # before the plan: nothing is sent
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

    def _resume(self) -> RunReport:
        rd = self.rd
        manifest = rd.manifest()
        if manifest.get("status") == COMPLETE:
            note = "the run was already complete: nothing was sent"
            return build_report(rd.path).model_copy(update={"note": note})
        due = manifest.get("next_due_at")
        due_at = float(due) if isinstance(due, int | float) else 0.0
        if manifest.get("status") == WAITING and due_at > time.time():  # nothing due yet
            note = (
                f"waiting: the next attempt is due at {_iso(due_at)} "
                f"(in {_span(due_at - time.time())}); nothing was sent"
            )
            return build_report(rd.path).model_copy(update={"note": note})
        if not (rd.path / RECIPIENTS).exists():  # killed before the list was saved
            rd.manifest_path.unlink()
            return self._start()
        check_templates(self.spec, rd.path / RECIPIENTS)
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
        self.fleet.epoch = epoch
        self.fleet.start(self.spec.delivery_servers)
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
        resend_doubt = self.spec.resends_in_doubt
        settled_statuses = [ACCEPTED, FAILED, EXPIRED, SUPPRESSED]
        settled_statuses += [] if resend_doubt else [IN_DOUBT]
        recipients = self.rd.path / RECIPIENTS
        keys = {server_key(s) for s in self.fleet.servers if s.healthy}
        blocked = resume_blocked(self.spec, self.rd.path, recipients, final, keys)
        again = pl.col("row").is_in(blocked.rows.tolist())  # via another server, not the list
        hops = resume_hops(self.spec, self.rd.path, recipients, final.filter(~again))
        owed = np.union1d(hops.rows, blocked.rows)
        going_on = pl.col("row").is_in(owed.tolist())  # to an alternate or another server
        is_settled = pl.col("status").is_in(settled_statuses) & ~going_on
        settled = final.filter(is_settled)
        tally = Tally(
            accepted=int((settled["status"] == ACCEPTED).sum()),
            failed=int((settled["status"] == FAILED).sum()),
            in_doubt=int((settled["status"] == IN_DOUBT).sum()),
            expired=int((settled["status"] == EXPIRED).sum()),
            retrying=len(hops.hops) + blocked.rows.size,
        )
        tried = final.filter(~is_settled & ~going_on).sort("row")
        first_portion = int(final.get_column("portion").cast(pl.Int64).max() or 0) + 1  # type: ignore[arg-type]
        first, due = self._deferral_times(tried)
        skip = np.union1d(settled["row"].cast(pl.Int64).to_numpy(), owed)
        source = PortionStream(
            self.rd.path / RECIPIENTS,
            self.spec.portion_size,
            first_id=first_portion,
            batch_rows=self.spec.batch_rows,
            skip=skip,
            prev_rows=tried["row"].cast(pl.Int64).to_numpy(),
            prev_attempts=tried["attempt"].cast(pl.Int64).to_numpy(),
            prev_first=first,
            prev_due=due,
        )
        self._resume_hops = hops
        self._resume_blocked = blocked
        return source, tally

    def _deferral_times(
        self, tried: pl.DataFrame
    ) -> tuple[npt.NDArray[np.float64] | None, npt.NDArray[np.float64] | None]:
        """With a deferral queue: (first-attempt time, time due again) of each row tried and
        not settled (Unix seconds). A deferred row is due its schedule's delay after its last
        attempt ended, and never later than its max_age (its last try); an in-doubt one (to
        resend) at once."""
        retry = self.spec.retry
        if not retry.deferral_queue or "first_at" not in tried.columns:
            return None, None
        steps = len(retry.schedule)
        delay = {step: retry.delay(step) for step in range(1, steps + 1)}
        times = tried.select(
            (pl.col("first_at").dt.epoch("us") / 1e6).alias("first"),
            (pl.col("finished_at").dt.epoch("us") / 1e6).alias("last"),
            pl.col("attempt").clip(1, steps).replace_strict(delay, return_dtype=pl.Float64)
            .alias("delay"),
            pl.col("status"),
        ).select(
            pl.col("first").fill_null(pl.col("last")),
            pl.when(pl.col("status") == DEFERRED)
            .then(pl.min_horizontal(pl.col("last") + pl.col("delay"),
                                    pl.col("first") + retry.max_age_s))
            .otherwise(0.0)
            .fill_null(0.0)
            .alias("due"),
        )  # fmt: skip
        return times["first"].to_numpy(), times["due"].to_numpy()

    def _deliver(self, source: PortionStream, tally: Tally) -> RunReport:
        """Dispatch the portions of ``source`` until every row is settled."""
        spec, rd, fleet = self.spec, self.rd, self.fleet
        ensure_ray()
        state = DispatchState(tally=tally, source=source, ready=WorkQueue(new_id=source.new_id))
        fleet.start(spec.delivery_servers - len(fleet.servers))  # a resume started some
        self._stage(
            DELIVERING,
            batch_rows=spec.batch_rows,
            delivery_servers=len(fleet.servers),
            concurrency=spec.concurrency,
        )
        manifest = rd.manifest()  # read once: nothing below needs it again until the end
        ledger = Ledger(rd.path, spec.checkpoint_interval_s)
        total = int(manifest["recipients"])
        progress = ProgressReporter(total, live=self.live_progress)
        started = time.monotonic()
        sizer = TargetSizer(spec, fleet, rd, progress, total=total, started=started)
        loop = DispatchLoop(
            spec, fleet, self.router, ledger, progress, state,
            each_round=lambda: sizer.check(state.tally),
        )  # fmt: skip
        loop.queue_hops(self._resume_hops.works(source.new_id))  # hops a kill interrupted
        loop.queue_blocked(self._resume_blocked.works(source.new_id))  # and blocked retries
        try:
            loop.run()
        finally:
            ledger.flush()
            self.router.close()  # what the run learned reaches the routing table
            progress.close(state.tally)
            elapsed = time.monotonic() - started
            stream = {
                "batches": source.batches,
                "portions": source.portions,
                "peak_ready_portions": state.peak_ready,
                "peak_inflight_portions": state.peak_inflight,
            }
            rd.update(
                backoff=fleet.final_backoff(),  # MX hosts in backoff at the end (report, status)
                elapsed_s=float(manifest.get("elapsed_s") or 0.0) + elapsed,
                attempts=int(manifest.get("attempts") or 0) + state.attempts,
                stream=stream,
            )
        record_run_rejections(spec, rd.path)  # send-time 5xx feed the suppression list
        if state.waiting_until is not None:  # only deferrals due later: wait for them
            waiting = sum(work.task.size for _, _, work in state.delayed)
            self._stage(WAITING, next_due_at=state.waiting_until, waiting=waiting)
            log.warning(
                "raymail: %d recipient(s) deferred; the next attempt is due at %s: "
                "'raymail resume %s' then (or the queue scheduler does it)",
                waiting, _iso(state.waiting_until), rd.path,
            )  # fmt: skip
            report = build_report(rd.path)
            write_json_atomic(rd.path / REPORT, report.as_json())
            return report
        self._stage(COMPLETE, finished_at=_iso(time.time()), next_due_at=None, waiting=0)
        for path in journal_files(rd.path):  # the ledger now holds all they said
            path.unlink()
        report = build_report(rd.path)
        write_json_atomic(rd.path / REPORT, report.as_json())
        return report


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _span(seconds: float) -> str:
    """``1h 05m``, ``4m 10s`` or ``12s``: how long until something is due."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"
