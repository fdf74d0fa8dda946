"""``raymail returns report``: what came back, by category, reason, domain and campaign.

Built from the current events (latest classification per message), the suppression list,
the outbox and the rejects, so it works while the server runs.
"""

from __future__ import annotations

from typing import Final, TypedDict

import polars as pl

from raymail.returns.store import ReturnsStore

_TOP: Final = 20


class ReasonCount(TypedDict):
    category: str
    reason: str
    count: int


class ReturnsReport(TypedDict):
    """The report, JSON-ready: counts of the current events, suppression list and outbox."""

    home: str
    campaign: str | None
    events: int
    messages: int
    ledger_rejections: int
    by_category: dict[str, int]
    by_reason: list[ReasonCount]
    by_domain: dict[str, dict[str, int]]  # the largest domains, by category
    by_campaign: dict[str, int]
    suppressed: int
    suppressed_by_category: dict[str, int]
    outbox_waiting: int
    outbox_parked: int
    rejects: int


def _counts(frame: pl.DataFrame, column: str) -> dict[str, int]:
    ranked = frame.group_by(column).len().sort(["len", column], descending=[True, False])
    return {str(k): int(n) for k, n in ranked.iter_rows()}


def returns_report(store: ReturnsStore, *, campaign: str | None = None) -> ReturnsReport:
    """The report as a JSON-ready dict."""
    events = store.events.read(current=True)
    if campaign is not None:
        events = events.filter(pl.col("campaign") == campaign)
    reasons = (
        events.group_by(["category", "reason"])
        .len()
        .sort(["len", "category", "reason"], descending=[True, False, False])
    )
    with_domain = events.filter(pl.col("domain").is_not_null())
    top_domains = list(_counts(with_domain, "domain"))[:_TOP]
    domains: dict[str, dict[str, int]] = {}
    for domain in top_domains:
        domains[domain] = _counts(with_domain.filter(pl.col("domain") == domain), "category")
    suppressed = store.suppression.active()
    outbox = store.outbox.items()
    return {
        "home": str(store.settings.home),
        "campaign": campaign,
        "events": events.height,
        "messages": events["archive_ref"].drop_nulls().n_unique(),
        "ledger_rejections": events.filter(pl.col("source") == "ledger").height,
        "by_category": _counts(events, "category"),
        "by_reason": [
            {"category": c, "reason": r, "count": int(n)} for c, r, n in reasons.iter_rows()
        ],
        "by_domain": domains,
        "by_campaign": _counts(events.with_columns(pl.col("campaign").fill_null("")), "campaign"),
        "suppressed": suppressed.height,
        "suppressed_by_category": _counts(suppressed, "category"),
        "outbox_waiting": len(outbox),
        "outbox_parked": sum(1 for item in outbox if item.parked),
        "rejects": len(store.rejects()),
    }
