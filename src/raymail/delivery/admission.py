"""Priority admission to a delivery server's connections (priority lanes, issue 14).

Several campaigns share one delivery server (``delivery/shared.py``); each of their
portions holds a *slot* of the server's :class:`PriorityGate` while it uses an SMTP
connection. Slots go to the most urgent waiter first (lowest priority number; first come
first served within a priority), and a portion holding a slot asks :meth:`contended`
after every transaction: when a more urgent portion waits, it gives its slot (and its
connection, back to the pool) up at that message boundary and queues again behind it.
So a priority-0 message waits at most one transaction of each bulk portion, never for the
bulk run, and bulk keeps every slot the urgent lane does not use.

The gate lives on one event loop (the actor's); it is not thread-safe and needs none.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class PriorityGate:
    """``slots`` admissions at once, granted by priority (lower number first), then FIFO."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"a priority gate needs at least one slot, not {slots}")
        self.slots = slots
        self.busy = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self.preemptions = 0  # slots given up to a more urgent waiter (benchmarks read it)

    @property
    def waiting(self) -> int:
        """Waiters not yet admitted (cancelled ones excluded)."""
        return sum(1 for _, _, fut in self._waiters if not fut.done())

    async def acquire(self, priority: int) -> None:
        """Wait for a slot; more urgent waiters are admitted first."""
        self._drop_cancelled()
        if self.busy < self.slots and not self._waiters:
            self.busy += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._order), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # granted just as we were cancelled
                self.release()
            raise

    def release(self) -> None:
        """Give a slot back: to the most urgent waiter, else free."""
        while self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if not fut.done():
                fut.set_result(None)  # the slot passes on: busy stays the same
                return
        self.busy -= 1

    def contended(self, priority: int) -> bool:
        """True when a waiter more urgent than ``priority`` is waiting for a slot."""
        self._drop_cancelled()
        return bool(self._waiters) and self._waiters[0][0] < priority

    @asynccontextmanager
    async def admitted(self, priority: int) -> AsyncIterator[None]:
        """Hold a slot for the block."""
        await self.acquire(priority)
        try:
            yield
        finally:
            self.release()

    def _drop_cancelled(self) -> None:
        while self._waiters and self._waiters[0][2].done():
            heapq.heappop(self._waiters)
