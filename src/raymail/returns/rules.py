"""Suppression rules: which addresses the latest events take off the list, and why.

Pure functions over polars frames, so the rules are tested without a server: given the
events just written, the event history of the same addresses and the current list, they
return the rows to add. Soft bounces count within a window that ends at the address's
latest soft bounce (not the wall clock), so importing last month's mail decides the same
way as receiving it live. An address removed by hand counts only returns that arrived
after its removal.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from raymail.returns.events import HARD_CATEGORIES, SOFT_CATEGORIES, current_events
from raymail.returns.parts import PART_GLOB
from raymail.returns.reasons import COMPLAINT, REMOVE_REQUEST
from raymail.returns.suppression import SUPPRESSION_SCHEMA
from raymail.spec import SuppressionRules


def relevant_categories(rules: SuppressionRules) -> list[str]:
    """Categories that can suppress an address under ``rules``."""
    out: list[str] = [*HARD_CATEGORIES, *SOFT_CATEGORIES]
    if rules.complaints:
        out.append(COMPLAINT)
    if rules.remove_requests:
        out.append(REMOVE_REQUEST)
    return out


def history_for(events_folder: Path, recipients: list[str]) -> pl.DataFrame:
    """Current events (latest classification per message) of ``recipients``."""
    parts = sorted(events_folder.glob(PART_GLOB))
    if not parts or not recipients:
        return pl.DataFrame()
    scan = pl.scan_parquet(parts)
    key = pl.coalesce(pl.col("archive_ref"), pl.col("event_id")).alias("_key")
    keys = scan.filter(pl.col("recipient").is_in(recipients)).select(key).unique()
    mine = scan.with_columns(key).join(keys, on="_key", how="semi").drop("_key").collect()
    return current_events(mine).filter(pl.col("recipient").is_in(recipients))


def decide(
    new_events: pl.DataFrame,
    history: pl.DataFrame,
    current: pl.DataFrame,
    rules: SuppressionRules,
) -> pl.DataFrame:
    """Rows (SUPPRESSION_SCHEMA) for addresses the rules suppress now."""
    categories = relevant_categories(rules)
    fresh = new_events.filter(
        pl.col("recipient").is_not_null() & pl.col("category").is_in(categories)
    )
    active = current.filter(pl.col("suppressed"))["email"].to_list()
    candidates = fresh.filter(~pl.col("recipient").is_in(active))["recipient"].unique()
    empty = pl.from_arrow(SUPPRESSION_SCHEMA.empty_table())
    assert isinstance(empty, pl.DataFrame)
    if candidates.len() == 0 or history.height == 0:
        return empty
    removed = current.filter(~pl.col("suppressed")).select(
        pl.col("email").alias("recipient"), pl.col("changed_at").alias("_removed_at")
    )
    seen = (
        history.filter(pl.col("recipient").is_in(candidates.to_list()))
        .filter(pl.col("category").is_in(categories))
        .join(removed, on="recipient", how="left")
        .filter(pl.col("_removed_at").is_null() | (pl.col("time") > pl.col("_removed_at")))
        .sort("time")
    )
    rows: list[dict[str, object]] = []
    window = timedelta(days=rules.soft_bounce_window_days)
    for (recipient,), group in seen.group_by(["recipient"], maintain_order=True):
        verdict = _verdict(group, rules, window)
        if verdict is None:
            continue
        campaigns = group["campaign"].drop_nulls().to_list()
        rows.append(
            {
                "email": recipient,
                "suppressed": True,
                "category": verdict[0],
                "detail": verdict[1],
                "campaign": campaigns[-1] if campaigns else None,  # the latest return's
                "changed_at": datetime.now(UTC),
                "changed_by": "rules",
            }
        )
    return pl.DataFrame(rows, schema=empty.schema)


def _verdict(
    group: pl.DataFrame, rules: SuppressionRules, window: timedelta
) -> tuple[str, str] | None:
    """(category, detail) when one address's returns suppress it, else None."""
    cats = group["category"]
    if rules.complaints and (cats == COMPLAINT).any():
        return "complaint", _last(group, COMPLAINT)
    if rules.remove_requests and (cats == REMOVE_REQUEST).any():
        return "remove_request", _last(group, REMOVE_REQUEST)
    hard = group.filter(pl.col("category").is_in(HARD_CATEGORIES))
    if hard.height >= rules.hard_bounce_after:
        last = hard.row(-1, named=True)
        return "hard_bounce", (
            f"{hard.height} hard bounce(s), last {last['reason']} {last['status'] or ''}".strip()
        )
    soft = group.filter(pl.col("category").is_in(SOFT_CATEGORIES))
    if soft.height:
        newest = soft["time"].max()
        assert isinstance(newest, datetime)
        recent = soft.filter(pl.col("time") > newest - window)
        if recent.height >= rules.soft_bounce_after:
            days = f"{rules.soft_bounce_window_days:g}"
            return "soft_bounce", f"{recent.height} soft bounces within {days} days"
    return None


def _last(group: pl.DataFrame, category: str) -> str:
    row = group.filter(pl.col("category") == category).row(-1, named=True)
    return f"{row['reason']} via {row['source']}"
