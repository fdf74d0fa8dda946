"""Pull mode's mailbox (seed 002's alternative): delivery servers ask for work.

In pull mode each delivery server runs a loop that asks this small async actor for as many
portions as it has free connections; the driver reads the requests, lets the router choose
portions, and leaves them here. Finished portions come back the same way. The broker also
remembers when each server last asked, so the driver can reclaim the work of a server that
stopped asking. The broker says how long ago, in seconds on its own monotonic clock, so
no wall clocks are compared across machines.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from raymail.driver.plan import PortionTask

Offer = tuple[PortionTask, Any]  # (task, ObjectRef of the rows as Arrow IPC bytes)


@dataclass
class BrokerPoll:
    """What the driver learns from one poll."""

    wanted: dict[str, int]  # free slots each server announced and was not yet given
    silent_s: dict[str, float]  # seconds since each server's last request (broker's clock)
    results: list[Any] = field(default_factory=list)  # PortionResult objects
    failures: list[tuple[str, PortionTask, str]] = field(default_factory=list)


class WorkBroker:
    """Holds offers per server, requests, results and failures; owns no policy."""

    def __init__(self) -> None:
        self._outbox: dict[str, list[Offer]] = {}
        self._wanted: dict[str, int] = {}
        self._last_seen: dict[str, float] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._results: list[Any] = []
        self._failures: list[tuple[str, PortionTask, str]] = []
        self._closed = False

    def _event(self, server: str) -> asyncio.Event:
        if server not in self._events:
            self._events[server] = asyncio.Event()
        return self._events[server]

    async def take(self, server: str, free: int, wait_s: float = 1.0) -> tuple[list[Offer], bool]:
        """A server asks for up to ``free`` portions; waits briefly when none are ready."""
        self._last_seen[server] = time.monotonic()
        self._wanted[server] = free
        outbox = self._outbox.setdefault(server, [])
        if not outbox and not self._closed and free > 0:
            event = self._event(server)
            event.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), wait_s)
        items = outbox[:free]
        del outbox[:free]
        self._wanted[server] = max(free - len(items), 0)
        self._last_seen[server] = time.monotonic()
        return items, self._closed

    async def offer(self, server: str, items: list[Offer]) -> None:
        self._outbox.setdefault(server, []).extend(items)
        self._wanted[server] = max(self._wanted.get(server, 0) - len(items), 0)
        self._event(server).set()

    async def complete(self, result: Any) -> None:
        self._results.append(result)

    async def failed(self, server: str, task: PortionTask, error: str) -> None:
        self._failures.append((server, task, error))

    async def poll(self) -> BrokerPoll:
        """Requests and finished work since the last poll (results are handed over once)."""
        now = time.monotonic()
        silent = {server: now - seen for server, seen in self._last_seen.items()}
        poll = BrokerPoll(dict(self._wanted), silent)
        poll.results, self._results = self._results, []
        poll.failures, self._failures = self._failures, []
        return poll

    async def close(self) -> None:
        """Tell every server's loop to finish once its own work is done."""
        self._closed = True
        for event in self._events.values():
            event.set()


WorkBrokerActor: Any = ray.remote(num_cpus=0)(WorkBroker)
