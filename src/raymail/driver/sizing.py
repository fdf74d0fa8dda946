"""Sizing the fleet to a target time, once, after warm-up (the seed's P400 sizing).

With ``target_minutes`` set, the driver measures the rate per connection over the first
seconds of sending, asks :func:`raymail.driver.plan.size_capacity` how many servers the
rest needs, starts them, and records the plan in the manifest.
"""

from __future__ import annotations

import time
from typing import Any

from raymail.driver.fleet import Fleet
from raymail.driver.plan import size_capacity
from raymail.driver.progress import ProgressReporter, Tally
from raymail.run.rundir import RunDir
from raymail.runtime import delivery_slots
from raymail.spec import CampaignSpec

WARMUP_S = 2.0


class TargetSizer:
    """Checks each round whether it is time to size; sizes at most once."""

    def __init__(
        self,
        spec: CampaignSpec,
        fleet: Fleet,
        run_dir: RunDir,
        progress: ProgressReporter,
        *,
        total: int,
        started: float,
    ) -> None:
        self.spec = spec
        self.fleet = fleet
        self.run_dir = run_dir
        self.progress = progress
        self.total = total  # recipients of the run
        self.started = started  # time.monotonic() when sending began
        self.done = spec.target_minutes is None

    def check(self, tally: Tally) -> None:
        if self.done:
            return
        elapsed = time.monotonic() - self.started
        settled = tally.settled
        if elapsed < WARMUP_S or settled == 0:
            return
        self.done = True
        spec, fleet = self.spec, self.fleet
        assert spec.target_minutes is not None
        running = len(fleet.servers)
        plan = size_capacity(
            remaining=self.total - settled,
            target_s=max(spec.target_minutes * 60 - elapsed, 1.0),
            rate_per_connection=settled / elapsed / (running * spec.concurrency),
            concurrency=spec.concurrency,
            current_servers=running,
            max_servers=spec.max_delivery_servers or max(running, delivery_slots()),
        )
        self.progress.note(plan.message)
        if plan.servers > running:
            fleet.start(plan.servers - running)
        capacity: dict[str, Any] = {
            "servers": plan.servers,
            "concurrency": plan.concurrency,
            "estimated_s": round(plan.estimated_s, 1),
            "feasible": plan.feasible,
            "message": plan.message,
        }
        self.run_dir.update(capacity=capacity, delivery_servers=len(fleet.servers))
