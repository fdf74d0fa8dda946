"""Helpers for routing analysis (``notebooks/routing_analysis.ipynb``): polars frames of a
run's observations and of the table, ready to plot."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import polars as pl

from raymail.errors import RoutingError
from raymail.routing.rollup import Rollup, domain_labels
from raymail.routing.runlog import POLICY, ROUTING_DIR
from raymail.routing.views import show
from raymail.run.ledger import read_observations, read_outcomes

_ROUTE = pl.coalesce(pl.col("source_address"), pl.col("server")).alias("server")


def latency_by_server_domain(
    run_dir: str | Path,
    *,
    top: int | None = None,
    by: Rollup = "mx_host",
    max_groups: int | None = None,
) -> pl.DataFrame:
    """Per (server, domain) of a run: transactions and ms per recipient (mean, p50, p90).

    With ``top``, only the ``top`` domains by recipients keep a row of their own; the rest
    are pooled per MX host (or provider): ``domain`` is then ``other @ <host>``.
    """
    obs = read_observations(run_dir)
    if obs.is_empty():
        raise RoutingError(f"{run_dir}: the run has no observations")
    if top is not None:
        volume = obs.select("domain", "mx_host", pl.col("recipients").alias("volume"))
        labels = domain_labels(volume, top, by=by, max_groups=max_groups)
        labels = labels.select("domain", "label")
        obs = obs.join(labels, on="domain", how="left").with_columns(
            pl.col("label").alias("domain")
        )
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


def preferred_map(
    table: str | Path | None = None,
    half_life_days: float = 7.0,
    *,
    top: int | None = None,
    by: Rollup = "mx_host",
    max_groups: int | None = None,
) -> pl.DataFrame:
    """One row per (domain, server): the mark and expected ms per recipient, pooled over
    the domain's MX hosts (the row with the most recipients gives the mark).

    With ``top``, the ``top`` domains with the most recipients keep their rows and the rest
    are pooled per MX host (or provider), as ``other @ <host>``: the mark most of the
    group's recipients had, the recipient-weighted ms, and how many domains it holds.
    """
    frame = show(table, half_life_days=half_life_days)
    if top is None:
        return (
            frame.sort("recipients", descending=True, nulls_last=True)
            .group_by("domain", "server", maintain_order=True)
            .agg(pl.col("mark").first(), pl.col("ms_per_recipient").first())
            .sort("domain", "server")
        )
    volume = frame.select("domain", "mx_host", pl.col("recipients").fill_null(0).alias("volume"))
    labels = domain_labels(volume, top, by=by, max_groups=max_groups)
    weight = pl.col("recipients").fill_null(0)
    pooled = frame.join(labels.select("domain", "label"), on="domain", how="left")
    marks = (
        pooled.group_by("label", "server", "mark")
        .agg(weight.sum().alias("weight"))
        .sort(["weight", "mark"], descending=[True, False], nulls_last=True)
        .group_by("label", "server", maintain_order=True)
        .agg(pl.col("mark").first())
    )
    ms = pooled.group_by("label", "server").agg(
        ((pl.col("ms_per_recipient") * weight).sum() / weight.sum()).alias("ms_per_recipient"),
        pl.col("domain").n_unique().alias("domains"),
        weight.sum().alias("recipients"),
    )
    order = labels.group_by("label").agg(
        pl.col("rolled_up").first(), pl.col("volume").sum().alias("volume")
    )
    return (
        marks.join(ms, on=["label", "server"])
        .join(order, on="label")
        .sort(["rolled_up", "volume", "label", "server"], descending=[False, True, False, False])
        .drop("volume", "rolled_up")
        .rename({"label": "domain"})
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
