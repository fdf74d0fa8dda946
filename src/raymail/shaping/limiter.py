"""A delivery server's per-MX permits, from the MX hosts' shaping state.

Implements the connection pool's ``HostLimiter`` seam (``delivery/pool.py``): a permit per
connection in use, at most the MX's current limit. Replies come back through
:meth:`LocalShaper.success` and :meth:`LocalShaper.reply`, which move the limit.

This holds the state of one process. Delivery servers are separate Ray actors, so the
fleet-wide state is meant to live in one shaper actor that grants each server a share of
every MX's limit in batches (a sync call every half second or on a refusal, never one call
per message); a server's share is then this limiter's limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from raymail.shaping.persist import seed
from raymail.shaping.rules import ShapingSettings, rules_of
from raymail.shaping.state import HostState


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

    def state(self, key: str) -> HostState:
        host = self.hosts.get(key)
        if host is None:
            host = seed(
                HostState(key, float(min(self.start, self.max)), self.max), self.learned.get(key)
            )
            self.hosts[key] = host
        return host

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
