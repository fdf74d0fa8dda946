"""Connecting to Ray: a running cluster when there is one, else a local instance.

Delivery servers ask for one unit of the custom resource ``raymail_delivery``; cluster.yaml
gives it to the worker type meant to send mail, and a local instance offers plenty.
"""

from __future__ import annotations

import logging
import os

import ray

DELIVERY_RESOURCE = "raymail_delivery"
LOCAL_DELIVERY_SLOTS = 64

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
    ray.init(
        address="local",  # a new instance, even if another cluster runs on this machine
        num_cpus=num_cpus or max(2, os.cpu_count() or 2),
        resources={DELIVERY_RESOURCE: LOCAL_DELIVERY_SLOTS},
        include_dashboard=False,
        log_to_driver=True,
        logging_level=logging.WARNING,
    )


def delivery_slots() -> int:
    """How many delivery servers the cluster can host (units of the delivery resource)."""
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return int(resources.get(DELIVERY_RESOURCE, 0))
