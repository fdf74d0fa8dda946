"""What the learned policy keeps between calls, in three named parts.

- :class:`Presence`: which servers are around to be planned for (they ask for work, or
  the spec promises them while the run starts).
- :class:`Schedule`: the current plan and what it implies per (server, domain): quotas,
  trial offers, expected costs, and when each server frees a connection.
- :class:`ExplorationBudget`: how many recipients trial pieces took and may still take.
- :class:`GivenBack`: the recipients each server gave back lately, its measured pace.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from raymail.routing.plan import Plan

Pair = tuple[str, str]  # (route key, domain)

ACTIVE_S = 5.0  # a server neither asking nor holding work this long is left out of plans
EXPECTED_GRACE_S = 15.0  # servers the spec promises count as present this long
UNPLANNED_COST_S = 0.05  # connection-seconds per recipient assumed for an unplanned pair
PACE_WINDOW_S = 10.0  # how far back a server's pace is measured


@dataclass
class Presence:
    """Servers that can take work, by when they last asked."""

    expected: Counter[str]  # route keys the spec promises, counted in actors
    started: float  # clock time the router was made
    last_seen: dict[str, float] = field(default_factory=dict)  # actor name -> last ask

    def asked(self, name: str, now: float) -> bool:
        """``name`` asks for work now; True if it is new (the plan must include it)."""
        new = name not in self.last_seen
        self.last_seen[name] = now
        return new

    def gone(self, name: str) -> None:
        """Out of the plans until it asks again."""
        self.last_seen.pop(name, None)

    def active(self, now: float, names: dict[str, str], busy: Iterable[str]) -> Counter[str]:
        """Route keys that can take work now, counted in actors (each has its slots):
        those that asked lately or hold work (``busy`` names), and early in the run
        every server the spec promises."""
        holding = set(busy)
        recent = [n for n, seen in self.last_seen.items() if now - seen < ACTIVE_S or n in holding]
        active = Counter(names[n] for n in recent)
        if now - self.started < EXPECTED_GRACE_S:
            for key, count in self.expected.items():
                active[key] = max(active[key], count)
        return active


@dataclass
class Schedule:
    """The latest plan and what it says about each pair; empty until the first plan."""

    plan: Plan | None = None
    domains: list[str] = field(default_factory=list)  # the plan's columns, in order
    at: float = -math.inf  # clock time it was made
    end: float = math.inf  # clock time it expects the last delivery
    quota: dict[str, dict[str, int]] = field(default_factory=dict)  # key -> domain -> portions
    offers: dict[str, list[str]] = field(default_factory=dict)  # key -> domains to try
    mean: dict[Pair, float] = field(default_factory=dict)  # connection-s per recipient
    usable: set[Pair] = field(default_factory=set)  # pairs the plan may use
    unsure: set[Pair] = field(default_factory=set)  # pairs without enough evidence
    blind: set[str] = field(default_factory=set)  # domains nobody has enough evidence for
    portion_size: dict[str, float] = field(default_factory=dict)  # mean waiting, per domain
    slots: dict[str, float] = field(default_factory=dict)  # connections per route key
    ready: dict[str, float] = field(default_factory=dict)  # when each key frees a slot

    def covers(self, domains: Iterable[str]) -> bool:
        """True if the plan was made for all of ``domains``."""
        return set(domains) <= set(self.domains)

    def cost(self, key: str, domain: str) -> float:
        """Expected connection-seconds per recipient of one pair."""
        return self.mean.get((key, domain), UNPLANNED_COST_S)

    def booked(self, key: str, domain: str, recipients: int, now: float, concurrency: int) -> float:
        """Book a portion onto ``key``'s timeline; returns its expected cost (conn-s)."""
        cost = recipients * self.cost(key, domain)
        slots = self.slots.get(key, float(concurrency))
        self.ready[key] = max(self.ready.get(key, now), now) + cost / slots
        return cost


@dataclass
class ExplorationBudget:
    """Recipients given to trial pieces, against the spec's exploration share."""

    share: float  # the spec's routing.exploration (fraction of all recipients)
    explored: float = 0.0  # recipients given to trial pieces in this run
    given: float = 0.0  # recipients given out in this run
    left: float = 0.0  # recipients trial pieces may still take
    trials: int = 0

    def spend(self, recipients: int, *, trial: bool) -> None:
        self.given += recipients
        if trial:
            self.trials += 1
            self.explored += recipients
            self.left -= recipients

    def renew(self, waiting: float) -> None:
        """After a plan: the share of everything given and waiting, less what was used."""
        self.left = self.share * (self.given + waiting) - self.explored


@dataclass
class GivenBack:
    """Recipients each route key gave back over the last ``PACE_WINDOW_S``: the pace it
    really keeps (shaping may hold it to fewer connections than the plan counts)."""

    first: dict[str, float] = field(default_factory=dict)  # key -> when it was first handed work
    back: dict[str, deque[tuple[float, int]]] = field(default_factory=dict)

    def handed(self, key: str, now: float) -> None:
        self.first.setdefault(key, now)

    def add(self, key: str, now: float, recipients: int) -> None:
        self.back.setdefault(key, deque()).append((now, recipients))

    def pace(self, key: str, now: float) -> float | None:
        """Recipients per second given back over the last window; None until ``key`` has
        had work for a whole window (a ramping server's early pace says too little)."""
        if now - self.first.get(key, now) < PACE_WINDOW_S:
            return None
        back = self.back.get(key, deque())
        while back and now - back[0][0] > PACE_WINDOW_S:
            back.popleft()
        return sum(n for _, n in back) / PACE_WINDOW_S
