"""Frames of what the learned policy believed and planned, for the run's routing records
(``raymail routing explain`` compares them with what happened)."""

from __future__ import annotations

import numpy as np
import polars as pl
from numpy.typing import NDArray

from raymail.routing.estimates import SOURCES, Estimates
from raymail.routing.plan import Plan


def estimates_frame(
    keys: list[str], domains: list[str], est: Estimates, demoted: set[tuple[str, str]]
) -> pl.DataFrame:
    """One row per (server, domain): expected ms per recipient and where it came from."""
    mean = est.effective()
    rows = [
        {
            "server": key,
            "domain": domain,
            "ms_per_recipient": 1000.0 * float(mean[i, j]),
            "samples": float(est.transactions[i, j]),
            "recipients": float(est.recipients[i, j]),
            "bad_rate": float(est.bad_rate[i, j]),
            "source": SOURCES[int(est.source[i, j])],
            "confident": bool(est.confident[i, j]),
            "excluded": bool(est.excluded[i, j]),
            "demoted": (key, domain) in demoted,
        }
        for i, key in enumerate(keys)
        for j, domain in enumerate(domains)
    ]
    return pl.DataFrame(rows)


def plan_frame(
    keys: list[str], domains: list[str], plan: Plan, counts: NDArray[np.int64]
) -> pl.DataFrame:
    """One row per (server, domain): recipients and share the plan gave it."""
    totals = plan.share.sum(axis=0)
    rows = [
        {
            "server": key,
            "domain": domain,
            "planned_recipients": float(plan.share[i, j]),
            "planned_share": float(plan.share[i, j] / totals[j]) if totals[j] else 0.0,
            "planned_portions": int(counts[i, j]),
            "makespan_s": plan.makespan,
        }
        for i, key in enumerate(keys)
        for j, domain in enumerate(domains)
    ]
    return pl.DataFrame(rows)
