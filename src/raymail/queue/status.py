"""A queued run's message counts, read from its run directory (the ledger is the truth).

Per-recipient status stays in the run's ledger (millions of rows belong in Parquet, not in
the queue's SQL); the queue keeps these campaign-level counts and their changes:

- ``queued``: recipients not yet tried; ``deferred``: tried, to be retried (4xx, dropped);
- ``accepted``: 250 to the end of DATA; ``bounced``: refused (5xx, no mail exchanger);
- ``suppressed``: on the suppression list, never sent; ``in_doubt``: maybe delivered;
- ``expired``: only temporary failures until the deferral queue's ``retry.max_age``;
- ``waiting``: deferred recipients of a run in the waiting stage (due later);
- ``done``: recipients whose fate is final (accepted, bounced, suppressed, expired);
- ``complete``: 1 once the run reached its last stage;
- ``to_alternate``: recipients moved on to an alternate address (spec ``on_failure``),
  ``alternate_N``: those moved to their N-th (present once nonzero), and
  ``accepted_at_alternate``: those an alternate's receiver accepted.
"""

from __future__ import annotations

from pathlib import Path

from raymail.run.report import build_report
from raymail.run.rundir import RunDir

COUNT_KEYS = (
    "queued", "deferred", "accepted", "bounced", "suppressed", "in_doubt", "expired", "waiting",
    "done",
)  # fmt: skip


def run_counts(run_dir: str | Path) -> dict[str, int]:
    """Counts of a run (running, stopped or finished); empty before its list is loaded."""
    rd = RunDir(run_dir)
    if not rd.exists():
        return {}
    manifest = rd.manifest()
    if "recipients" not in manifest:  # still loading: nothing to count yet
        return {}
    report = build_report(rd.path)
    accepted, failed, suppressed = report.accepted, report.failed, report.suppressed
    return {
        "total": int(report.total),
        "queued": int(report.not_attempted),
        "deferred": int(report.deferred),
        "accepted": int(accepted),
        "bounced": int(failed),
        "suppressed": int(suppressed),
        "in_doubt": int(report.in_doubt),
        "expired": int(report.expired),
        "waiting": int(report.waiting),
        "done": int(accepted + failed + suppressed + report.expired),
        "rejected_input": int(report.rejected_input),
        "complete": int(report.status == "complete"),
        "to_alternate": int(report.alternates.get("1", 0)),
        "accepted_at_alternate": int(report.accepted_at_alternate),
        **{f"alternate_{hop}": int(n) for hop, n in report.alternates.items()},
    }


def alternate_detail(before: dict[str, int], after: dict[str, int]) -> str | None:
    """'moved to alternate N: K recipient(s)' for each hop whose count grew (a status
    event's detail, so a webhook consumer reads the move without diffing counts)."""
    moves = [
        f"moved to alternate {key.removeprefix('alternate_')}: {n - before.get(key, 0)} "
        "recipient(s)"
        for key, n in sorted(after.items())
        if key.startswith("alternate_") and n > before.get(key, 0)
    ]
    return "; ".join(moves) or None
