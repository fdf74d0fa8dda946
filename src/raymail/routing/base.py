"""What every routing policy shares: learning from finished portions, probing, persisting.

Policies differ only in ``take`` (which portions a server gets). Whatever the policy, each
finished portion adds evidence, probes run on schedule, and the evidence reaches the
routing table: every few seconds, and whenever all work handed out has come back with
nothing left waiting (so a run's last evidence is saved before the driver returns).
Baseline runs therefore teach the table too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
import pyarrow as pa

from raymail.driver.dispatch import ServerView, Work, WorkQueue
from raymail.routing.model import Evidence, PortionEvidence, portion_evidence, route_key
from raymail.routing.runlog import SERVERS, RunRecords
from raymail.routing.scheduler import ProbeScheduler
from raymail.routing.table import RoutingTable, probes_by_route
from raymail.spec import CampaignSpec

log = logging.getLogger(__name__)

FLUSH_S = 10.0  # longest time evidence stays only in memory during a run
_STALE_FACTOR = 20.0  # a handed-out portion unheard of this many times its cost is dropped
_STALE_MIN_S = 300.0
_HOUSEKEEPING_S = 0.5

ServerHandles = Callable[[], Mapping[str, Any]]  # actor name -> handle, healthy servers


@dataclass(slots=True)
class Given:
    """A portion handed to a server and not yet back."""

    name: str
    key: str
    domain: str
    size: int
    attempt: int
    cost_s: float  # expected connection-seconds when it was handed out
    at: float


def expected_keys(spec: CampaignSpec) -> list[str]:
    """Route keys of the servers the driver will start (names ds0, ds1, ...)."""
    addresses = spec.source_addresses
    return [
        route_key(f"ds{i}", addresses[i % len(addresses)] if addresses else None)
        for i in range(spec.delivery_servers)
    ]


class BaseRouter:
    """Router plumbing; subclasses implement :meth:`take`. Every router satisfies
    :class:`raymail.driver.dispatch.Router`, the driver's side of the seam."""

    policy: ClassVar[str] = "base"

    def __init__(
        self,
        spec: CampaignSpec,
        *,
        run_dir: str | Path | None = None,
        servers: ServerHandles | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        settings = spec.routing
        self.spec = spec
        self.settings = settings
        self.table = RoutingTable(settings.table)
        self.half_life_s = settings.half_life_days * 86400.0
        self.clock = clock
        self.started = clock()
        self.delta = Evidence()
        self.names: dict[str, str] = {}  # actor name -> route key
        self.outstanding: dict[int, Given] = {}  # by portion id
        self.seen_domains: dict[str, None] = {}
        self._probe_delta: list[pl.DataFrame] = []
        self._last_flush = self.started
        self._last_housekeeping = self.started
        self.records = RunRecords(run_dir) if run_dir is not None else None
        self.scheduler: ProbeScheduler | None = None
        if settings.probe and servers is not None:
            self.scheduler = ProbeScheduler(
                servers,
                interval_s=settings.probe_interval_s,
                timeout_s=settings.probe_timeout_s,
                max_hosts=settings.probe_max_hosts,
                clock=clock,
            )
        if self.records is not None:
            self.records.write_policy(self.policy, settings.model_dump(), self.table.path)

    # -- the Router protocol --------------------------------------------------------------

    def take(self, server: ServerView, queue: WorkQueue, limit: int) -> list[Work]:
        raise NotImplementedError

    def observe(self, server: str, outcomes: pa.Table, observations: pa.Table) -> None:
        """Add a finished portion's evidence; let the policy learn from it."""
        key = self.names.get(server) or route_key(server, _source(outcomes))
        evidence = portion_evidence(key, outcomes, observations)
        self.delta.add(evidence)
        given = self._returned(outcomes)
        self.learn(key, evidence, given)
        now = self.clock()
        if now - self._last_housekeeping >= _HOUSEKEEPING_S:  # a driver that never ticks
            self._last_housekeeping = now
            self._drop_stale(now)
            self._flush_due(now, idle=False)

    def tick(self, queue: WorkQueue) -> None:
        """Called by the driver once per round with the queue as it stands: probes, and
        saving evidence when due (at once when nothing is out and nothing waits, so a
        run's last evidence is saved before the driver returns). Never blocks."""
        now = self.clock()
        self._last_housekeeping = now
        if self.scheduler is not None:
            for table in self.scheduler.poll(lambda: self.probe_domains(queue.domains())):
                self._probed(pl.from_arrow(table))  # type: ignore[arg-type]
        self._drop_stale(now)
        self._flush_due(now, idle=not self.outstanding and not queue)

    def _flush_due(self, now: float, *, idle: bool) -> None:
        pending = bool(self.delta) or bool(self._probe_delta)
        if pending and (idle or now - self._last_flush >= FLUSH_S):
            self.flush()

    def close(self) -> None:
        """Save what is left (the driver may call this when the run ends)."""
        self.flush()

    def failed(self, server: str, portion: int, attempt: int) -> None:
        """A portion's call died without a result: it no longer holds the server."""
        given = self.outstanding.get(portion)
        if given is not None and given.name == server and given.attempt == attempt:
            del self.outstanding[portion]

    def server_gone(self, server: str) -> None:
        """The driver gave up on a server (stalled, dead, failing): forget what it held."""
        for portion in [p for p, g in self.outstanding.items() if g.name == server]:
            del self.outstanding[portion]

    # -- hooks for policies ----------------------------------------------------------------

    def learn(self, key: str, evidence: PortionEvidence, given: Given | None) -> None:
        """A portion came back; ``given`` is how it was handed out (None if unknown)."""

    def on_probes(self, probes: pl.DataFrame) -> None:
        """Probe results arrived (``server`` holds route keys)."""

    def record_state(self) -> None:
        """Write the policy's own files into the run directory (at each flush)."""

    def probe_domains(self, waiting: list[str]) -> list[str]:
        """Domains whose MX hosts are worth probing: those with ``waiting`` work first."""
        return list(dict.fromkeys([*waiting, *self.seen_domains]))

    # -- shared helpers --------------------------------------------------------------------

    def register(self, server: ServerView) -> str:
        key = self.names.get(server.name)
        if key is None:
            key = self.names[server.name] = route_key(server.name, server.source_address)
        return key

    def give(self, server: ServerView, key: str, work: Work, cost_s: float) -> None:
        task = work.task
        self.outstanding[task.portion] = Given(
            server.name, key, task.domain, task.size, task.attempt, cost_s, self.clock()
        )
        self.seen_domains.setdefault(task.domain, None)

    def elapsed(self) -> float:
        return self.clock() - self.started

    def flush(self) -> None:
        """Merge new evidence and probes into the table; rewrite the run's routing files."""
        now = datetime.now(UTC)
        probes = pl.concat(self._probe_delta, how="diagonal_relaxed") if self._probe_delta else None
        try:
            self.table.merge(self.delta.frame(now), probes, self.half_life_s, now)
        except OSError as exc:  # a full or read-only disk must not stop sending
            log.warning("cannot save the routing table in %s: %s", self.table.path, exc)
        else:
            self.delta.clear()
            self._probe_delta.clear()
        self._last_flush = self.clock()
        if self.records is not None:
            names = pl.DataFrame(
                {"name": list(self.names), "server": list(self.names.values())},
                schema={"name": pl.String, "server": pl.String},
            )
            self.records.write(SERVERS, names)
            self.record_state()
            self.records.flush()

    def _returned(self, outcomes: pa.Table) -> Given | None:
        if not outcomes.num_rows:
            return None
        portion = int(outcomes.column("portion")[0].as_py())
        attempt = int(outcomes.column("attempt")[0].as_py())
        given = self.outstanding.get(portion)
        if given is None or given.attempt != attempt:
            return None
        return self.outstanding.pop(portion)

    def _drop_stale(self, now: float) -> None:
        """Forget portions whose call died without a result (they come back requeued)."""
        stale = [
            portion
            for portion, given in self.outstanding.items()
            if now - given.at > max(_STALE_MIN_S, _STALE_FACTOR * given.cost_s)
        ]
        for portion in stale:
            del self.outstanding[portion]

    def _probed(self, frame: pl.DataFrame) -> None:
        keyed = probes_by_route(frame)
        if self.records is not None:
            self.records.add_probes(frame)
        self._probe_delta.append(keyed)
        self.on_probes(keyed)


def _source(outcomes: pa.Table) -> str | None:
    if not outcomes.num_rows or "source_address" not in outcomes.column_names:
        return None
    value = outcomes.column("source_address")[0].as_py()
    return str(value) if value else None
