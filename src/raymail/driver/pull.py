"""Pull mode: servers ask the broker for work; the driver answers and reclaims.

Each delivery server runs one long ``pull`` call that asks the broker (``broker.py``) for
as many portions as it has free connections. The driver polls the broker for requests and
finished work, lets the router answer the requests, and still owns completion: a server
that stops asking (or dies) while it holds portions has them settled from its journal
and handed to the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from raymail.delivery.records import to_ipc
from raymail.driver.broker import BrokerPoll, WorkBrokerActor
from raymail.driver.dispatch import Work
from raymail.driver.fleet import Server

if TYPE_CHECKING:
    from raymail.driver.loop import DispatchLoop

_IDLE_S = 0.05  # pause after a poll that brought nothing back
_CLOSE_WAIT_S = 10.0  # how long the servers' loops get to finish at the end

Lease = tuple[int, int]  # (portion, attempt): how the broker's results name a portion


@dataclass
class PullState:
    """Pull mode's machinery: the broker, each server's loop call, the leases out."""

    broker: Any  # the WorkBroker actor
    leased: dict[Lease, tuple[Server, Work]] = field(default_factory=dict)
    loops: dict[str, ray.ObjectRef[Any]] = field(default_factory=dict)  # server -> its pull
    poll: BrokerPoll = field(default_factory=lambda: BrokerPoll({}, {}))  # the latest poll

    def held_by(self, server: Server) -> list[Lease]:
        return [key for key, (s, _) in self.leased.items() if s is server]


class PullStrategy:
    """Leases through the broker; results and failures come back by polling it."""

    def __init__(self, loop: DispatchLoop) -> None:
        self.loop = loop
        self.pull = PullState(WorkBrokerActor.remote())
        self._start_loops()

    def held(self) -> int:
        return len(self.pull.leased)

    def exchange(self) -> None:
        loop, pull = self.loop, self.pull
        poll: BrokerPoll = ray.get(pull.broker.poll.remote())
        pull.poll = poll
        for result in poll.results:
            lease = pull.leased.pop((result.task.portion, result.task.attempt), None)
            if lease is not None:
                loop.settle_result(lease[0], lease[1], result)
        for _name, task, error in poll.failures:
            lease = pull.leased.pop((task.portion, task.attempt), None)
            if lease is not None:
                loop.settle_failure(lease[0], lease[1], RuntimeError(error))
        self._offer(poll)
        if not (poll.results or poll.failures):
            time.sleep(_IDLE_S)

    def check(self) -> None:
        """Take back the portions of servers that died or stopped asking; start the loops
        of servers started since (by resizing or replacement)."""
        self._reclaim()
        self._start_loops()

    def close(self) -> None:
        broker, loops = self.pull.broker, self.pull.loops
        ray.get(broker.close.remote())
        ray.wait(list(loops.values()), num_returns=len(loops), timeout=_CLOSE_WAIT_S)
        ray.kill(broker)

    def _start_loops(self) -> None:
        for server in self.loop.fleet.servers:
            if server.name not in self.pull.loops:
                self.pull.loops[server.name] = server.handle.pull.remote(self.pull.broker)

    def _offer(self, poll: BrokerPoll) -> None:
        """Answer each healthy server's request through the router."""
        loop, pull = self.loop, self.pull
        by_name = {s.name: s for s in loop.fleet.servers}
        for name, wanted in poll.wanted.items():
            server = by_name.get(name)
            if server is None or not server.healthy or not loop.has_work():
                continue
            free = min(wanted, loop.fleet.capacity - server.inflight)
            if free <= 0:
                continue
            works = loop.take(server, free, idle=not pull.leased)
            if not works:
                continue
            for work in works:
                pull.leased[(work.task.portion, work.task.attempt)] = (server, work)
            offers = [(w.task, ray.put(to_ipc(w.rows))) for w in works]
            pull.broker.offer.remote(name, offers)

    def _reclaim(self) -> None:
        """Settle as failed the leases of servers whose loop died or that went silent."""
        loop, pull = self.loop, self.pull
        timeout = loop.spec.stall_timeout_s
        for server in loop.fleet.servers:
            held = pull.held_by(server)
            dead = self._loop_died(server)
            silent = pull.poll.silent_s.get(server.name, 0.0)
            if held and server.healthy and silent > timeout:
                loop.fleet.replace(server, f"it stopped asking for work {silent:.0f} s ago")
                dead = True
            if dead:
                for key in held:
                    _, work = pull.leased.pop(key)
                    loop.settle_failure(server, work, RuntimeError("delivery server lost"))

    def _loop_died(self, server: Server) -> bool:
        """True if ``server``'s pull call ended with its actor; a healthy server (Ray
        restarted it) gets a new loop."""
        pull = self.pull
        ref = pull.loops.get(server.name)
        if ref is None:
            return False
        ready, _ = ray.wait([ref], timeout=0)
        if not ready:
            return False
        dead = False
        try:
            ray.get(ready[0])
        except (RayActorError, RayTaskError) as exc:
            dead = True
            self.loop.fleet.reattach(server, exc)  # a shared server that lost the campaign
        del pull.loops[server.name]
        if dead and server.healthy:
            pull.loops[server.name] = server.handle.pull.remote(pull.broker)  # restarted
        return dead
