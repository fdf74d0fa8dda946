"""Connecting to Ray: a running cluster when there is one, else a local instance.

Delivery servers ask for one unit of the custom resource ``raymail_delivery``; cluster.yaml
gives it to the worker type meant to send mail, and a local instance offers plenty.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

import ray

DELIVERY_RESOURCE = "raymail_delivery"
LOCAL_DELIVERY_SLOTS = 64
LOCAL_START_ATTEMPTS = 3  # starts of a local instance before giving up

log = logging.getLogger(__name__)


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Initialise Ray once: the given address, RAY_ADDRESS, or a fresh local instance."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        ray.init(address=target, log_to_driver=True)
        return
    start_local_ray(num_cpus=num_cpus or max(2, os.cpu_count() or 2))


def start_local_ray(
    *, num_cpus: int, delivery_slots: int = LOCAL_DELIVERY_SLOTS, log_to_driver: bool = True
) -> None:
    """Start a fresh local Ray (never joining one another process left running), retrying
    when its start times out: Ray gives its raylet a fixed 30 s to register, and on an
    overloaded machine a fresh instance can miss that."""
    before = _children()
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        try:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                resources={DELIVERY_RESOURCE: delivery_slots},
                include_dashboard=False,
                log_to_driver=log_to_driver,
                logging_level=logging.WARNING,
            )
            return
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == LOCAL_START_ATTEMPTS:
                raise
            log.warning("local Ray did not start in time (attempt %d); trying again", attempt)
            ray.shutdown()
            _end_started_ray(before)


def _children() -> set[int]:
    """Pids of this process's children (Linux /proc; empty elsewhere)."""
    me = str(os.getpid())
    pids = set()
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == me:
            pids.add(int(entry.name))
    return pids


def _end_started_ray(before: set[int]) -> None:
    """Kill the Ray daemons a failed start left behind (children started since ``before``);
    ray.shutdown() does not know them, and they would load the next attempt."""
    for pid in _children() - before:
        with contextlib.suppress(ProcessLookupError, PermissionError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, os.WNOHANG)


def delivery_slots() -> int:
    """How many delivery servers the cluster can host (units of the delivery resource)."""
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return int(resources.get(DELIVERY_RESOURCE, 0))
