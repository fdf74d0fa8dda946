"""When probes run: each delivery server at most once per interval, one round at a time.

The driver's tick sends ``probe`` calls (they run in the server's control concurrency
group, beside heartbeats, never in a send slot) and picks up the answers without waiting:
``ray.wait`` with a zero timeout. A round that does not answer in time is given up and
recorded; a server that cannot probe (no ``probe`` method, dead actor) is recorded too.
Nothing here can fail the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import ray

from raymail.delivery.records import from_ipc
from raymail.routing.probes import PROBE_SCHEMA

log = logging.getLogger(__name__)
_GRACE_S = 5.0  # beyond the round's own timeout, before a call is given up


@dataclass(slots=True)
class _Pending:
    ref: Any
    sent: float


class ProbeScheduler:
    """Sends probe rounds to the servers ``servers()`` names and collects the answers."""

    def __init__(
        self,
        servers: Callable[[], Mapping[str, Any]],
        *,
        interval_s: float,
        timeout_s: float,
        max_hosts: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._servers = servers
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.max_hosts = max_hosts
        self._clock = clock
        self._due: dict[str, float] = {}
        self._pending: dict[str, _Pending] = {}
        self.rounds = 0

    def poll(self, domains: Callable[[], list[str]]) -> list[pa.Table]:
        """Start due rounds, collect finished ones; never blocks."""
        now = self._clock()
        done = self._collect(now)
        try:
            handles = dict(self._servers())
        except Exception:  # the driver's view of its servers is being rebuilt
            return done
        wanted: list[str] | None = None
        for name, handle in handles.items():
            if name in self._pending or now < self._due.get(name, 0.0):
                continue
            if wanted is None:
                wanted = domains()[: 4 * self.max_hosts]
            if not wanted:
                break
            self._due[name] = now + self.interval_s
            try:
                ref = handle.probe.remote(wanted, self.timeout_s, self.max_hosts)
            except Exception as exc:  # e.g. an actor class without probe()
                done.append(failure_table(name, f"probe call failed: {exc}"))
                continue
            self._pending[name] = _Pending(ref, now)
            self.rounds += 1
        return done

    def _collect(self, now: float) -> list[pa.Table]:
        if not self._pending:
            return []
        names = {p.ref: n for n, p in self._pending.items()}
        refs = [p.ref for p in self._pending.values()]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        tables: list[pa.Table] = []
        for ref in ready:
            name = names[ref]
            del self._pending[name]
            try:
                tables.append(from_ipc(ray.get(ref)))
            except Exception as exc:  # a dead actor or a failing probe: recorded
                tables.append(failure_table(name, f"probe call failed: {type(exc).__name__}"))
        for name, pending in list(self._pending.items()):
            if now - pending.sent > self.timeout_s + _GRACE_S:
                del self._pending[name]
                tables.append(failure_table(name, "probe round did not answer in time"))
        return tables


def failure_table(server: str, why: str) -> pa.Table:
    """One probe row for a server whose round could not run, saying why."""
    log.info("probe of %s: %s", server, why)
    row: dict[str, Any] = dict.fromkeys(PROBE_SCHEMA.names)
    row.update(server=server, method="tcp", error=why, at=datetime.now(UTC))
    return pa.Table.from_pylist([row], schema=PROBE_SCHEMA)
