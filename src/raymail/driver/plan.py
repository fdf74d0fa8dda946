"""What a portion is, and capacity sizing (the seed's delivery lists and process count).

A portion is about ``portion_size`` recipients of one domain: the unit of an actor call, of
routing and of retry, like the seed's one queue file per 100 addresses. The portions are cut
by :class:`raymail.driver.portions.PortionStream` as the list is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PortionTask:
    """What an actor call needs to know about a portion besides its rows."""

    portion: int
    domain: str
    attempt: int
    size: int


@dataclass(frozen=True, slots=True)
class CapacityPlan:
    """How many delivery servers and connections a target time asks for."""

    servers: int
    concurrency: int
    estimated_s: float
    feasible: bool
    message: str


def size_capacity(
    *,
    remaining: int,
    target_s: float,
    rate_per_connection: float,
    concurrency: int,
    current_servers: int,
    max_servers: int,
) -> CapacityPlan:
    """Servers needed to send ``remaining`` messages in ``target_s`` at the measured rate.

    The rate is per connection (messages per second), measured during the run. The result
    never shrinks below the servers already running, and says so when even ``max_servers``
    cannot meet the target.
    """
    rate_per_connection = max(rate_per_connection, 1e-9)
    per_server = rate_per_connection * concurrency
    needed = math.ceil(remaining / (per_server * max(target_s, 1e-9)))
    servers = min(max(needed, current_servers, 1), max_servers)
    estimated = remaining / (per_server * servers)
    feasible = estimated <= target_s * 1.0001
    if feasible:
        message = (
            f"{servers} delivery server(s) x {concurrency} connections: "
            f"about {_duration(estimated)} for {remaining} messages "
            f"(target {_duration(target_s)})"
        )
    else:
        message = (
            f"target of {_duration(target_s)} cannot be met: at the measured "
            f"{rate_per_connection:.1f} msg/s per connection, {max_servers} server(s) x "
            f"{concurrency} connections need about {_duration(estimated)} "
            f"(would need {needed} servers)"
        )
    return CapacityPlan(servers, concurrency, estimated, feasible, message)


def _duration(seconds: float) -> str:
    """Seconds under two minutes, minutes under two hours, else hours."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
