"""A bounded pool of reused SMTP connections, keyed by destination (host, port).

The total number of open connections never exceeds the delivery server's concurrency;
idle connections to one destination are closed when another destination needs the slot.

Per-MX limits (traffic shaping) come in through one small seam, :class:`HostLimiter`: a
permit per connection *in use*, keyed by the MX host name, so domains that share an MX
share its limit. :meth:`ConnectionPool.acquire` takes a permit before it hands out a
connection (idle or new) and :meth:`ConnectionPool.release` gives it back. A new one is
opened only when no idle one to that destination exists, so the connections open to an MX
never exceed its permits; when the limiter lowers them, a connection given back while the
MX is over its limit is closed instead of kept idle. Anything that opens connections
to an MX (one portion's messages spread over several connections, say) goes through
:meth:`ConnectionPool.acquire` and so stays within the MX's limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from raymail.delivery.smtp_client import SmtpConnection

Destination = tuple[str, int]
Opener = Callable[[str, int], Coroutine[Any, Any, SmtpConnection]]


class HostLimiter(Protocol):
    """Connection permits per MX host (see ``raymail.shaping``)."""

    async def acquire(self, key: str) -> None:
        """Wait for a permit to open one more connection to MX ``key``."""
        ...

    def release(self, key: str) -> None:
        """A connection to MX ``key`` closed (or never opened): its permit is free."""
        ...

    def free(self, key: str) -> bool:
        """A permit for ``key`` would be granted now, without waiting."""
        ...

    def over(self, key: str) -> bool:
        """More connections to ``key`` are in use than it allows now: close, do not keep."""
        ...

    def messages_per_connection(self, key: str) -> int | None:
        """Most transactions one connection to ``key`` should carry (None: no limit)."""
        ...


class NoLimit:
    """The limiter of an unshaped pool: every permit granted at once."""

    async def acquire(self, key: str) -> None:
        return None

    def release(self, key: str) -> None:
        return None

    def free(self, key: str) -> bool:
        return True

    def over(self, key: str) -> bool:
        return False

    def messages_per_connection(self, key: str) -> int | None:
        return None


class ConnectionPool:
    """Hands out one connection per caller; reuses idle ones for the same destination."""

    def __init__(
        self,
        limit: int,
        opener: Opener,
        *,
        max_transactions: int = 1000,
        idle_timeout_s: float = 30.0,
        limiter: HostLimiter | None = None,
    ) -> None:
        self._limit = limit
        self._opener = opener
        self._max_transactions = max_transactions
        self._idle_timeout_s = idle_timeout_s
        self.limiter: HostLimiter = limiter or NoLimit()
        self._idle: dict[Destination, list[SmtpConnection]] = {}
        self._open = 0
        self._cond = asyncio.Condition()
        self._waiting = 0  # callers blocked in acquire()
        self._closing: dict[str, int] = {}  # MX -> connections whose QUIT is under way
        self.opened_total = 0

    @property
    def open_connections(self) -> int:
        return self._open

    def max_transactions(self, key: str) -> int:
        """Transactions per connection to MX ``key``: the spec's, or the limiter's if lower."""
        shaped = self.limiter.messages_per_connection(key)
        return self._max_transactions if shaped is None else min(shaped, self._max_transactions)

    async def acquire(
        self, host: str, port: int, key: str | None = None
    ) -> tuple[SmtpConnection, bool]:
        """A connection to (host, port) and whether it was newly opened.

        ``key`` names the MX host whose limit the connection counts against (default: the
        host itself); hold it until :meth:`release`, which frees the permit.
        """
        dest = (host, port)
        key = key or host
        await self.limiter.acquire(key)  # outside the lock: other MX hosts go on meanwhile
        try:
            async with self._cond:
                while True:
                    conn = self._take_idle(dest)
                    if conn is not None:
                        conn.limit_key = key
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
        except BaseException:
            self.limiter.release(key)
            raise
        try:
            conn = await self._opener(host, port)
        except BaseException:
            self.limiter.release(key)
            async with self._cond:
                self._open -= 1
                self._cond.notify()
            raise
        conn.limit_key = key
        self.opened_total += 1
        return conn, True

    def spare(self, host: str, port: int, key: str | None = None) -> int:
        """Connections ``acquire(host, port, key)`` could hand out now without waiting: free
        slots plus idle connections (reused, or evicted for another destination); 0 while
        anyone waits for a slot or the MX's limiter has no permit free (shaping: the
        limiter's count is its own, so it only says whether one more is allowed). A
        delivery server asks before spreading a portion over more connections, so extra
        connections only take slots (and MX permits) that no one else is waiting for."""
        if self._waiting or not self.limiter.free(key or host):
            return 0
        return self._limit - self._open + sum(len(conns) for conns in self._idle.values())

    def idle_of(self, key: str) -> int:
        """Idle connections kept for MX ``key`` (open at the receiver, holding no permit)."""
        return sum((c.limit_key or c.host) == key for cs in self._idle.values() for c in cs)

    def close_idle(self, key: str, count: int) -> None:
        """Close up to ``count`` idle connections to MX ``key``: its share was lowered
        (a fleet-wide limit given to another delivery server)."""
        for conns in self._idle.values():
            for conn in [c for c in conns if (c.limit_key or c.host) == key][:count]:
                conns.remove(conn)
                self._discard(conn)
                count -= 1

    def _take_idle(self, dest: Destination) -> SmtpConnection | None:
        idle = self._idle.get(dest)
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

    def closing_of(self, key: str) -> int:
        """Connections to MX ``key`` closed but not yet gone (the receiver still counts them)."""
        return self._closing.get(key, 0)

    def _discard(self, conn: SmtpConnection) -> None:
        self._open -= 1
        key = conn.limit_key or conn.host
        self._closing[key] = self._closing.get(key, 0) + 1

        def gone(_: object) -> None:
            self._closing[key] -= 1

        asyncio.get_running_loop().create_task(conn.quit()).add_done_callback(gone)

    async def release(self, conn: SmtpConnection) -> None:
        """Give a connection back: kept for reuse when healthy and allowed, else closed.
        Its permit is freed either way."""
        key = conn.limit_key or conn.host
        try:
            async with self._cond:
                if (
                    not conn.reusable
                    or conn.transactions >= self.max_transactions(key)
                    or self.limiter.over(key)
                ):
                    self._discard(conn)
                else:
                    self._idle.setdefault((conn.host, conn.port), []).append(conn)
                self._cond.notify()
        finally:
            self.limiter.release(key)

    async def close(self) -> None:
        """Close every idle connection (QUIT, bounded)."""
        async with self._cond:
            conns = [c for cs in self._idle.values() for c in cs]
            self._idle.clear()
            self._open -= len(conns)
        await asyncio.gather(*(c.quit() for c in conns), return_exceptions=True)
