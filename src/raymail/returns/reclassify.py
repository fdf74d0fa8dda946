"""Re-classification: run today's classifier over every archived message, report the changes.

The archive keeps every raw message so that a better classifier can correct old verdicts.
A message *changed* when its (recipient, category, reason) rows differ from its current
events. With ``apply``, changed messages get new events (a later ``classified_at``, which
readers take over the old ones) and the suppression rules run over them; addresses that
an old verdict suppressed and the new one would not are listed, not released: taking an
address back is a person's decision (``raymail suppression remove``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from raymail.returns.events import events_for
from raymail.returns.process import ReturnsProcessor
from raymail.returns.rules import relevant_categories

_LISTED = 1000


@dataclass(slots=True)
class ReclassifyResult:
    """What re-classification found (and, with apply, recorded)."""

    messages: int = 0
    changed: int = 0
    unclassified_before: int = 0  # archived messages that had no events at all
    transitions: dict[str, int] = field(default_factory=dict)  # "old -> new": count
    categories_before: dict[str, int] = field(default_factory=dict)
    categories_after: dict[str, int] = field(default_factory=dict)
    changed_refs: list[str] = field(default_factory=list)  # the first _LISTED
    applied: bool = False
    newly_suppressed: list[str] = field(default_factory=list)
    suppressed_by_old_verdicts: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _key(rows: list[dict[str, Any]]) -> tuple[tuple[str, str, str], ...]:
    return tuple(
        sorted((str(r["recipient"] or ""), str(r["category"]), str(r["reason"])) for r in rows)
    )


def _condemned(rows: list[dict[str, Any]], categories: set[str]) -> set[str]:
    """Recipients that rows put in a category the suppression rules act on."""
    return {str(r["recipient"]) for r in rows if r["recipient"] and r["category"] in categories}


def reclassify(processor: ReturnsProcessor, *, apply: bool = False) -> ReclassifyResult:
    """Classify the whole archive again; compare with the current events."""
    store = processor.store
    current = store.events.read(current=True).filter(pl.col("archive_ref").is_not_null())
    old_rows: dict[str, list[dict[str, Any]]] = {}
    for row in current.sort("event_id").iter_rows(named=True):
        old_rows.setdefault(str(row["archive_ref"]), []).append(row)
    result = ReclassifyResult(applied=apply)
    before: Counter[str] = Counter()
    after: Counter[str] = Counter()
    moves: Counter[str] = Counter()
    now = datetime.now(UTC)
    bad = set(relevant_categories(store.settings.rules))
    changed_rows: list[dict[str, object]] = []
    for message, raw in store.archive.iter_raw():
        result.messages += 1
        verdict, campaign = processor.classify(message, raw)
        new = events_for(verdict, message, campaign=campaign, classified_at=now)
        old = old_rows.get(message.ref, [])
        old_category = str(old[0]["category"]) if old else "none"
        before[old_category] += 1
        after[verdict.category] += 1
        if not old:
            result.unclassified_before += 1
        if _key(old) == _key(new):
            continue
        result.changed += 1
        moves[f"{old_category} -> {verdict.category}"] += 1
        if len(result.changed_refs) < _LISTED:
            result.changed_refs.append(message.ref)
        changed_rows.extend(new)
        result.suppressed_by_old_verdicts.extend(
            sorted(_condemned(old, bad) - _condemned(new, bad))
        )
    active = set(store.suppression.active()["email"].to_list())
    result.suppressed_by_old_verdicts = sorted(set(result.suppressed_by_old_verdicts) & active)
    result.transitions = dict(moves.most_common())
    result.categories_before = dict(before.most_common())
    result.categories_after = dict(after.most_common())
    if apply and changed_rows:
        store.events.add(changed_rows)
        result.newly_suppressed = processor.flush().suppressed
    return result
