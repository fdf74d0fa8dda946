"""The pending campaign queue and its scheduler (seed 002's pending message queue).

``db`` is the one seam to the database (SQLite by default, PostgreSQL by URL),
``migrations`` its versioned schema, ``store`` the entries, leases and status events,
``schedule`` and ``zones`` put campaigns in (per recipient time zone if asked), ``when``
reads due times, ``scheduler`` reviews the queue and runs due campaigns (``runner`` is one
run's process, ``actor`` the detached Ray actor around a scheduler), ``status`` reads a run's
counts and ``webhook`` pushes status changes to the sender.
"""

from __future__ import annotations

from raymail.queue.schedule import schedule_campaign
from raymail.queue.store import (
    CANCELLED,
    DONE,
    FAILED,
    PAUSED,
    QUEUED,
    RUNNING,
    CampaignQueue,
    Entry,
    StatusEvent,
)

__all__ = [
    "CANCELLED",
    "DONE",
    "FAILED",
    "PAUSED",
    "QUEUED",
    "RUNNING",
    "CampaignQueue",
    "Entry",
    "StatusEvent",
    "schedule_campaign",
]
