"""A delivery server's counters and backoff, as its heartbeat reports them to the driver.

Liveness is judged from ``since_progress_s``, measured on the server's own monotonic clock,
never from wall clocks compared across nodes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray

from raymail.delivery.pool import ConnectionPool
from raymail.shaping.limiter import LocalShaper
from raymail.status import ACCEPTED, DEFERRED, IN_DOUBT


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


class StatsReporting:
    """The delivery server's counting part (a mixin of :class:`DeliveryServer`)."""

    stats: ServerStats
    _pool: ConnectionPool | None
    _shaper: LocalShaper | None
    _progress_at: float

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

    def _current_stats(self) -> ServerStats:
        self.stats.since_progress_s = time.monotonic() - self._progress_at
        if self._shaper is not None:
            self.stats.backoff = self._shaper.backoff()
        return self.stats


def node_id() -> str:
    """The Ray node this process runs on ("" outside Ray)."""
    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
