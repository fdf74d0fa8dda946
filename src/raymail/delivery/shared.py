"""Shared delivery servers: long-lived, named Ray actors that several campaigns send through.

Priority lanes (issue 14) keep one driver per campaign (each its own run directory, ledger,
journals, resume, its own process under the scheduler) and share the delivery servers
instead: a pool named by the spec's ``delivery_pool`` is a set of detached actors
``raymail-pool-NAME-I``. A campaign *attaches* to each (one :class:`DeliveryServer` per
campaign inside the actor: its template, journal and fence) and detaches at its end; the
actor lives on for the next campaign, so an urgent campaign starts sending without waiting
for actors to start. All attached campaigns share the actor's :class:`PriorityGate`: its
slots are the server's connections, and the most urgent campaign's portions get them
first (see ``delivery/admission.py``).

Why not one driver for all campaigns: a campaign's driver is also its unit of failure,
pause and resume (the scheduler stops and resumes runs by process), and a multi-campaign
driver would put a 1M-recipient run's planning and ledger between an urgent message and
its connection. Sharing the servers puts priority where the connections are.

A call names its campaign by the key it attached under. :class:`CampaignHandle` wraps the
actor handle and the key so the driver's code calls it exactly like a private server.

A shared server that dies takes its attachments with it: Ray restarts it (``max_restarts``)
knowing no campaign, or, dead for good, the next driver to open the pool starts it anew. A
call then fails with :class:`NotAttachedError` (or the actor's death), and the campaign's
driver re-attaches (:meth:`CampaignHandle.reopen`) under the same key and journal name, so
the journals of the portions it lost settle them as for any dead server.
"""

from __future__ import annotations

import os
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from raymail.delivery.admission import PriorityGate
from raymail.delivery.server import DeliveryServer, PortionResult, ServerStats
from raymail.driver.plan import PortionTask
from raymail.errors import DeliveryError
from raymail.spec import CampaignSpec

NAMESPACE = "raymail"


class NotAttachedError(DeliveryError):
    """A shared server does not know the calling campaign: it restarted since the campaign
    attached (or the campaign detached). The driver re-attaches; nothing is charged."""


def pool_actor_name(pool: str, index: int) -> str:
    return f"raymail-pool-{pool}-{index}"


class SharedDeliveryServer:
    """The actor's implementation; ``SharedDeliveryServerActor`` is its Ray wrapper."""

    def __init__(self, pool: str, index: int, slots: int) -> None:
        self.pool = pool
        self.index = index
        self.gate = PriorityGate(slots)
        self._campaigns: dict[str, DeliveryServer] = {}

    def _child(self, key: str) -> DeliveryServer:
        child = self._campaigns.get(key)
        if child is None:
            raise NotAttachedError(
                f"{pool_actor_name(self.pool, self.index)}: campaign {key!r} is not attached "
                "(the server restarted, or the campaign detached)"
            )
        return child

    async def attach(
        self,
        key: str,
        name: str,
        spec: CampaignSpec,
        source_address: str | None,
        nameservers: list[tuple[str, int]] | None,
        journal_dir: str | None,
        epoch: int,
    ) -> ServerStats:
        """Serve a campaign under ``key``; ``name`` is its journal's server name."""
        if key not in self._campaigns:
            self._campaigns[key] = DeliveryServer(
                name, spec, source_address, nameservers, journal_dir, epoch, gate=self.gate
            )
        return self._campaigns[key]._current_stats()

    async def deliver(self, key: str, task: PortionTask, rows_ipc: bytes) -> PortionResult:
        return await self._child(key).deliver(task, rows_ipc)

    async def pull(self, key: str, broker: Any) -> ServerStats:
        return await self._child(key).pull(broker)

    @ray.method(concurrency_group="control")
    async def heartbeat(self, key: str) -> ServerStats:
        return self._child(key)._current_stats()

    @ray.method(concurrency_group="control")
    async def probe(
        self, key: str, domains: list[str], timeout_s: float = 10.0, max_hosts: int = 20
    ) -> bytes:
        return await self._child(key).probe(domains, timeout_s, max_hosts)

    async def detach(self, key: str) -> ServerStats | None:
        """The campaign ended: close its connections and forget it."""
        child = self._campaigns.pop(key, None)
        return None if child is None else await child.shutdown()

    @ray.method(concurrency_group="control")
    async def lanes(self) -> dict[str, Any]:
        """What the server holds now (benchmarks and tests read it)."""
        return {
            "slots": self.gate.slots,
            "busy": self.gate.busy,
            "waiting": self.gate.waiting,
            "preemptions": self.gate.preemptions,
            "campaigns": {k: c.priority for k, c in self._campaigns.items()},
            "pid": os.getpid(),  # tells a restarted server from the one before
        }


# Many campaigns' calls wait inside the actor for the gate (which does the real admission),
# not in Ray's FIFO queue where an urgent portion would wait behind queued bulk calls.
SharedDeliveryServerActor = ray.remote(concurrency_groups={"control": 4})(  # type: ignore[call-overload]
    SharedDeliveryServer
)
MAX_CALLS = 2000  # calls in the actor at once: far above what the drivers keep in flight


def open_shared_server(pool: str, index: int, slots: int, options: dict[str, Any]) -> Any:
    """The pool's ``index``-th actor, started (detached) if it is not running yet."""
    return SharedDeliveryServerActor.options(
        name=pool_actor_name(pool, index),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_concurrency=MAX_CALLS,
        **options,
    ).remote(pool, index, slots)


class _Method:
    def __init__(self, method: Any, key: str) -> None:
        self._method = method
        self._key = key

    def remote(self, *args: Any) -> Any:
        return self._method.remote(self._key, *args)


class CampaignHandle:
    """A shared server as one campaign sees it: ``deliver``, ``pull``, ``heartbeat`` and
    ``probe`` called like a private server's, the campaign's key added.

    It keeps what attaching took (the pool's place of the server, its start options, the
    campaign's ``attach`` arguments), so :meth:`reopen` can attach again after the server
    restarted or was started anew."""

    def __init__(
        self,
        pool: str,
        index: int,
        slots: int,
        options: dict[str, Any],
        key: str,
        attach_args: tuple[Any, ...],
    ) -> None:
        self.pool = pool
        self.index = index
        self.slots = slots
        self.options = dict(options)
        self.key = key
        self.attach_args = attach_args
        self.reattached = 0  # times reopen() was asked for (tests and logs read it)
        self._bind(open_shared_server(pool, index, slots, self.options))

    def _bind(self, actor: Any) -> None:
        self.actor = actor
        self.deliver = _Method(actor.deliver, self.key)
        self.pull = _Method(actor.pull, self.key)
        self.heartbeat = _Method(actor.heartbeat, self.key)
        self.probe = _Method(actor.probe, self.key)
        self.shutdown = _Method(actor.detach, self.key)

    def attach(self) -> Any:
        """Attach the campaign (idempotent: a server that knows the key keeps its state)."""
        return self.actor.attach.remote(self.key, *self.attach_args)

    def reopen(self) -> Any:
        """The server by its name again (the one Ray restarted, or a new one if it died for
        good) and the campaign attached to it; the attach call's ref."""
        self.reattached += 1
        self._bind(open_shared_server(self.pool, self.index, self.slots, self.options))
        return self.attach()


def campaign_lost(exc: BaseException) -> bool:
    """True when a failed call means the shared server no longer holds the campaign: it
    answered :class:`NotAttachedError` (it restarted), or its actor died. False while Ray
    is still restarting it (``ActorUnavailableError``: calls wait for it to come back)."""
    cause = getattr(exc, "cause", None)
    if isinstance(exc, NotAttachedError) or isinstance(cause, NotAttachedError):
        return True
    return isinstance(exc, RayActorError) and not isinstance(exc, ActorUnavailableError)


def close_pool(pool: str, *, most: int = 1024) -> int:
    """End the pool's actors (they outlive campaigns: this is how they go); how many ended."""
    ended = 0
    for index in range(most):
        try:
            actor = ray.get_actor(pool_actor_name(pool, index), namespace=NAMESPACE)
        except ValueError:
            break
        ray.kill(actor, no_restart=True)
        ended += 1
    return ended
