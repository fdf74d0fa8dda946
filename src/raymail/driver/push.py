"""Push mode: the driver fills each server's free capacity and waits on the calls.

Each portion is one actor call (``DeliveryServer.deliver``); the driver ``ray.wait``s on
the calls in flight and settles each as it returns, or as it fails with its actor.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from raymail.delivery.records import to_ipc
from raymail.driver.dispatch import Work
from raymail.driver.fleet import Server

if TYPE_CHECKING:
    from raymail.driver.loop import DispatchLoop


class PushStrategy:
    """Actor calls per portion; results are the calls' return values."""

    def __init__(self, loop: DispatchLoop) -> None:
        self.loop = loop
        self.inflight: dict[ray.ObjectRef[Any], tuple[Server, Work]] = {}

    def held(self) -> int:
        return len(self.inflight)

    def exchange(self) -> None:
        self._submit()
        if not self.inflight:  # nothing out: wait for the next retry (or a moment)
            due = self.loop.next_due_s()
            time.sleep(min(max(due if due is not None else 0.1, 0.01), 1.0))
            return
        done, rest = ray.wait(list(self.inflight), num_returns=1, timeout=0.5)
        if done and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            done += more
        for ref in done:
            self._collect(ref)

    def check(self) -> None:
        """Push mode loses nothing the fleet's watch does not see: dead calls fail."""

    def close(self) -> None:
        """Nothing of its own to end: the calls end with the servers."""

    def _submit(self) -> None:
        """Let the router fill each healthy server's free capacity (most free first)."""
        loop = self.loop
        if not loop.has_work():
            return
        fleet = loop.fleet
        for server in sorted(fleet.healthy(), key=lambda s: s.inflight):
            free = fleet.capacity - server.inflight
            if free <= 0 or not loop.has_work() or fleet.paused(server):
                continue
            for work in loop.take(server, free, idle=not self.inflight):
                # Rows enter the object store only when handed out: its use stays
                # bounded by the work in flight, whatever the size of the list.
                ref = server.handle.deliver.remote(work.task, to_ipc(work.rows))
                self.inflight[ref] = (server, work)

    def _collect(self, ref: ray.ObjectRef[Any]) -> None:
        server, work = self.inflight.pop(ref)
        try:
            result = ray.get(ref)
        except (RayActorError, RayTaskError) as exc:
            self.loop.settle_failure(server, work, exc)
            return
        self.loop.settle_result(server, work, result)
