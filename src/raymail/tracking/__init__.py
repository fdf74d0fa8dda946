"""Campaign feedback as data (seed 000): the events dataset, analytics, archive, follow-ups."""

from raymail.tracking.bots import flag_hit, flag_scanner_bursts
from raymail.tracking.events import (
    EVENT_KINDS,
    EVENT_SOURCES,
    TRACKING_SCHEMA,
    EventWriter,
    events_root,
)

__all__ = [
    "EVENT_KINDS",
    "EVENT_SOURCES",
    "TRACKING_SCHEMA",
    "EventWriter",
    "events_root",
    "flag_hit",
    "flag_scanner_bursts",
]
