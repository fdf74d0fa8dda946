"""Immediate rejections: 5xx answers during delivery become events, with no bounce message.

Recipients that expired in the deferral queue (only 4xx until ``retry.max_age``) become
soft bounces (category transient, reason expired), counted by the soft-bounce rule.

A receiver that refuses a recipient at RCPT TO (or the message at the end of DATA) never
sends a bounce: the refusal is in the run's ledger. These rows are classified from the
reply text and codes like any bounce (``reasons.classify_reply``; ``source`` = ``ledger``)
and go through the same suppression rules. A run whose spec has a ``returns`` section does this
itself when it ends (:func:`record_run_rejections`); ``raymail returns import RUN_DIR``
does it by hand. A domain that has no mail exchanger (a permanent MX failure, no SMTP
code) is a dead domain. Template and internal errors are not the address's fault and are
skipped. Each event's id names campaign, row and attempt, so importing twice adds nothing.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from raymail.errors import RunDirError
from raymail.returns import reasons
from raymail.returns.events import current_events
from raymail.returns.process import FlushResult, ReturnsProcessor
from raymail.returns.store import ReturnsStore
from raymail.run.ledger import scan_outcomes
from raymail.run.rundir import MANIFEST
from raymail.spec import CampaignSpec
from raymail.status import EXPIRED, FAILED

log = logging.getLogger(__name__)

_NOT_THE_ADDRESS = ("template:", "internal error:")
_SOURCE = "ledger"
_WHY_REJECTED = "rejected during delivery (run ledger)"
_WHY_EXPIRED = "expired in the deferral queue: retry.max_age passed (run ledger)"


def _verdict(code: int | None, status: str | None, response: str) -> tuple[str, str]:
    """(category, reason) of one rejection."""
    if code is None:  # no SMTP answer: the domain has no usable mail exchanger
        reason = "notaccept" if "null mx" in response.lower() else "hostunknown"
        return reasons.category_of(reason), reason
    return reasons.classify_reply(int(code), status, response)


def _event_verdict(
    status: str, code: int | None, enhanced: str | None, response: str
) -> tuple[str, str] | None:
    """(category, reason) of one ledger row, or None when it says nothing of the address."""
    if status == EXPIRED:  # only temporary failures until retry.max_age: a soft bounce
        return str(reasons.TRANSIENT), "expired"
    if code is None and response.startswith(_NOT_THE_ADDRESS):
        return None
    if code is not None and not 500 <= int(code) < 600:
        return None
    return _verdict(code, enhanced, response)


def ledger_events(run_dir: Path) -> list[dict[str, object]]:
    """Event rows for the permanent rejections in a run's ledger."""
    if not (run_dir / MANIFEST).exists():
        raise RunDirError(f"{run_dir}: not a run directory (no {MANIFEST})")
    outcomes = scan_outcomes(run_dir).filter(pl.col("status").is_in([FAILED, EXPIRED])).collect()
    now = datetime.now(UTC)
    rows: list[dict[str, object]] = []
    for row in outcomes.iter_rows(named=True):
        response = str(row["response"] or "")
        code = row["smtp_code"]
        verdict = _event_verdict(row["status"], code, row["enhanced_status"], response)
        if verdict is None:
            continue
        category, reason = verdict
        email = str(row["email"]).lower()
        rows.append(
            {
                "event_id": f"ledger:{row['campaign']}:{row['row']}:{row['attempt']}",
                "time": row["finished_at"],
                "classified_at": now,
                "campaign": row["campaign"],
                "recipient": email,
                "domain": email.rpartition("@")[2],
                "category": category,
                "reason": reason,
                "status": row["enhanced_status"],
                "smtp_code": code,
                "diagnostic": response[:500],
                "source": _SOURCE,
                "archive_ref": None,
                "envelope_rcpt": None,
                "why": _WHY_EXPIRED if row["status"] == EXPIRED else _WHY_REJECTED,
            }
        )
    return rows


def import_ledger(run_dir: Path, processor: ReturnsProcessor) -> FlushResult:
    """Record a run's rejections as events (once) and apply the suppression rules."""
    rows = ledger_events(run_dir)
    known = current_events(processor.store.events.read(current=False))
    seen = set(known.filter(pl.col("source") == _SOURCE)["event_id"].to_list())
    fresh = [r for r in rows if r["event_id"] not in seen]
    processor.store.events.add(fresh)
    return processor.flush()


def record_run_rejections(spec: CampaignSpec, run_dir: Path) -> FlushResult | None:
    """At the end of a run whose spec has a ``returns`` section: its rejections become
    returns events and suppress by the spec's rules, so the next campaign skips them.

    Never raises: the ledger keeps the rejections, and a failure here is logged with the
    command that records them by hand.
    """
    if spec.returns is None:
        return None
    try:
        store = ReturnsStore(spec.returns)
        try:
            result = import_ledger(run_dir, ReturnsProcessor(store))
        finally:
            store.close()
    except Exception as exc:  # the run's own work is done and safe in the ledger
        log.warning(
            "returns: the run's rejections were not recorded (%s: %s); run "
            "'raymail returns import %s'",
            type(exc).__name__,
            exc,
            run_dir,
        )
        return None
    log.info("returns: %d rejection event(s), %d suppressed", result.events, len(result.suppressed))
    return result
