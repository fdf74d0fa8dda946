"""Helpers for routing analysis (``notebooks/routing_analysis.ipynb``): polars frames of a
run's observations and of the table, ready to plot."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import polars as pl

from raymail.errors import RoutingError
from raymail.routing.runlog import POLICY, ROUTING_DIR
from raymail.routing.views import show
from raymail.run.ledger import read_observations, read_outcomes

_ROUTE = pl.coalesce(pl.col("source_address"), pl.col("server")).alias("server")


def latency_by_server_domain(run_dir: str | Path) -> pl.DataFrame:
    """Per (server, domain) of a run: transactions and ms per recipient (mean, p50, p90)."""
    obs = read_observations(run_dir)
    if obs.is_empty():
        raise RoutingError(f"{run_dir}: the run has no observations")
    per_rcpt = 1000 * pl.col("transaction_s") / pl.col("recipients").clip(lower_bound=1)
    return (
        obs.with_columns(_ROUTE, per_rcpt.alias("ms"))
        .group_by("server", "domain")
        .agg(
            pl.len().alias("transactions"),
            pl.col("ms").mean().alias("ms_mean"),
            pl.col("ms").median().alias("ms_p50"),
            pl.col("ms").quantile(0.9).alias("ms_p90"),
            (pl.col("response_class") != 2).mean().alias("bad_share"),
        )
        .sort("domain", "server")
    )


def preferred_map(table: str | Path | None = None, half_life_days: float = 7.0) -> pl.DataFrame:
    """One row per (domain, server): the mark and expected ms per recipient, pooled over
    the domain's MX hosts (the row with the most recipients gives the mark)."""
    frame = show(table, half_life_days=half_life_days)
    return (
        frame.sort("recipients", descending=True, nulls_last=True)
        .group_by("domain", "server", maintain_order=True)
        .agg(pl.col("mark").first(), pl.col("ms_per_recipient").first())
        .sort("domain", "server")
    )


def makespan(run_dir: str | Path) -> float:
    """Seconds from the first recipient started to the last one finished."""
    outcomes = read_outcomes(run_dir).filter(pl.col("server").is_not_null())
    if outcomes.is_empty():
        raise RoutingError(f"{run_dir}: the run has no outcomes")
    span = outcomes.select(
        (pl.col("finished_at").max() - pl.col("started_at").min()).dt.total_microseconds()
    ).item()
    return float(span) / 1e6


def compare_makespans(runs: Mapping[str, str | Path]) -> pl.DataFrame:
    """Label, policy and makespan of each run, with its ratio to the fastest."""
    rows = []
    for label, run_dir in runs.items():
        policy_file = Path(run_dir) / ROUTING_DIR / POLICY
        policy = (
            json.loads(policy_file.read_text("utf-8"))["policy"] if policy_file.exists() else None
        )
        rows.append({"run": label, "policy": policy, "makespan_s": makespan(run_dir)})
    frame = pl.DataFrame(
        rows, schema={"run": pl.String, "policy": pl.String, "makespan_s": pl.Float64}
    )
    return frame.with_columns((pl.col("makespan_s") / pl.col("makespan_s").min()).alias("vs_best"))
