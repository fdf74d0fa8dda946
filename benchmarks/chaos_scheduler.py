"""Chaos trials through the queue: the campaign is scheduled, a scheduler runs it, kills hit
the scheduler, its run, or both (``python benchmarks/chaos.py --kinds scheduler,...``).

Each trial queues the campaign in a SQLite queue of its own, starts ``raymail scheduler run``
in a session of its own (it starts the local Ray its runs share; each run is a process in a
session of its own), and once a random share reached the sink kills:

``scheduler``      kill -9 of the scheduler process alone: its run (and Ray) live on as
                   orphans; the next scheduler takes the lease over when it expires, finds
                   the run directory locked by the orphan, waits, and marks the entry done
                   once the orphan completed it (or resumes it if the orphan dies);
``scheduler_run``  kill -9 of the run process (the driver) alone: the scheduler sees it die
                   and starts it again, which resumes the run directory;
``scheduler_all``  kill -9 of the scheduler's session (scheduler, Ray, delivery servers) and
                   of the run at once: the next scheduler resumes it on a fresh Ray.

A new scheduler is started whenever none is alive, until the queue says the entry is done;
with ``--rekill-prob`` one of them is killed again. The counts are those of chaos.py
(missed, duplicates not in doubt, in doubt within the transactions in flight), plus the
queue's view: the entry ``done``, started ``starts`` times.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from chaos import (
    KILL_WAIT_S,
    SCHEDULER_KINDS,
    CaptureCounter,
    Sessions,
    Settings,
    count_trial,
    kill_session,
    sent_or_ended,
    spawn_raymail,
    wait_until,
    write_spec,
)

from raymail.queue.schedule import schedule_campaign
from raymail.queue.store import DONE, FINAL, CampaignQueue
from raymail.sink import SinkConfig, SinkProcess
from raymail.spec import load_spec

LEASE_S = 5.0  # short, so a killed scheduler's lease is taken over quickly
TRIAL_TIMEOUT_S = 1200.0
MAX_SCHEDULERS = 6


class SchedulerTrial:
    """One scheduled campaign, one kill (maybe two), schedulers until the entry is done."""

    def __init__(self, index: int, rng: Any, settings: Settings, folder: Path, env: dict[str, str]):
        self.index = index
        self.rng = rng
        self.settings = settings
        self.folder = folder
        self.run_dir = folder / "run"
        self.capture = folder / "capture"
        self.logs = folder / "logs"
        self.env = env
        self.url = f"sqlite:///{folder / 'queue.sqlite'}"
        self.counter = CaptureCounter(self.capture)
        self.sessions = Sessions()
        self.kills: list[dict[str, Any]] = []
        self.schedulers = 0

    def run(self, kind: str, recipients: Path) -> dict[str, Any]:
        settings, n = self.settings, self.settings.recipients
        started = time.monotonic()
        share = self.rng.uniform(settings.kill_from, settings.kill_to)
        config = SinkConfig(seed=self.index, default={"latency_ms": settings.latency_ms})  # type: ignore[arg-type]
        self.folder.mkdir(parents=True, exist_ok=True)
        with SinkProcess(config, capture_dir=self.capture) as sink:
            spec = write_spec(
                self.folder / "campaign.yaml",
                recipients,
                sink.address,
                servers=settings.servers,
                concurrency=settings.concurrency,
                dispatch=settings.dispatch_of(self.index),
            )
            queue = CampaignQueue(self.url)
            entry = schedule_campaign(queue, load_spec(spec), run_dir=self.run_dir)[0]
            try:
                self._schedule_until_done(queue, entry.id, kind, max(1, int(n * share)))
            finally:
                self.sessions.kill_all()
                self._kill_runs()
        final = queue.get(entry.id)
        result = count_trial(self.run_dir, self.capture, n)
        done = [k for k in self.kills if k["kind"] != "none"]
        bound = max(1, len(done)) * settings.in_flight_per_kill
        result.update(
            trial=self.index,
            kind=kind,
            dispatch=settings.dispatch_of(self.index),
            kill_share_target=round(share, 3),
            kills=self.kills,
            kill_count=len(done),
            resumes=result["report"]["resumes"],
            schedulers=self.schedulers,
            queue_status=final.status,
            queue_starts=final.starts,
            in_flight_bound=bound,
            in_doubt_within_bound=result["in_doubt"] <= bound,
            elapsed_s=round(time.monotonic() - started, 1),
        )
        result["ok"] = bool(
            result["status"] == "complete"
            and final.status == DONE
            and result["missed"] == 0
            and result["duplicates_not_in_doubt"] == 0
            and result["unexpected"] == 0
            and result["in_doubt_within_bound"]
        )
        return result

    def _schedule_until_done(
        self, queue: CampaignQueue, entry_id: str, kind: str, goal: int
    ) -> None:
        deadline = time.monotonic() + TRIAL_TIMEOUT_S
        proc = self._start_scheduler()
        hit = wait_until(sent_or_ended(self.counter, goal, proc), KILL_WAIT_S)
        if hit and proc.poll() is None and queue.get(entry_id).status not in FINAL:
            self.kills.append(self._kill(kind, proc))
        else:
            self.kills.append({"kind": "none", "why": "the run ended before the kill moment"})
        rekilled = False
        while queue.get(entry_id).status not in FINAL and time.monotonic() < deadline:
            if proc.poll() is not None:
                if self.schedulers >= MAX_SCHEDULERS:
                    break
                proc = self._start_scheduler()
            if not rekilled and self.rng.random() < self.settings.rekill_prob:
                rekilled = True
                base = self.counter.poll()
                more = self.rng.randint(1, max(1, (self.settings.recipients - base) // 2))
                sent = sent_or_ended(self.counter, base + more, proc)
                # The scheduler outlives its runs: a run that ends also ends the wait.
                if wait_until(
                    lambda sent=sent: sent() or queue.get(entry_id).status in FINAL,
                    KILL_WAIT_S,
                ) and (proc.poll() is None and queue.get(entry_id).status not in FINAL):
                    record = self._kill(self.rng.choice(list(SCHEDULER_KINDS)), proc)
                    record["second"] = True
                    self.kills.append(record)
                    continue
            wait_until(
                lambda p=proc: queue.get(entry_id).status in FINAL or p.poll() is not None,
                5.0,
                poll_s=0.2,
            )

    def _start_scheduler(self) -> subprocess.Popen[bytes]:
        self.schedulers += 1
        args = [
            "scheduler",
            "run",
            "--queue-url",
            self.url,
            "--lease-s",
            str(LEASE_S),
            "--review-s",
            "0.5",
            "--name",
            f"chaos-{self.schedulers}",
        ]
        return self.sessions.add(
            spawn_raymail(args, self.logs / f"scheduler-{self.schedulers}.log", self.env)
        )

    def _run_pid(self) -> int | None:
        """The driver holding the run directory (its pid is in run.lock while it lives)."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            text = (self.run_dir / "run.lock").read_text()
            pid = int(text.split()[1])
            os.kill(pid, 0)
            return pid
        return None

    def _kill(self, kind: str, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        record: dict[str, Any] = {"kind": kind, "captured_at_kill": self.counter.poll()}
        run_pid = self._run_pid()
        record["run_alive"] = run_pid is not None
        if kind == "scheduler":
            os.kill(proc.pid, signal.SIGKILL)
        elif kind == "scheduler_run":
            if run_pid is None:
                return {"kind": "none", "why": "no run process found"}
            record["processes_killed"] = kill_session(run_pid)
        elif kind == "scheduler_all":
            record["processes_killed"] = kill_session(proc.pid) + (
                kill_session(run_pid) if run_pid else 0
            )
        else:
            raise ValueError(f"unknown scheduler kill kind {kind!r}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10) if kind != "scheduler_run" else None
        return record

    def _kill_runs(self) -> None:
        run_pid = self._run_pid()
        if run_pid is not None:
            kill_session(run_pid)
