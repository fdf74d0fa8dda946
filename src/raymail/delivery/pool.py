"""A bounded pool of reused SMTP connections, keyed by destination (host, port).

The total number of open connections never exceeds the delivery server's concurrency;
idle connections to one destination are closed when another destination needs the slot.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from raymail.delivery.smtp_client import SmtpConnection

Destination = tuple[str, int]
Opener = Callable[[str, int], Coroutine[Any, Any, SmtpConnection]]


class ConnectionPool:
    """Hands out one connection per caller; reuses idle ones for the same destination."""

    def __init__(
        self,
        limit: int,
        opener: Opener,
        *,
        max_transactions: int = 1000,
        idle_timeout_s: float = 30.0,
    ) -> None:
        self._limit = limit
        self._opener = opener
        self._max_transactions = max_transactions
        self._idle_timeout_s = idle_timeout_s
        self._idle: dict[Destination, list[SmtpConnection]] = {}
        self._open = 0
        self._cond = asyncio.Condition()
        self._waiting = 0  # callers blocked in acquire()
        self.opened_total = 0

    @property
    def open_connections(self) -> int:
        return self._open

    async def acquire(self, host: str, port: int) -> tuple[SmtpConnection, bool]:
        """A connection to (host, port) and whether it was newly opened."""
        key = (host, port)
        async with self._cond:
            while True:
                conn = self._take_idle(key)
                if conn is not None:
                    return conn, False
                if self._open < self._limit:
                    self._open += 1
                    break
                if not self._evict_one_idle():
                    self._waiting += 1
                    try:
                        await self._cond.wait()
                    finally:
                        self._waiting -= 1
        try:
            conn = await self._opener(host, port)
        except BaseException:
            async with self._cond:
                self._open -= 1
                self._cond.notify()
            raise
        self.opened_total += 1
        return conn, True

    def ready(self, host: str, port: int) -> bool:
        """Whether ``acquire(host, port)`` would get a connection without waiting: nobody
        waits already and a slot is free, or an idle connection can be reused or evicted.
        A delivery server asks before spreading a portion over one more connection, so
        extra connections only take slots that no one else is waiting for."""
        if self._waiting:
            return False
        return self._open < self._limit or any(self._idle.values())

    def _take_idle(self, key: Destination) -> SmtpConnection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not conn.broken and now - conn.last_used < self._idle_timeout_s:
                return conn
            self._discard(conn)
        return None

    def _evict_one_idle(self) -> bool:
        oldest: SmtpConnection | None = None
        for conns in self._idle.values():
            for conn in conns:
                if oldest is None or conn.last_used < oldest.last_used:
                    oldest = conn
        if oldest is None:
            return False
        self._idle[(oldest.host, oldest.port)].remove(oldest)
        self._discard(oldest)
        return True

    def _discard(self, conn: SmtpConnection) -> None:
        self._open -= 1
        asyncio.get_running_loop().create_task(conn.quit())

    async def release(self, conn: SmtpConnection) -> None:
        """Give a connection back: kept for reuse when healthy, else closed."""
        async with self._cond:
            if not conn.reusable or conn.transactions >= self._max_transactions:
                self._discard(conn)
            else:
                self._idle.setdefault((conn.host, conn.port), []).append(conn)
            self._cond.notify()

    async def close(self) -> None:
        """Close every idle connection (QUIT, bounded)."""
        async with self._cond:
            conns = [c for cs in self._idle.values() for c in cs]
            self._idle.clear()
            self._open -= len(conns)
        await asyncio.gather(*(c.quit() for c in conns), return_exceptions=True)
