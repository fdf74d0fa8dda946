"""The connection pool's per-MX limiter seam, against the real sink on loopback."""

from __future__ import annotations

import asyncio

from raymail.delivery.pool import ConnectionPool
from raymail.delivery.smtp_client import SmtpConnection
from raymail.sink import SinkConfig, run_sink


class CountingLimiter:
    """At most ``permits`` connections in use per key; records the most seen at once."""

    def __init__(self, permits: int) -> None:
        self.permits = permits
        self.in_use: dict[str, int] = {}
        self.peak = 0
        self._cond = asyncio.Condition()

    async def acquire(self, key: str) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: self.in_use.get(key, 0) < self.permits)
            self.in_use[key] = self.in_use.get(key, 0) + 1
            self.peak = max(self.peak, self.in_use[key])

    def release(self, key: str) -> None:
        self.in_use[key] -= 1

        async def wake() -> None:
            async with self._cond:
                self._cond.notify_all()

        asyncio.get_running_loop().create_task(wake())

    def free(self, key: str) -> bool:
        return self.in_use.get(key, 0) < self.permits

    def over(self, key: str) -> bool:
        return self.in_use.get(key, 0) > self.permits

    def messages_per_connection(self, key: str) -> int | None:
        return 3


def test_pool_keeps_each_mx_within_its_permits() -> None:
    with run_sink(SinkConfig(default={"latency_ms": 5})) as sink:

        async def go() -> tuple[int, int, int]:
            async def opener(host: str, port: int) -> SmtpConnection:
                return await SmtpConnection.open(host, port, helo_name="client.test")

            limiter = CountingLimiter(2)
            pool = ConnectionPool(10, opener, limiter=limiter)

            async def one(i: int) -> None:
                conn, _ = await pool.acquire("127.0.0.1", sink.port, "mx.shared.test")
                try:
                    await conn.send("s@s.test", [f"r{i}@d.test"], b"Subject: x\r\n\r\nx\r\n")
                finally:
                    await pool.release(conn)

            await asyncio.gather(*(one(i) for i in range(12)))
            await pool.close()
            return limiter.peak, pool.opened_total, sum(limiter.in_use.values())

        peak, opened, left = asyncio.run(go())
        assert peak == 2  # ten pool slots, but the MX allows two
        assert left == 0  # every permit came back
        # 12 messages, at most 3 per connection (the limiter's say): at least 4 connections
        assert opened >= 4
        assert sink.stats().accepted == 12
