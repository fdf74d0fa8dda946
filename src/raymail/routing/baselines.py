"""Fixed allocations: the baselines (round robin, equal shares) and the oracle.

Each decides once, on the first request, how many portions of each domain every server
gets (by server index, as the driver numbers them), then hands each server only its own.
They still learn (the base class records evidence), so a baseline run teaches the table.
Portions that appear later (retries) or whose server stopped asking go to whoever asks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from raymail.driver.dispatch import ServerView, Work, WorkQueue
from raymail.routing.base import BaseRouter, ServerHandles, expected_keys
from raymail.routing.plan import round_portions, solve
from raymail.spec import CampaignSpec

Allocation = dict[int, dict[str, int]]  # server index -> domain -> portions
ABSENT_S = 10.0  # a server not asking this long leaves its allocation to the others
_SPILL_CHECK_S = 0.5


class StaticRouter(BaseRouter):
    """Hands out a fixed allocation, made by :meth:`allocate` from the first queue seen."""

    policy = "static"

    def __init__(
        self,
        spec: CampaignSpec,
        *,
        run_dir: str | Path | None = None,
        servers: ServerHandles | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(spec, run_dir=run_dir, servers=servers, clock=clock)
        self.allocation: Allocation | None = None
        self.last_seen: dict[int, float] = {}
        self._spill_checked: dict[int, float] = {}

    def allocate(self, portions: list[tuple[str, int]]) -> Allocation:
        """(domain, size) of each waiting portion, in queue order -> allocation."""
        raise NotImplementedError

    def take(self, server: ServerView, queue: WorkQueue, limit: int) -> list[Work]:
        now = self.clock()
        key = self.register(server)
        self.last_seen[server.index] = now
        if self.allocation is None:
            self.allocation = self.allocate([(w.task.domain, w.task.size) for w in queue])
        mine = self.allocation.setdefault(server.index, {})
        taken: list[Work] = []
        waiting = set(queue.domains())
        while len(taken) < limit:
            domain = max(
                (d for d, n in mine.items() if n > 0 and d in waiting),
                key=mine.__getitem__,
                default=None,
            )
            if domain is None:
                break
            work = queue.pop(domain)
            if work is None:
                waiting.discard(domain)
                continue
            mine[domain] -= 1
            taken.append(work)
        if (
            len(taken) < limit
            and now - self._spill_checked.get(server.index, 0.0) >= _SPILL_CHECK_S
        ):
            self._spill_checked[server.index] = now
            taken += self._spill(server.index, queue, limit - len(taken), now)
        for work in taken:
            self.give(server, key, work, 0.0)
        return taken

    def _spill(self, index: int, queue: WorkQueue, limit: int, now: float) -> list[Work]:
        """Portions nobody present is allocated: retries, or an absent server's share."""
        assert self.allocation is not None
        starting = now - self.started < ABSENT_S
        present = {i for i, seen in self.last_seen.items() if now - seen < ABSENT_S}
        present |= {i for i in self.allocation if starting and i not in self.last_seen}
        present.add(index)
        waiting: dict[str, int] = {}
        for item in queue:
            waiting[item.task.domain] = waiting.get(item.task.domain, 0) + 1
        taken: list[Work] = []
        for domain, count in waiting.items():
            claimed = sum(
                alloc.get(domain, 0) for i, alloc in self.allocation.items() if i in present
            )
            for _ in range(max(count - claimed, 0)):
                if len(taken) >= limit:
                    return taken
                work = queue.pop(domain)
                if work is None:
                    break
                taken.append(work)
        return taken


class RoundRobinRouter(StaticRouter):
    """Portions dealt to the servers in turn, in queue order: every server gets an equal
    slice of every domain, whatever the servers' speeds."""

    policy = "round_robin"

    def allocate(self, portions: list[tuple[str, int]]) -> Allocation:
        servers = self.spec.delivery_servers
        allocation: Allocation = {i: {} for i in range(servers)}
        for n, (domain, _) in enumerate(portions):
            slot = allocation[n % servers]
            slot[domain] = slot.get(domain, 0) + 1
        return allocation


class EqualSharesRouter(StaticRouter):
    """The seed's plain partitioning: the list (sorted by domain) cut into one contiguous
    share of equal recipients per server, so whole domains land on arbitrary servers."""

    policy = "equal_shares"

    def allocate(self, portions: list[tuple[str, int]]) -> Allocation:
        servers = self.spec.delivery_servers
        total = sum(size for _, size in portions) or 1
        allocation: Allocation = {i: {} for i in range(servers)}
        done = 0
        for domain, size in sorted(portions, key=lambda p: p[0]):
            middle = done + size / 2
            slot = allocation[min(int(middle * servers / total), servers - 1)]
            slot[domain] = slot.get(domain, 0) + 1
            done += size
        return allocation


class StaticOracleRouter(StaticRouter):
    """The makespan plan computed once, up front, from the true cost of every (server,
    domain) pair (e.g. a generated topology's latencies); see also ``oracle.py``."""

    policy = "static_oracle"

    def __init__(
        self,
        spec: CampaignSpec,
        seconds_per_recipient: Callable[[str, str], float],
        *,
        run_dir: str | Path | None = None,
        servers: ServerHandles | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(spec, run_dir=run_dir, servers=servers, clock=clock)
        self.truth = seconds_per_recipient

    def allocate(self, portions: list[tuple[str, int]]) -> Allocation:
        keys = expected_keys(self.spec)
        domains = list(dict.fromkeys(d for d, _ in portions))
        work = np.zeros(len(domains))
        counts = np.zeros(len(domains), dtype=np.int64)
        column = {d: j for j, d in enumerate(domains)}
        for domain, size in portions:
            work[column[domain]] += size
            counts[column[domain]] += 1
        tau = np.array([[self.truth(k, d) for d in domains] for k in keys])
        slots = np.full(len(keys), float(self.spec.concurrency))
        plan = solve(tau, work, slots, np.zeros(len(keys)))
        whole = round_portions(plan.share, counts)
        return {
            i: {d: int(whole[i, j]) for j, d in enumerate(domains) if whole[i, j]}
            for i in range(len(keys))
        }
