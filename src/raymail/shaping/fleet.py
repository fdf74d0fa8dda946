"""Per-MX shaping state shared by all delivery servers of a run (issue 13 part 3).

A receiver limits what it sees from the sender, not what each of the sender's processes
does: 2 delivery servers holding 5 connections each are 10 at the MX. So one Ray actor per
run, :class:`ShapingState` (named by the driver, ``spec.shaping.state_actor``), holds each
MX host's :class:`HostState` for the whole fleet, and each server's :class:`FleetShaper`
leases a share of it.

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

from raymail.shaping.limiter import LocalShaper, new_state
from raymail.shaping.rules import ShapingSettings, rules_of
from raymail.shaping.state import HostState

log = logging.getLogger(__name__)

SYNC_S = 0.25  # a server's lease renewal while it sends
LEASE_S = 2.0  # a lease not renewed in this time lapses
FIRST_ANSWER_S = 10.0  # how long a server waits for the actor's first answer (Ray starting)
_CALL_TIMEOUT_S = 2.0
# After a slow-down reply moved an MX's limits, the others reported within this time are
# counted but do not move them again: they come in batches (a sync's worth, from every
# server) and mostly from connections tried before the cut, so each would cut once more.
HOLDOFF_S = 0.4
TURN_S = 2.0  # how long the odd permit stays with one server before the next gets it


def fair_shares(total: int, demands: dict[str, int], turn: int = 0) -> dict[str, int]:
    """Split ``total`` permits by demand: nobody gets more than it wants, the rest evenly,
    one at a time in name order starting at the ``turn``-th name (so the odd one out, or
    the only one when fewer permits than servers, changes hands as ``turn`` moves on)."""
    shares = dict.fromkeys(demands, 0)
    left = total
    names = sorted(demands)
    if names:
        names = names[turn % len(names) :] + names[: turn % len(names)]
    for _ in range(max(total, 0)):  # bounded: each round hands out at least one
        hungry = [s for s in names if shares[s] < demands[s]]
        if not hungry or left <= 0:
            break
        for server in hungry:
            if left <= 0:
                break
            shares[server] += 1
            left -= 1
    return shares


@dataclass(slots=True)
class _Lease:
    """What the actor knows of one server's hold on one MX."""

    grant: int = 0  # connections granted in the last answer
    open: int = 0  # connections it reported open (in use and idle)
    in_use: int = 0
    demand: int = 0  # connections it uses or waits for
    idle: int = 0  # connections it keeps open unused (reused by its next portion)
    acked: int = 0  # the grant it was working under when it reported
    rate: float | None = None  # its share of the MX's rate in the last answer
    rate_acked: float | None = None
    seen: float = 0.0  # monotonic time of its last sync

    def held(self) -> int:
        """Connections it may hold now: until it reports being down to a lower grant,
        the higher one still counts."""
        return max(self.grant, self.acked, self.open)

    def rate_held(self) -> float:
        return max(self.rate or 0.0, self.rate_acked or 0.0)


@dataclass(slots=True)
class _Host:
    state: HostState
    leases: dict[str, _Lease] = field(default_factory=dict)
    sent: float = 0.0  # messages reported since rate_since
    rate_since: float = 0.0


class ShapingState:
    """The fleet's per-MX state; one actor per run (see the module docstring)."""

    def __init__(
        self, settings: ShapingSettings, start_connections: int, learned: dict[str, Any]
    ) -> None:
        self.settings = settings
        self.rules = rules_of(settings)
        self.start = start_connections
        self.max = settings.max_connections or start_connections
        self.learned = learned
        self.hosts: dict[str, _Host] = {}

    def _host(self, key: str, view: dict[str, Any]) -> _Host:
        host = self.hosts.get(key)
        if host is None:
            learned = self.learned.get(key)
            if learned is None and view.get("limit") is not None:  # a restarted actor
                learned = {"connections": view["limit"], "rate_per_s": view.get("rate")}
            state = new_state(self.settings, key, self.start, self.max, learned)
            host = self.hosts[key] = _Host(state, rate_since=time.monotonic())
        return host

    def sync(self, server: str, report: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Take a server's outcomes and holdings; answer its lease per MX host."""
        now = time.monotonic()
        offset = time.time() - now
        answer: dict[str, dict[str, Any]] = {}
        for key, rep in report.items():
            host = self._host(key, rep)
            for lease_server, lease in list(host.leases.items()):
                if now - lease.seen > LEASE_S * 1.5 and lease_server != server:
                    del host.leases[lease_server]  # went silent: its lease lapsed
            lease = host.leases.setdefault(server, _Lease())
            lease.open, lease.in_use = int(rep["open"]), int(rep["in_use"])
            lease.demand, lease.acked = int(rep["demand"]), int(rep["acked"])
            lease.idle = int(rep.get("idle", 0))
            lease.rate_acked, lease.seen = rep.get("rate_acked"), now
            self._learn(host, server, rep, now)
            answer[key] = self._lease(host, server, lease, now, offset)
        return answer

    def _learn(self, host: _Host, server: str, rep: dict[str, Any], now: float) -> None:
        state = host.state
        others = sum(le.in_use for s, le in host.leases.items() if s != server)
        for code, text, signal, open_ok in rep.get("replies", []):
            if state.backoff_at and now - state.backoff_at < HOLDOFF_S:
                state.throttles += 1  # the same slow-down, reported late or twice
                continue
            state.on_reply(
                self.settings, self.rules, code, text, open_ok + others, now, signal=signal
            )
        if rep.get("successes"):
            state.on_success(self.settings, int(rep["successes"]), now)
        host.sent += float(rep.get("sent", 0))
        if now - host.rate_since >= 1.0:
            state.observed_rate = host.sent / (now - host.rate_since)
            host.sent, host.rate_since = 0.0, now

    def _lease(
        self, host: _Host, server: str, lease: _Lease, now: float, offset: float
    ) -> dict[str, Any]:
        state = host.state
        turn = int(now / TURN_S)
        total = 0
        if state.suspended_until <= now:
            total = max(int(state.limit), self.settings.min_connections)
        # Work first: connections in use or waited for; what is left keeps idle ones open.
        shares = fair_shares(total, {s: le.demand for s, le in host.leases.items()}, turn)
        left = total - sum(shares.values())
        for name in sorted(shares):
            extra = min(left, host.leases[name].idle)
            shares[name] += extra
            left -= extra
        target = shares[server]
        others = sum(le.held() for s, le in host.leases.items() if s != server)
        lease.grant = max(0, min(target, total - others))
        rate = state.allowed_rate()
        if rate is None or state.suspended_until > now:
            lease.rate = None if rate is None else 0.0
        else:
            wanting = sum(le.demand for le in host.leases.values()) or 1
            others_rate = sum(le.rate_held() for s, le in host.leases.items() if s != server)
            lease.rate = max(0.0, min(rate * lease.demand / wanting, rate - others_rate))
        return {
            "grant": lease.grant,
            "rate": lease.rate,
            "limit": state.limit,
            "fleet_rate": rate,
            "messages_per_connection": state.messages_per_connection,
            "reason": state.reason,
            "backoff": state.describe(now, offset) if state.in_backoff(now) else None,
        }

    def states(self) -> list[dict[str, Any]]:
        """Every MX host's limits (for tests and the run's end)."""
        return [
            {"mx_host": h.state.mx_host, "connections": int(h.state.limit), "rate": h.state.rate}
            for h in self.hosts.values()
        ]


ShapingStateActor = ray.remote(num_cpus=0, max_restarts=3)(ShapingState)


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
    successes: int = 0
    sent: int = 0
    replies: list[tuple[int, str, bool, int]] = field(default_factory=list)
    backoff: dict[str, object] | None = None


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
        shaped = super().reply(key, code, text, signal=signal, open_ok=open_ok)
        if shaped:
            self._lease(key).replies.append((code, text, signal, open_ok))
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
                "demand": in_use + lease.waiting,
                "idle": idle,
                "acked": lease.grant if self.shared else in_use + idle,
                "rate_acked": lease.rate if self.shared else None,
                "successes": lease.successes,
                "sent": lease.sent,
                "replies": list(lease.replies),
                "limit": state.limit,
                "rate": state.rate,
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
        del lease.replies[: len(sent["replies"])]
        lease.grant, lease.rate, lease.backoff = int(got["grant"]), got["rate"], got["backoff"]
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


def start_state_actor(
    name: str,
    settings: ShapingSettings,
    start_connections: int,
    learned: dict[str, Any],
    ready_timeout_s: float = 0.0,
) -> Any:
    """The run's shared shaping state (named, so servers and their restarts find it).
    With ``ready_timeout_s``, wait until it answers (servers starting before it would run
    on their own limits meanwhile); a slow start is logged, never fatal."""
    actor: Any = ShapingStateActor.options(name=name, get_if_exists=True).remote(
        settings, start_connections, learned
    )
    if ready_timeout_s > 0:
        try:
            ray.get(actor.states.remote(), timeout=ready_timeout_s)
        except Exception as exc:  # servers fall back to their own state until it answers
            log.warning("shaping state actor %s not ready: %s", name, exc)
    return actor


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
