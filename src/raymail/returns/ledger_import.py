"""Immediate rejections: 5xx answers during delivery become events, with no bounce message.

A receiver that refuses a recipient at RCPT TO (or the message at the end of DATA) never
sends a bounce: the refusal is in the run's ledger. These rows are classified from the
reply text and codes like any bounce (``source`` = ``ledger``) and go through the same
suppression rules. A domain that has no mail exchanger (a permanent MX failure, no SMTP
code) is a dead domain. Template and internal errors are not the address's fault and are
skipped. Each event's id names campaign, row and attempt, so importing twice adds nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from raymail.errors import RunDirError
from raymail.returns import reasons
from raymail.returns.events import current_events
from raymail.returns.process import FlushResult, ReturnsProcessor
from raymail.run.ledger import read_outcomes
from raymail.run.rundir import MANIFEST
from raymail.schema import FAILED

_NOT_THE_ADDRESS = ("template:", "internal error:")
_SOURCE = "ledger"


def _reason(code: int | None, status: str | None, response: str) -> str:
    if code is None:  # no SMTP answer: the domain has no usable mail exchanger
        return "notaccept" if "null mx" in response.lower() else "hostunknown"
    reason, _ = reasons.decide(status=status, smtp_code=code, text=response, action="failed")
    return reason


def ledger_events(run_dir: Path) -> list[dict[str, object]]:
    """Event rows for the permanent rejections in a run's ledger."""
    if not (run_dir / MANIFEST).exists():
        raise RunDirError(f"{run_dir}: not a run directory (no {MANIFEST})")
    outcomes = read_outcomes(run_dir).filter(pl.col("status") == FAILED)
    now = datetime.now(UTC)
    rows: list[dict[str, object]] = []
    for row in outcomes.iter_rows(named=True):
        response = str(row["response"] or "")
        code = row["smtp_code"]
        if code is None and response.startswith(_NOT_THE_ADDRESS):
            continue
        if code is not None and not 500 <= int(code) < 600:
            continue
        reason = _reason(code, row["enhanced_status"], response)
        email = str(row["email"]).lower()
        rows.append(
            {
                "event_id": f"ledger:{row['campaign']}:{row['row']}:{row['attempt']}",
                "time": row["finished_at"],
                "classified_at": now,
                "campaign": row["campaign"],
                "recipient": email,
                "domain": email.rpartition("@")[2],
                "category": reasons.category_of(reason),
                "reason": reason,
                "status": row["enhanced_status"],
                "smtp_code": code,
                "diagnostic": response[:500],
                "source": _SOURCE,
                "archive_ref": None,
                "envelope_rcpt": None,
                "why": "rejected during delivery (run ledger)",
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
