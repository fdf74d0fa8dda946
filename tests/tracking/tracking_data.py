"""A small campaign's tracking data written through the real writers: a run directory with
a ledger (run.ledger.Ledger), web hits (EventWriter) and returns events (the returns
EventStore), so sync, queries, summaries and the archive read what production writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from raymail._io import write_json_atomic
from raymail.returns.events import EventStore
from raymail.run.ledger import Ledger
from raymail.run.rundir import MANIFEST
from raymail.schema import OBSERVATION_SCHEMA, OUTCOME_SCHEMA
from raymail.tracking import EventWriter, flag_hit

SENT = datetime(2025, 3, 14, 9, 0, tzinfo=UTC)
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0"
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
DOMAINS = ("a.test", "b.test", "c.test")


def recipients(n: int) -> list[str]:
    return [f"user{i}@{DOMAINS[i % len(DOMAINS)]}" for i in range(n)]


def write_ledger(run_dir: Path, campaign: str, emails: list[str], failed: set[int]) -> None:
    """A complete run's ledger: every recipient accepted, those in ``failed`` rejected 550."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / MANIFEST, {"campaign": campaign, "status": "complete"})
    rows: list[dict[str, Any]] = []
    for n, email in enumerate(emails):
        bad = n in failed
        rows.append(
            {
                "campaign": campaign, "row": n + 1, "email": email,
                "domain": email.split("@")[1], "status": "failed" if bad else "accepted",
                "smtp_code": 550 if bad else 250, "enhanced_status": "5.1.1" if bad else None,
                "response": "no such user" if bad else "ok", "server": "s0",
                "source_address": None, "mx_host": "mx", "attempt": 1, "portion": 0,
                "message_id": f"<{n}@sender.test>", "started_at": SENT,
                "finished_at": SENT + timedelta(seconds=n),
            }
        )  # fmt: skip
    ledger = Ledger(run_dir)
    ledger.add(pa.Table.from_pylist(rows, schema=OUTCOME_SCHEMA), OBSERVATION_SCHEMA.empty_table())
    ledger.flush()


def hit(campaign: str, n: int, kind: str, minutes: float, agent: str = CHROME,
        ip: str = "203.0.113.7", link: str | None = None) -> dict[str, Any]:  # fmt: skip
    reason = flag_hit(kind, agent, ip)
    return {
        "campaign": campaign, "at": SENT + timedelta(minutes=minutes), "kind": kind,
        "recipient": recipients(n + 1)[n], "row": n + 1, "link": link,
        "url": f"https://shop.test/{link}" if link else None, "source": "web",
        "user_agent": agent, "ip": ip, "bot": reason is not None, "bot_reason": reason,
        "message_id": f"<{n}@sender.test>",
    }  # fmt: skip


def write_web_hits(root: Path, campaign: str) -> None:
    """Opens by 0..9 (3 of them through Gmail's proxy, 0 also twice), clicks by 0..3 on
    'pricing' (1 also on 'blog'), and a scanner that clicked every link of 5's message."""
    rows = [hit(campaign, n, "open", 30 + n * 20) for n in range(10)]
    rows += [hit(campaign, n, "open", 2, agent=GMAIL_PROXY) for n in (10, 11, 12)]
    rows.append(hit(campaign, 0, "open", 400))
    rows += [hit(campaign, n, "click", 31 + n * 20, link="pricing") for n in range(4)]
    rows.append(hit(campaign, 1, "click", 90, link="blog"))
    scan = [hit(campaign, 5, "click", 1, link=link) for link in ("pricing", "blog", "shoes")]
    for k, row in enumerate(scan):
        row["at"] += timedelta(milliseconds=150 * k)
    rows += scan
    with EventWriter(root) as writer:
        writer.add(rows)


def write_returns(home: Path, campaign: str) -> None:
    """Returns events: a complaint by 2, a human reply by 3, an auto-reply by 4 (first
    classified as a reply, then re-classified), and a rejection the importer took from a
    ledger (must not be counted twice)."""
    store = EventStore(home / "returns" / "events")

    def event(ref: str, n: int, category: str, reason: str, at: datetime, source: str,
              classified: datetime) -> dict[str, object]:  # fmt: skip
        return {
            "event_id": f"{ref}#0", "time": at, "classified_at": classified,
            "campaign": campaign, "recipient": recipients(n + 1)[n], "domain": None,
            "category": category, "reason": reason, "status": None, "smtp_code": None,
            "diagnostic": "", "source": source, "archive_ref": ref if source != "ledger" else None,
            "envelope_rcpt": "", "why": "",
        }  # fmt: skip

    t = SENT + timedelta(hours=2)
    store.add(
        [
            event("seg1:1", 2, "complaint", "feedback", t, "arf", t),
            event("seg1:2", 3, "human_reply", "reply", t, "reply", t),
            event("seg1:3", 4, "human_reply", "reply", t, "reply", t),
            event("ledger:x", 7, "hard_bounce_address", "userunknown", t, "ledger", t),
        ]
    )
    store.flush()
    later = t + timedelta(hours=1)
    store.add([event("seg1:3", 4, "auto_reply", "vacation", t, "autoreply", later)])
    store.flush()
