"""A delivery server's per-MX permits, from the MX hosts' shaping state.

Implements the connection pool's ``HostLimiter`` seam (``delivery/pool.py``): a permit per
connection in use, at most the MX's current limit. Replies come back through
:meth:`LocalShaper.success` and :meth:`LocalShaper.reply`, which move the limit.

:meth:`LocalShaper.pace` holds each message to the MX's rate (a ``lower_rate`` rule, or a
fixed ``shaping.hosts`` cap) with a token bucket.

This holds the state of one process. A run's delivery servers share one state instead
through ``raymail.shaping.fleet`` (a subclass whose limits are leases from one Ray actor);
this class is also what they fall back to when that actor is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from raymail.shaping.persist import seed
from raymail.shaping.rules import ShapingSettings, rules_of
from raymail.shaping.state import HostState


def new_state(
    settings: ShapingSettings,
    key: str,
    start: int,
    most: int,
    learned: dict[str, Any] | None,
) -> HostState:
    """A host's state: started at ``start`` connections (or what an earlier run learned),
    under ``most`` and under the spec's fixed ``shaping.hosts`` limits for it."""
    fixed = settings.limits_for(key)
    if fixed is not None and fixed.max_connections is not None:
        most = min(most, fixed.max_connections)
    host = seed(HostState(key, float(min(start, most)), most), learned)
    if fixed is not None:
        host.max_rate = fixed.max_rate_per_s
        mpc = fixed.messages_per_connection
        if mpc is not None:
            host.messages_per_connection = min(mpc, host.messages_per_connection or mpc)
    return host


class LocalShaper:
    """Per-MX permits for one event loop."""

    def __init__(
        self,
        settings: ShapingSettings,
        start_connections: int,
        learned: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.rules = rules_of(settings)
        self.start = start_connections
        self.max = settings.max_connections or start_connections
        self.hosts: dict[str, HostState] = {}
        self.learned = learned or {}  # from earlier runs (shaping/persist.py)
        self.in_use: dict[str, int] = {}
        self._cond = asyncio.Condition()
        self._buckets: dict[str, list[float]] = {}  # MX -> [tokens, refilled at]
        self._sent: dict[str, list[float]] = {}  # MX -> [messages, since] (observed rate)

    def state(self, key: str) -> HostState:
        host = self.hosts.get(key)
        if host is None:
            host = new_state(self.settings, key, self.start, self.max, self.learned.get(key))
            self.hosts[key] = host
        return host

    def attach(self, pool: Any) -> None:
        """The connection pool this limiter serves (a shared lease trims its idle ones)."""

    def rate(self, key: str) -> float | None:
        """Messages per second this process may send to ``key`` (None: no limit)."""
        return self.state(key).allowed_rate()

    async def pace(self, key: str) -> None:
        """Wait until one more message to ``key`` keeps within its rate (token bucket,
        bursts of a tenth of a second at most). Bounded; returns at once when unlimited."""
        self._count_sent(key)
        for _ in range(1_000_000):  # each round sleeps up to 0.25 s
            rate = self.rate(key)
            if rate is None:
                return
            now = time.monotonic()
            bucket = self._buckets.setdefault(key, [1.0, now])
            tokens = min(max(1.0, rate * 0.1), bucket[0] + (now - bucket[1]) * rate)
            bucket[1] = now
            if tokens >= 1.0:
                bucket[0] = tokens - 1.0
                return
            bucket[0] = tokens
            await asyncio.sleep(min((1.0 - tokens) / rate if rate > 0 else 0.1, 0.25))

    def _count_sent(self, key: str) -> None:
        """Messages per second seen lately: where a ``lower_rate`` rule starts from."""
        now = time.monotonic()
        seen = self._sent.setdefault(key, [0.0, now])
        seen[0] += 1
        if now - seen[1] >= 1.0:
            self.state(key).observed_rate = seen[0] / (now - seen[1])
            seen[0], seen[1] = 0.0, now

    def _allowed(self, key: str) -> int:
        host = self.state(key)
        if host.suspended_until > time.monotonic():
            return 0
        return max(int(host.limit), self.settings.min_connections)

    async def acquire(self, key: str) -> None:
        async with self._cond:
            for _ in range(1_000_000):  # bounded; each round waits up to 0.5 s
                if self.in_use.get(key, 0) < self._allowed(key):
                    break
                with contextlib.suppress(TimeoutError):  # suspensions end by time
                    await asyncio.wait_for(self._cond.wait(), 0.5)
            self.in_use[key] = self.in_use.get(key, 0) + 1

    def release(self, key: str) -> None:
        self.in_use[key] = max(self.in_use.get(key, 0) - 1, 0)
        self._wake()

    def free(self, key: str) -> bool:
        return self.in_use.get(key, 0) < self._allowed(key)

    def over(self, key: str) -> bool:
        return self.in_use.get(key, 0) > self._allowed(key)

    def messages_per_connection(self, key: str) -> int | None:
        return self.state(key).messages_per_connection

    def success(self, key: str, transactions: int = 1) -> None:
        before = int(self.state(key).limit)
        self.state(key).on_success(self.settings, transactions, time.monotonic())
        if int(self.state(key).limit) > before:
            self._wake()

    def reply(
        self, key: str, code: int, text: str, *, signal: bool = False, open_ok: int | None = None
    ) -> bool:
        """A non-2xx reply, or a refused connection (``signal``): True if it shaped.

        ``open_ok``: connections to ``key`` working when it came (default: those in use, less
        the caller's own when ``signal``)."""
        if open_ok is None:
            open_ok = self.in_use.get(key, 0) - (1 if signal else 0)
        rule = self.state(key).on_reply(
            self.settings, self.rules, code, text, open_ok, time.monotonic(), signal=signal
        )
        return rule is not None or signal or code == 421

    def backoff(self) -> list[dict[str, object]]:
        """The MX hosts in backoff, with the reply that put them there and the next try."""
        now = time.monotonic()
        offset = time.time() - now
        return [h.describe(now, offset) for h in self.hosts.values() if h.in_backoff(now)]

    def _wake(self) -> None:
        async def wake() -> None:
            async with self._cond:
                self._cond.notify_all()

        with contextlib.suppress(RuntimeError):  # no loop running: nobody waits
            asyncio.get_running_loop().create_task(wake())
