"""The scheduler (the seed's A-server loop over the pending message queue, figure 8).

Every ``review_s`` it: renews the leases of the runs it started; stops runs the user paused
or cancelled; collects runs that ended (``complete`` -> done, seed checkpoint P699, the
entry leaves the queue; a crash -> tried again, then failed with the reason; ``waiting``
for deferred recipients -> queued again, due when they are); and starts the due entries,
highest priority (lowest number) first, each in a run process of its own
(:mod:`raymail.queue.runner`) once it holds the entry's lease. An entry whose lease is gone
while it is ``running`` (its scheduler was killed) is due at once: it is resumed from its
run directory, so it is neither lost nor sent twice.

Message counts are read from the run directories by a thread of their own (the status
watcher) and recorded as status events; the webhook sender delivers them. Neither sits on
the send path: the drivers never wait for the queue. After each review a thread of its
own applies finished campaigns' archive policies and follow-up rules
(:mod:`raymail.queue.aftercare`), a run that has just completed first.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from raymail.errors import RaymailError
from raymail.queue.aftercare import Aftercare, AftercareThread
from raymail.queue.runner import EXIT_COMPLETE, EXIT_LOCKED, EXIT_STOPPED, EXIT_WAITING
from raymail.queue.status import alternate_detail, run_counts
from raymail.queue.store import DONE, FAILED, RUNNING, CampaignQueue, iso
from raymail.queue.webhook import WebhookSender
from raymail.run.rundir import RunDir

log = logging.getLogger(__name__)

LOCKED_RETRY_S = 10.0  # a run directory another driver holds is looked at again after this
STOP_GRACE_S = 20.0  # a stopped run gets this long to write its ledger before SIGKILL


@dataclass
class _Run:
    entry_id: str
    run_dir: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    stopping_since: float | None = None


@dataclass
class SchedulerStats:
    """What a scheduler did (tests and ``raymail scheduler status`` read it)."""

    holder: str
    reviews: int = 0
    started: list[str] = field(default_factory=list)
    finished: dict[str, str] = field(default_factory=dict)
    running: list[str] = field(default_factory=list)


class Scheduler:
    """Reviews one queue and runs its due campaigns; one per process, many per queue."""

    def __init__(
        self,
        queue_url: str | None = None,
        *,
        name: str = "scheduler",
        lease_s: float = 30.0,
        review_s: float = 2.0,
        max_running: int = 4,
        max_failures: int = 3,
        ray_address: str | None = None,
        status_interval_s: float = 2.0,
    ) -> None:
        self.queue = CampaignQueue(queue_url)
        self.queue_url = self.queue.db.url
        self.holder = f"{name}@{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.lease_s = lease_s
        self.review_s = review_s
        self.max_running = max_running
        self.max_failures = max_failures
        self.ray_address = ray_address
        self.stats = SchedulerStats(self.holder)
        self._runs: dict[str, _Run] = {}
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}
        self._stop = threading.Event()
        self._watcher = StatusWatcher(self.queue, status_interval_s)
        self.webhooks = WebhookSender(self.queue)
        self.aftercare = Aftercare(self.queue)  # archive policies and follow-ups
        self._aftercare = AftercareThread(self.aftercare)

    # -- the loop ----------------------------------------------------------------------------

    def run(self, max_s: float | None = None) -> None:
        """Review until :meth:`stop` (or ``max_s``); stops its runs on the way out."""
        ends = None if max_s is None else time.monotonic() + max_s
        self._watcher.start()
        self.webhooks.start()
        self._aftercare.start()
        try:
            while not self._stop.is_set() and (ends is None or time.monotonic() < ends):
                try:
                    self.review()
                except RaymailError as exc:  # a queue that is away for a moment: try again
                    log.warning("scheduler %s: review failed: %s", self.holder, exc)
                self._stop.wait(self.review_s)
        finally:
            self.shutdown()

    def stop(self) -> None:
        self._stop.set()

    def review(self) -> None:
        """One pass over the queue (figure 8 of seed 002)."""
        self.stats.reviews += 1
        self._keep_leases()
        self._collect()
        self._start_due()
        self.stats.running = sorted(self._runs)
        self._aftercare.kick()  # its own thread: an upload never delays a lease renewal

    def shutdown(self) -> None:
        """Stop every run this scheduler started and give their leases up: another
        scheduler (or this one, started again) resumes them."""
        self._watcher.stop()
        self.webhooks.stop()
        self._aftercare.stop()
        for run in list(self._runs.values()):
            _terminate(run)
        deadline = time.monotonic() + STOP_GRACE_S
        for run in list(self._runs.values()):
            try:
                run.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                run.process.kill()
                run.process.wait()
            run.log_file.close()
            self.queue.release(run.entry_id, self.holder)
        self._runs.clear()

    # -- steps -------------------------------------------------------------------------------

    def _keep_leases(self) -> None:
        for entry_id, run in list(self._runs.items()):
            status = self.queue.get(entry_id).status
            if status != RUNNING and run.stopping_since is None:
                log.info("entry %s is %s: stopping its run", entry_id, status)
                _terminate(run)
            if not self.queue.renew(entry_id, self.holder, self.lease_s):
                # Lost (expired while we were stalled): another scheduler may resume it; the
                # run directory's lock keeps two drivers apart, so stop ours.
                log.warning("lease of %s lost: stopping its run", entry_id)
                if run.stopping_since is None:
                    _terminate(run)
            if run.stopping_since is not None and time.monotonic() - run.stopping_since > (
                STOP_GRACE_S
            ):
                run.process.kill()

    def _collect(self) -> None:
        for entry_id, run in list(self._runs.items()):
            code = run.process.poll()
            if code is None:
                continue
            run.log_file.close()
            del self._runs[entry_id]
            self._watcher.forget(entry_id)
            self._ended(entry_id, run, code)

    def _ended(self, entry_id: str, run: _Run, code: int) -> None:
        counts = _safe_counts(run.run_dir)
        if code == EXIT_COMPLETE and counts.get("complete"):
            self.queue.finish(entry_id, self.holder, DONE, counts, "run complete")
            self.aftercare.ended(entry_id)  # archive when_finished, follow-ups: next pass
            self.stats.finished[entry_id] = DONE
            self._failures.pop(entry_id, None)
            return
        if code == EXIT_WAITING and self._wait(entry_id, run):
            return
        if code == EXIT_LOCKED:
            # Another driver (an orphan of a killed scheduler) still sends: look again later.
            self._not_before[entry_id] = time.monotonic() + LOCKED_RETRY_S
            self.queue.release(entry_id, self.holder)
            return
        if code == EXIT_STOPPED or run.stopping_since is not None:
            self.queue.release(entry_id, self.holder)  # paused, cancelled, or we stop
            return
        failures = self._failures.get(entry_id, 0) + 1
        self._failures[entry_id] = failures
        reason = f"run process exited {code}: {_last_line(run.log_path)}"
        if failures >= self.max_failures:
            self.queue.finish(entry_id, self.holder, FAILED, counts, reason)
            self.stats.finished[entry_id] = FAILED
        else:
            self.queue.note_error(entry_id, reason)
            self.queue.release(entry_id, self.holder)
            self._not_before[entry_id] = time.monotonic() + self.review_s * 2**failures

    def _wait(self, entry_id: str, run: _Run) -> bool:
        """The run waits for deferred recipients: queue it again, due when they are (its
        run directory's next_due_at); a resume then sends only those."""
        try:
            manifest = RunDir(run.run_dir).manifest()
            due_at = float(manifest["next_due_at"])
        except (RaymailError, KeyError, TypeError, ValueError) as exc:
            log.warning("entry %s waits but its next due time is unreadable: %s", entry_id, exc)
            return False
        counts = _safe_counts(run.run_dir)
        detail = f"waiting: {manifest.get('waiting', '?')} deferred, next attempt {iso(due_at)}"
        self.queue.wait_until(entry_id, self.holder, due_at, counts, detail)
        self._failures.pop(entry_id, None)
        log.info("entry %s %s", entry_id, detail)
        return True

    def _start_due(self) -> None:
        now = time.monotonic()
        for entry in self.queue.due():
            if len(self._runs) >= self.max_running:
                return
            if entry.id in self._runs or self._not_before.get(entry.id, 0.0) > now:
                continue
            taken = self.queue.take(entry.id, self.holder, self.lease_s)
            if taken is None:
                continue  # another scheduler has it
            self._runs[entry.id] = self._launch(taken.id, taken.run_dir)
            self._watcher.watch(taken.id, taken.run_dir)
            self.stats.started.append(taken.id)

    def _launch(self, entry_id: str, run_dir: str) -> _Run:
        log_path = Path(run_dir).with_name(f"{Path(run_dir).name}.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = log_path.open("ab")
        env = dict(os.environ)
        if self.ray_address:
            env["RAY_ADDRESS"] = self.ray_address
        process = subprocess.Popen(
            [sys.executable, "-m", "raymail.queue.runner", entry_id, "--queue-url", self.queue_url],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a signal to the scheduler's group is not the run's
        )
        log.info("scheduler %s started %s (pid %d)", self.holder, entry_id, process.pid)
        return _Run(entry_id, run_dir, process, log_path, log_file)


class StatusWatcher:
    """Reads each running entry's message counts from its run directory, off the send path,
    and records a status event whenever they change."""

    def __init__(self, queue: CampaignQueue, interval_s: float) -> None:
        self.queue = queue
        self.interval_s = interval_s
        self._watched: dict[str, str] = {}
        self._last: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="raymail-status", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def watch(self, entry_id: str, run_dir: str) -> None:
        with self._lock:
            self._watched[entry_id] = run_dir

    def forget(self, entry_id: str) -> None:
        with self._lock:
            self._watched.pop(entry_id, None)
            self._last.pop(entry_id, None)

    def _loop(self) -> None:
        pause = self.interval_s
        while not self._stop.wait(pause):
            started = time.monotonic()
            with self._lock:
                watched = dict(self._watched)
            for entry_id, run_dir in watched.items():
                counts = _safe_counts(run_dir)
                before = self._last.get(entry_id)
                if counts and counts != before:
                    with self._lock:
                        if entry_id not in self._watched:
                            continue
                        self._last[entry_id] = counts
                    try:
                        detail = alternate_detail(before or {}, counts)
                        self.queue.progress(entry_id, counts, detail)
                    except RaymailError as exc:
                        log.warning("status of %s not recorded: %s", entry_id, exc)
            # A big run's counts take a while to read: never spend more than a tenth of the
            # time reading them.
            pause = max(self.interval_s, 10 * (time.monotonic() - started))


def _safe_counts(run_dir: str) -> dict[str, int]:
    try:
        return run_counts(run_dir)
    except (RaymailError, OSError, ValueError):
        return {}
    except Exception:  # a ledger part being renamed under the reader: next time
        log.debug("counts of %s not readable now", run_dir, exc_info=True)
        return {}


def _terminate(run: _Run) -> None:
    run.stopping_since = time.monotonic()
    if run.process.poll() is None:
        run.process.send_signal(signal.SIGTERM)  # the driver unwinds as on `ray job stop`


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return lines[-1][:500] if lines else "(empty log)"


def describe(stats: SchedulerStats) -> dict[str, Any]:
    return {
        "holder": stats.holder,
        "reviews": stats.reviews,
        "started": list(stats.started),
        "finished": dict(stats.finished),
        "running": list(stats.running),
    }
