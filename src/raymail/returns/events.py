"""Return events: one Parquet row per (returned message, recipient), batched into few parts.

An event is what the suppression rules, the report and re-classification read: who
(campaign, recipient), what (category, reason, enhanced status, SMTP code), when, from
which evidence (``source``: dsn, arf, text, autoreply, reply, challenge, list-unsubscribe,
ledger, ...), and where the raw message is (``archive_ref``; none for a ledger rejection).
Re-classification appends newer events for the same message; readers take, per message,
the rows of its latest classification (:func:`current_events`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import polars as pl
import pyarrow as pa

from raymail.returns.archive import ArchivedMessage
from raymail.returns.parts import PartWriter, compact_parts, read_parts
from raymail.returns.reasons import (
    HARD_BOUNCE_ADDRESS,
    HARD_BOUNCE_DOMAIN,
    MAILBOX_FULL,
    TRANSIENT,
    category_of,
)
from raymail.returns.verdict import Classification, RecipientVerdict

_TS = pa.timestamp("us", tz="UTC")
_DIAGNOSTIC_CHARS: Final = 500

EVENT_SCHEMA: Final = pa.schema(
    [
        pa.field("event_id", pa.string()),  # archive_ref#n, or ledger:campaign:row:attempt
        pa.field("time", _TS),  # when the return arrived (or the rejection happened)
        pa.field("classified_at", _TS),
        pa.field("campaign", pa.string()),
        pa.field("recipient", pa.string()),  # lower-case; null when none was found
        pa.field("domain", pa.string()),
        pa.field("category", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("status", pa.string()),  # enhanced status code, e.g. 5.1.1
        pa.field("smtp_code", pa.int32()),
        pa.field("diagnostic", pa.string()),
        pa.field("source", pa.string()),
        pa.field("archive_ref", pa.string()),
        pa.field("envelope_rcpt", pa.string()),  # the address the return was sent to
        pa.field("why", pa.string()),
    ]
)

HARD_CATEGORIES: Final = (HARD_BOUNCE_ADDRESS, HARD_BOUNCE_DOMAIN)
SOFT_CATEGORIES: Final = (MAILBOX_FULL, TRANSIENT)


def _category(verdict: RecipientVerdict) -> str:
    """A recipient's own category: a hard reason with a temporary status is transient."""
    category = category_of(verdict.reason)
    temporary = verdict.action == "delayed" or (verdict.status or "").startswith("4.")
    if temporary and category in HARD_CATEGORIES:
        return TRANSIENT
    return category


def _domain(recipient: str | None) -> str | None:
    return recipient.rpartition("@")[2] if recipient and "@" in recipient else None


def events_for(
    verdict: Classification,
    message: ArchivedMessage,
    *,
    campaign: str | None,
    classified_at: datetime | None = None,
) -> list[dict[str, object]]:
    """Event rows for one classified message: one per recipient (one row when none)."""
    at = classified_at or datetime.now(UTC)
    own = {v.recipient.lower(): v for v in verdict.per_recipient}
    recipients: Sequence[str | None] = [r.lower() for r in verdict.recipients] or [None]
    rows: list[dict[str, object]] = []
    for n, recipient in enumerate(recipients):
        mine = own.get(recipient or "")
        category, reason = verdict.category, verdict.reason
        status, code, diagnostic = verdict.status, verdict.smtp_code, verdict.diagnostic
        if mine is not None and mine.reason != verdict.reason:
            category, reason = _category(mine), mine.reason
            status, code, diagnostic = mine.status, mine.smtp_code, mine.diagnostic
        rows.append(
            {
                "event_id": f"{message.ref}#{n}",
                "time": message.received_at,
                "classified_at": at,
                "campaign": campaign,
                "recipient": recipient,
                "domain": _domain(recipient),
                "category": category,
                "reason": reason,
                "status": status,
                "smtp_code": code,
                "diagnostic": (diagnostic or "")[:_DIAGNOSTIC_CHARS],
                "source": verdict.source,
                "archive_ref": message.ref,
                "envelope_rcpt": ", ".join(message.rcpt_tos),
                "why": verdict.why[:_DIAGNOSTIC_CHARS],
            }
        )
    return rows


class EventStore:
    """The events folder: buffered appends, batched into Parquet parts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._writer = PartWriter(folder, EVENT_SCHEMA)

    @property
    def buffered(self) -> int:
        return len(self._writer)

    def add(self, rows: list[dict[str, object]]) -> None:
        self._writer.add(rows)

    def flush(self) -> pl.DataFrame | None:
        """Write the buffer as one part; return what was written."""
        table = self._writer.flush()
        if table is None:
            return None
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        return frame

    def compact(self) -> int:
        """Merge small parts once there are many (a server flushes every few seconds)."""
        return compact_parts(self.folder, EVENT_SCHEMA)

    def read(self, *, current: bool = True) -> pl.DataFrame:
        """All events, or (default) only each message's latest classification."""
        frame = read_parts(self.folder, EVENT_SCHEMA)
        return current_events(frame) if current else frame


def current_events(frame: pl.DataFrame) -> pl.DataFrame:
    """Per archived message, the rows of its latest classification; ledger rows as they are."""
    key = pl.coalesce(pl.col("archive_ref"), pl.col("event_id"))
    latest = pl.col("classified_at").max().over(key)
    return frame.filter(pl.col("classified_at") == latest).unique(
        subset=["event_id", "classified_at"], keep="last", maintain_order=True
    )
