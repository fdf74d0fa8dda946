"""The scheduler as a detached, named Ray actor: it outlives the command that started it.

``raymail scheduler start`` creates it on the cluster at ``RAY_ADDRESS`` (a detached actor
on a local Ray started by the command itself would die with it, so that case is refused:
use ``raymail scheduler run`` in the foreground instead). Ray restarts it if its process
dies (``max_restarts=-1``); the restarted scheduler is a new lease holder, so the runs of
the dead one are resumed once their leases expire. The actor needs no CPU: it reviews the
queue and waits on its run processes, which connect to the same cluster.
"""

from __future__ import annotations

import threading
from typing import Any

import ray

from raymail.errors import QueueError

NAMESPACE = "raymail"
DEFAULT_NAME = "raymail-scheduler"


class SchedulerLoop:
    """Runs one :class:`~raymail.queue.scheduler.Scheduler` loop in a thread."""

    def __init__(self, name: str, queue_url: str | None, options: dict[str, Any]) -> None:
        from raymail.queue.scheduler import Scheduler

        address = ray.get_runtime_context().gcs_address
        self.scheduler = Scheduler(queue_url, name=name, ray_address=address, **options)
        self._thread = threading.Thread(target=self.scheduler.run, daemon=True)
        self._thread.start()

    def status(self) -> dict[str, Any]:
        from raymail.queue.scheduler import describe

        return {
            **describe(self.scheduler.stats),
            "alive": self._thread.is_alive(),
            "queue": self.scheduler.queue.db.describe(),
        }

    def stop(self) -> bool:
        """Stop reviewing, stop the runs (they resume under the next scheduler)."""
        self.scheduler.stop()
        self._thread.join(timeout=60)
        return not self._thread.is_alive()


# No CPU (it waits on the queue and its run processes); restarted by Ray if it dies.
SchedulerActor: Any = ray.remote(num_cpus=0, max_restarts=-1, max_concurrency=4)(  # type: ignore[call-overload]
    SchedulerLoop
)


def start_scheduler(
    name: str = DEFAULT_NAME,
    queue_url: str | None = None,
    env: dict[str, str] | None = None,
    **options: Any,
) -> Any:
    """Create the named detached scheduler (or return the one already running)."""
    handle = SchedulerActor.options(
        name=name,
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        runtime_env={"env_vars": env or {}},
    ).remote(name, queue_url, options)
    ray.get(handle.status.remote(), timeout=120)  # it is up (or this raises)
    return handle


def find_scheduler(name: str = DEFAULT_NAME) -> Any:
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        raise QueueError(f"no scheduler named {name!r} on this Ray cluster") from None


def stop_scheduler(name: str = DEFAULT_NAME) -> None:
    """Stop the scheduler's loop (its runs stop and keep their state), then end the actor."""
    handle = find_scheduler(name)
    try:
        ray.get(handle.stop.remote(), timeout=120)
    finally:
        ray.kill(handle, no_restart=True)
