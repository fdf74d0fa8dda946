"""The seam between the driver and routing: queued work, server views, and the Router.

The driver keeps portions in a :class:`WorkQueue` (one FIFO per domain) and, whenever a
delivery server has free capacity (push mode) or asks for work (pull mode), lets the
:class:`Router` choose which portions that server takes. Routing policies (learned, round
robin, equal shares) live in ``raymail.routing`` and only implement :class:`Router`.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import pyarrow as pa

from raymail.driver.plan import PortionTask


@dataclass(slots=True)
class Work:
    """A portion waiting for, or on, a delivery server."""

    task: PortionTask
    rows: pa.Table  # the portion's rows (a zero-copy slice of the planned list)
    internal_failures: int = 0
    # Delivery servers (source address, else name) that refused these rows as blocked:
    # such work is handed only to another server (driver/reroute.py), never via the router.
    avoid: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ServerView:
    """What a router may know about a delivery server when it hands out work."""

    index: int
    name: str
    source_address: str | None
    inflight: int  # portions submitted and not yet returned
    capacity: int  # portions it may hold at once


class WorkQueue:
    """Ready portions, one FIFO per domain; domains are served in turn.

    ``new_id`` hands out fresh portion ids; with it, :meth:`pop` can cut a smaller piece
    off a portion (a router's trial), which then travels under its own id so the ledger,
    journals and leases never see two pieces under one (portion, attempt).
    """

    def __init__(self, new_id: Callable[[], int] | None = None) -> None:
        self._by_domain: OrderedDict[str, deque[Work]] = OrderedDict()
        self._count = 0
        self.new_id = new_id

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def push(self, work: Work, *, front: bool = False) -> None:
        queue = self._by_domain.get(work.task.domain)
        if queue is None:
            queue = self._by_domain[work.task.domain] = deque()
        if front:
            queue.appendleft(work)
            self._by_domain.move_to_end(work.task.domain, last=False)
        else:
            queue.append(work)
        self._count += 1

    def domains(self) -> list[str]:
        """Domains with work waiting, in serving order."""
        return list(self._by_domain)

    def waiting(self, domain: str) -> int:
        """Recipients waiting for ``domain``."""
        queue = self._by_domain.get(domain)
        return sum(w.task.size for w in queue) if queue else 0

    def pop(self, domain: str | None = None, *, at_most: int | None = None) -> Work | None:
        """The oldest portion of ``domain`` (or of the next domain in turn); with
        ``at_most``, no more than that many of its recipients (the rest stay first in
        line, under the portion's id; the piece gets a new one)."""
        if not self._by_domain:
            return None
        if domain is None:
            domain = next(iter(self._by_domain))
        queue = self._by_domain.get(domain)
        if not queue:
            return None
        head = queue[0]
        if at_most is not None and self.new_id is not None and 0 < at_most < head.task.size:
            rest = head.rows.slice(at_most)
            queue[0] = Work(replace(head.task, size=rest.num_rows), rest, head.internal_failures)
            task = replace(head.task, portion=self.new_id(), size=at_most)
            self._by_domain.move_to_end(domain)
            return Work(task, head.rows.slice(0, at_most), head.internal_failures)
        work = queue.popleft()
        self._count -= 1
        if queue:
            self._by_domain.move_to_end(domain)  # next time, another domain's turn
        else:
            del self._by_domain[domain]
        return work

    def __iter__(self) -> Iterator[Work]:
        for queue in self._by_domain.values():
            yield from queue


@runtime_checkable
class Router(Protocol):
    """Everything the driver asks of a routing policy (``raymail.routing`` implements it).

    The driver calls :meth:`take` whenever a server has room, :meth:`observe` for every
    finished portion, :meth:`tick` once per loop round (with the queue as it stands),
    :meth:`failed` when a portion's call died without a result, :meth:`server_gone` when
    it gives a server up, and :meth:`close` once at the end of the run.
    """

    def take(self, server: ServerView, queue: WorkQueue, limit: int) -> list[Work]:
        """Remove and return up to ``limit`` portions for ``server`` (may return none)."""
        ...

    def observe(self, server: str, outcomes: pa.Table, observations: pa.Table) -> None:
        """Learn from a finished portion (outcomes per recipient, observations per SMTP
        transaction)."""
        ...

    def tick(self, queue: WorkQueue) -> None:
        """Housekeeping between rounds (probes, saving what was learned); never blocks.
        ``queue`` is what waits now: a router reads it here and in :meth:`take`, and
        keeps no reference to it."""
        ...

    def failed(self, server: str, portion: int, attempt: int) -> None:
        """That attempt of the portion died on ``server`` without a result."""
        ...

    def server_gone(self, server: str) -> None:
        """The driver gave ``server`` up: it gets no more work, holds nothing."""
        ...

    def close(self) -> None:
        """The run ends: save what is left."""
        ...


class LeastLoadedRouter:
    """Domains in turn, to whichever server has room: the baseline without learning."""

    def take(self, server: ServerView, queue: WorkQueue, limit: int) -> list[Work]:
        taken: list[Work] = []
        while len(taken) < limit:
            work = queue.pop()
            if work is None:
                break
            taken.append(work)
        return taken

    def observe(self, server: str, outcomes: pa.Table, observations: pa.Table) -> None:
        del server, outcomes, observations

    def tick(self, queue: WorkQueue) -> None:
        del queue

    def failed(self, server: str, portion: int, attempt: int) -> None:
        del server, portion, attempt

    def server_gone(self, server: str) -> None:
        del server

    def close(self) -> None:
        """Nothing to save."""
