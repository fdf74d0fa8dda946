"""The run report: counts by final status and by domain, rates and times.

Built from the run directory alone (manifest, rejects, ledger), so it works for a finished
run, a running one, and one that was killed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from raymail.ledger import final_outcomes, retry_merged, scan_outcomes
from raymail.rundir import REJECTS, RunDir
from raymail.schema import ACCEPTED, DEFERRED, FAILED, IN_DOUBT, SUPPRESSED

_LISTED = 1000  # in-doubt recipients named in the report; all are in the ledger


def build_report(run_dir: str | Path) -> dict[str, Any]:
    """The report as a JSON-ready dict (see README for the keys)."""
    rd = RunDir(run_dir)
    manifest = rd.manifest()
    final, doubted = retry_merged(lambda: _fates(rd.path))
    counts = _status_counts(final)
    rejects_path = rd.path / REJECTS
    rejected = pq.read_metadata(rejects_path).num_rows if rejects_path.exists() else 0
    elapsed = float(manifest.get("elapsed_s") or 0.0)
    planned = int(manifest.get("recipients", final.height))
    return {
        "campaign": manifest.get("campaign"),
        "status": manifest.get("status"),
        "run_dir": str(rd.path),
        "total": planned,
        "accepted": counts[ACCEPTED],
        "deferred": counts[DEFERRED],
        "failed": counts[FAILED],
        "suppressed": counts[SUPPRESSED],
        "in_doubt": counts[IN_DOUBT],
        "in_doubt_ever": doubted.len(),
        "in_doubt_recipients": doubted.head(_LISTED).to_list(),
        "resumes": int(manifest.get("resumes") or 0),
        "not_attempted": max(planned - final.height, 0),
        "rejected_input": rejected,
        "attempts": int(manifest.get("attempts", 0)),
        "elapsed_s": round(elapsed, 3),
        "messages_per_s": round(counts[ACCEPTED] / elapsed, 1) if elapsed > 0 else 0.0,
        "started_at": manifest.get("started_at"),
        "finished_at": manifest.get("finished_at"),
        "delivery_servers": manifest.get("delivery_servers"),
        "capacity": manifest.get("capacity"),
        "domains": _per_domain(final),
    }


def _fates(run_dir: Path) -> tuple[pl.DataFrame, pl.Series]:
    """(final row, status, domain per recipient; in-doubt addresses ever), lazily read.

    Only the columns a count needs are read: a million-row ledger stays on disk.
    """
    attempts = scan_outcomes(run_dir)
    fate = attempts.select(["row", "attempt", "finished_at", "status", "domain"])
    final = final_outcomes(fate).select(["row", "status", "domain"]).collect()
    doubted = attempts.filter(pl.col("status") == IN_DOUBT).select("email").unique().collect()
    return final, doubted["email"].sort()


def _status_counts(final: pl.DataFrame) -> dict[str, int]:
    counts = {ACCEPTED: 0, DEFERRED: 0, FAILED: 0, IN_DOUBT: 0, SUPPRESSED: 0}
    if final.height:
        for status, n in final.group_by("status").len().iter_rows():
            counts[str(status)] = int(n)
    return counts


def _per_domain(final: pl.DataFrame) -> dict[str, dict[str, int]]:
    if not final.height:
        return {}
    pivot = final.group_by(["domain", "status"]).len().sort(["domain", "status"]).iter_rows()
    domains: dict[str, dict[str, int]] = {}
    for domain, status, n in pivot:
        entry = domains.setdefault(str(domain), {ACCEPTED: 0, DEFERRED: 0, FAILED: 0})
        if status == IN_DOUBT:
            entry.setdefault(IN_DOUBT, 0)
        entry[str(status)] = int(n)
    return domains
