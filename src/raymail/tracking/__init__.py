"""Campaign feedback as data (seed 000): the events dataset, analytics, archive, follow-ups.

Names load on first use, so a Serve replica that only writes events (``EventWriter``) does
not import DuckDB or boto3::

    from raymail.tracking import EventWriter, query, campaign_summary
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "EVENT_KINDS": "raymail.tracking.events",
    "EVENT_SOURCES": "raymail.tracking.events",
    "TRACKING_SCHEMA": "raymail.tracking.events",
    "EventWriter": "raymail.tracking.events",
    "events_root": "raymail.tracking.events",
    "flag_hit": "raymail.tracking.bots",
    "flag_scanner_bursts": "raymail.tracking.bots",
    "load_events": "raymail.tracking.dataset",
    "query": "raymail.tracking.sql",
    "campaign_summary": "raymail.tracking.summary",
    "plot_summary": "raymail.tracking.plots",
    "sync_ledger": "raymail.tracking.sync",
    "sync_returns": "raymail.tracking.sync",
}

__all__ = [
    "EVENT_KINDS",
    "EVENT_SOURCES",
    "TRACKING_SCHEMA",
    "EventWriter",
    "campaign_summary",
    "events_root",
    "flag_hit",
    "flag_scanner_bursts",
    "load_events",
    "plot_summary",
    "query",
    "sync_ledger",
    "sync_returns",
]

if TYPE_CHECKING:
    from raymail.tracking.bots import flag_hit, flag_scanner_bursts
    from raymail.tracking.dataset import load_events
    from raymail.tracking.events import (
        EVENT_KINDS,
        EVENT_SOURCES,
        TRACKING_SCHEMA,
        EventWriter,
        events_root,
    )
    from raymail.tracking.plots import plot_summary
    from raymail.tracking.sql import query
    from raymail.tracking.summary import campaign_summary
    from raymail.tracking.sync import sync_ledger, sync_returns


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'raymail.tracking' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
