"""The run's one shaping state: the Ray actor that holds each MX's limits for every
delivery server of the run, and hands out leases (the other side is ``shaping/fleet.py``).

Shares follow demand (water-filling, :func:`fair_shares`); a share taken from one server is
given to another only once the first has reported it is down to it, so the fleet's sum stays
within the MX's limit while shares move; a lease not renewed within ``LEASE_S`` lapses.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from raymail.shaping.limiter import new_state
from raymail.shaping.rules import ShapingSettings, rules_of
from raymail.shaping.state import HostState

log = logging.getLogger(__name__)

LEASE_S = 2.0  # a lease not renewed in this time lapses
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
        # What the receiver counts from the other servers: every connection they have
        # open there (idle and closing ones too), not only those in use.
        others = sum(le.open for s, le in host.leases.items() if s != server)
        for code, text, signal, open_ok in rep.get("replies", []):
            held = state.backoff_at and now - state.backoff_at < HOLDOFF_S
            # Refused with exactly one fewer open than the limit: the limit is still one
            # over the receiver's (the cut counted a connection still opening). Within
            # the holdoff too, or the extra permit is refused over and over until it ends.
            one_over = signal and open_ok + others == math.floor(state.limit) - 1
            if held and not one_over:
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
