"""Per-MX shaping state shared by all delivery servers of a run (issue 13 part 3).

A receiver limits what it sees from the sender, not what each of the sender's processes
does: 2 delivery servers holding 5 connections each are 10 at the MX. So one Ray actor per
run, :class:`ShapingState` (named by the driver, ``spec.shaping.state_actor``), holds each
MX host's :class:`HostState` for the whole fleet, and each server's :class:`FleetShaper`
leases a share of it (the actor itself is in ``shaping/shared_state.py``).

No Ray call per message: a server syncs every ``SYNC_S`` (sooner when a caller waits for a
permit it has not got, or a refusal came), reporting per MX what it holds, what it waits
for, and the outcomes since the last sync (successes, slow-down replies, messages sent);
the answer is its lease until the next sync: a number of connections and a share of the
MX's message rate. Shares follow demand (water-filling); a share taken from one server is
given to another only once the first has reported it is down to it (``held``), so the sum
over the fleet stays within the limit even while shares move. A lease not renewed within
``LEASE_S`` lapses on both sides: the actor stops counting a server that went silent, and
a server that cannot reach the actor falls back to the local state of ``LocalShaper``
(logged), starting from its last lease, and comes back to the shared state when the actor
answers again (a restarted actor re-learns each MX from the servers' reports).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import ray

from raymail.shaping.limiter import LocalShaper
from raymail.shaping.rules import ShapingSettings
from raymail.shaping.shared_state import (
    LEASE_S,
    ShapingState,
    ShapingStateActor,
    fair_shares,
    start_state_actor,
)

log = logging.getLogger(__name__)

SYNC_S = 0.25  # a server's lease renewal while it sends
FIRST_ANSWER_S = 10.0  # how long a server waits for the actor's first answer (Ray starting)
_CALL_TIMEOUT_S = 2.0


class _Pool(Protocol):
    """What the shaper asks of the connection pool (``delivery/pool.py``)."""

    def idle_of(self, key: str) -> int: ...

    def close_idle(self, key: str, count: int) -> None: ...

    def closing_of(self, key: str) -> int: ...


@dataclass(slots=True)
class _Local:
    """This server's side of one MX's lease, and the outcomes not yet reported."""

    grant: int = 0
    rate: float | None = None
    waiting: int = 0
    wanted: int = 0  # spreads denied since the last report (pool.spare asked, no permit)
    successes: int = 0
    sent: int = 0
    replies: list[tuple[int, str, bool, int]] = field(default_factory=list)
    backoff: dict[str, object] | None = None
    mirrored: bool = False  # the local state holds the fleet's limits (an answer came)


class FleetShaper(LocalShaper):
    """A delivery server's limiter when the run's servers share one state (the module
    docstring says how); a ``LocalShaper`` on its own state while the actor is away."""

    def __init__(
        self,
        settings: ShapingSettings,
        start_connections: int,
        server: str,
        actor_name: str,
        learned: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(settings, start_connections, learned)
        self.server = server
        self.actor_name = actor_name
        self.pool: _Pool | None = None  # set by the server: idle connections to trim
        self.leases: dict[str, _Local] = {}
        self.renewed_at = 0.0  # monotonic time of the last answered sync
        self.syncs = 0
        self.fallbacks = 0  # times it fell back to local state
        self._handle: Any = None
        self._kick = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._was_shared = True
        self._started_at = 0.0

    def attach(self, pool: Any) -> None:
        self.pool = pool

    @property
    def shared(self) -> bool:
        """The lease is fresh (or the first answer is still awaited): limits are the
        fleet's, not this process's own."""
        now = time.monotonic()
        if not self.renewed_at:
            return not self._started_at or now - self._started_at < FIRST_ANSWER_S
        return now - self.renewed_at < LEASE_S

    def _lease(self, key: str) -> _Local:
        lease = self.leases.get(key)
        if lease is None:
            lease = self.leases[key] = _Local()
            self.state(key)
        return lease

    # -- the pool's seam ---------------------------------------------------------------------

    def _allowed(self, key: str) -> int:
        if not self._check_shared():
            return super()._allowed(key)
        return self._lease(key).grant

    def rate(self, key: str) -> float | None:
        if not self._check_shared():
            return super().rate(key)
        return self._lease(key).rate

    async def acquire(self, key: str) -> None:
        self._start()
        lease = self._lease(key)
        # Counted as waiting all along (its demand), even if a permit looks free now: the
        # grant may fall before it gets the lock, and a wait nobody reports is never granted.
        lease.waiting += 1
        try:
            if self.in_use.get(key, 0) >= self._allowed(key):
                self._kick.set()  # ask for a share now, not at the next renewal
            await super().acquire(key)
        finally:
            lease.waiting -= 1

    def free(self, key: str) -> bool:
        """A permit for ``key`` would be granted now. A "no" is demand too: a portion that
        would spread over one more connection (``delivery/lanes.py``) asks here and never
        waits, so without counting it the lease would only ever follow the connections in
        use and a slow receiver's portions could never spread past their first lanes."""
        if super().free(key):
            return True
        if self._check_shared():
            self._lease(key).wanted += 1
        return False

    async def pace(self, key: str) -> None:
        self._lease(key).sent += 1
        if self.rate(key) == 0.0:
            self._kick.set()  # no share of the rate yet: ask now
        await super().pace(key)

    def success(self, key: str, transactions: int = 1) -> None:
        self._lease(key).successes += transactions
        super().success(key, transactions)

    def reply(
        self, key: str, code: int, text: str, *, signal: bool = False, open_ok: int | None = None
    ) -> bool:
        if open_ok is None:
            open_ok = self.in_use.get(key, 0) - (1 if signal else 0)
        if signal and self.pool is not None:  # the receiver counts idle and closing ones too
            open_ok += self.pool.idle_of(key) + self.pool.closing_of(key)
        shaped = super().reply(key, code, text, signal=signal, open_ok=open_ok)
        if shaped:
            lease = self._lease(key)
            lease.replies.append((code, text, signal, open_ok))
            if signal and self.shared:
                # Do not retry the refused permit before the fleet's answer: a refused
                # connection frees its permit at once, and its portion would take it again
                # and be refused again, hundreds of times before the next lease.
                floor = self.settings.min_connections
                lease.grant = min(lease.grant, max(self.in_use.get(key, 0), floor))
            self._kick.set()
        return shaped

    def backoff(self) -> list[dict[str, object]]:
        if not self.shared:
            return super().backoff()
        return [lease.backoff for lease in self.leases.values() if lease.backoff is not None]

    # -- the lease ---------------------------------------------------------------------------

    def _check_shared(self) -> bool:
        shared = self.shared
        if shared != self._was_shared:
            self._was_shared = shared
            if shared:
                log.warning(
                    "%s: shaping state actor %s answers again; per-MX limits are the fleet's",
                    self.server,
                    self.actor_name,
                )
            elif self.renewed_at:
                self.fallbacks += 1
                log.warning(
                    "%s: shaping state actor %s does not answer; per-MX limits are this "
                    "server's own (from its last lease) until it does",
                    self.server,
                    self.actor_name,
                )
                for key, lease in self.leases.items():  # start from the last lease
                    host = self.state(key)
                    host.limit = float(max(lease.grant, self.settings.min_connections))
                    if lease.rate is not None:
                        host.rate = max(lease.rate, 0.1)
        return shared

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._started_at = self._started_at or time.monotonic()
            self._task = asyncio.get_running_loop().create_task(self._sync_loop())

    async def _sync_loop(self) -> None:
        for _ in range(100_000_000):  # bounded; ends with the event loop
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), SYNC_S)
            self._kick.clear()
            if self.leases:
                await self.sync()
            await asyncio.sleep(0.02)  # at most ~40 syncs a second, even when kicked

    def _report(self) -> dict[str, dict[str, Any]]:
        report: dict[str, dict[str, Any]] = {}
        for key, lease in self.leases.items():
            in_use = self.in_use.get(key, 0)
            idle = self.pool.idle_of(key) if self.pool is not None else 0
            closing = self.pool.closing_of(key) if self.pool is not None else 0
            state = self.state(key)
            report[key] = {
                "open": in_use + idle + closing,  # the receiver counts closing ones too
                "in_use": in_use,
                # Denied spreads count too; bounded by this server's concurrency (more
                # would hold permits the other servers want).
                "demand": min(in_use + lease.waiting + lease.wanted, self.start),
                "idle": idle,
                "wanted": lease.wanted,
                "acked": lease.grant if self.shared else in_use + idle,
                "rate_acked": lease.rate if self.shared else None,
                "successes": lease.successes,
                "sent": lease.sent,
                "replies": list(lease.replies),
                # What a restarted actor re-learns the MX from: only limits mirrored from
                # the fleet. Before the first answer the local state is this server's own
                # start (its concurrency), which would cap a fresh actor at one server's.
                "limit": state.limit if lease.mirrored else None,
                "rate": state.rate if lease.mirrored else None,
            }
        return report

    async def sync(self) -> bool:
        """Report outcomes and renew the lease; False when the actor did not answer (the
        outcomes are kept for the next try)."""
        report = self._report()
        try:
            if self._handle is None:
                self._handle = ray.get_actor(self.actor_name)
            answer = await asyncio.wait_for(
                self._handle.sync.remote(self.server, report), _CALL_TIMEOUT_S
            )
        except Exception as exc:  # gone, restarting, or slow: local state meanwhile
            log.debug("shaping sync failed: %s", exc)
            self._handle = None
            self._check_shared()
            return False
        self.renewed_at = time.monotonic()
        self.syncs += 1
        for key, got in answer.items():
            self._apply(key, report[key], got)
        self._check_shared()
        self._wake()
        return True

    def _apply(self, key: str, sent: dict[str, Any], got: dict[str, Any]) -> None:
        lease = self._lease(key)
        lease.successes -= int(sent["successes"])  # what arrived meanwhile stays to report
        lease.sent -= int(sent["sent"])
        lease.wanted = max(lease.wanted - int(sent["wanted"]), 0)
        del lease.replies[: len(sent["replies"])]
        lease.grant, lease.rate, lease.backoff = int(got["grant"]), got["rate"], got["backoff"]
        lease.mirrored = True
        host = self.state(key)  # mirrored: what the server saves and falls back to
        host.limit = float(got["limit"])
        fleet_rate = got["fleet_rate"]
        host.rate = None if fleet_rate is None or fleet_rate == host.max_rate else fleet_rate
        host.messages_per_connection = got["messages_per_connection"]
        host.reason = str(got["reason"])
        extra = self.in_use.get(key, 0) + (self.pool.idle_of(key) if self.pool else 0)
        if self.pool is not None and extra > lease.grant:
            self.pool.close_idle(key, extra - lease.grant)  # given back to the fleet

    async def close(self) -> None:
        """Stop renewing (the server is shutting down); report the last outcomes."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.leases and self.shared:
            for lease in self.leases.values():
                lease.waiting = 0
            await self.sync()


def shaper_for(
    settings: ShapingSettings,
    start_connections: int,
    server: str,
    learned: dict[str, dict[str, Any]] | None = None,
) -> LocalShaper:
    """A delivery server's limiter: shared with the fleet when the driver started a state
    actor for the run, else its own."""
    if settings.state_actor:
        return FleetShaper(settings, start_connections, server, settings.state_actor, learned)
    return LocalShaper(settings, start_connections, learned)


__all__ = [
    "FleetShaper",
    "ShapingState",
    "ShapingStateActor",
    "fair_shares",
    "shaper_for",
    "start_state_actor",
]
