"""A queued run's message counts, read from its run directory (the ledger is the truth).

Per-recipient status stays in the run's ledger (millions of rows belong in Parquet, not in
the queue's SQL); the queue keeps these campaign-level counts and their changes:

- ``queued``: recipients not yet tried; ``deferred``: tried, to be retried (4xx, dropped);
- ``accepted``: 250 to the end of DATA; ``bounced``: refused (5xx, no mail exchanger);
- ``suppressed``: on the suppression list, never sent; ``in_doubt``: maybe delivered;
- ``expired``: only temporary failures until the deferral queue's ``retry.max_age``;
- ``waiting``: deferred recipients of a run in the waiting stage (due later);
- ``done``: recipients whose fate is final (accepted, bounced, suppressed, expired);
- ``complete``: 1 once the run reached its last stage.
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
    }
