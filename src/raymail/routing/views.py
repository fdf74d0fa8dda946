"""``show`` and ``explain``: the routing table and a run's routing, as polars frames.

``show`` reads the table decayed to now (what the next run will believe). ``explain`` sets,
per (server, domain) of one run, what the policy expected and planned at the start
against what happened (recipients sent, measured time per recipient, bad replies) and the
events (demotions) in between, with one sentence saying why the server got what it got.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from raymail.errors import RoutingError
from raymail.routing.runlog import read_records
from raymail.routing.table import RoutingTable
from raymail.run.ledger import read_observations, read_outcomes
from raymail.run.rundir import MANIFEST

SHOW_COLUMNS = (
    "server", "domain", "mx_host", "network", "mark", "ms_per_recipient",
    "throughput_per_connection", "latency_ms", "connect_ms", "rtt_ms", "hops",
    "deferral_rate", "failure_rate", "samples", "recipients", "updated_at", "probed_at",
    "probe_error",
)  # fmt: skip
_BASELINE_WHY = {
    "round_robin": "round_robin: portions dealt to the servers in turn, whatever their speed",
    "equal_shares": "equal_shares: one contiguous equal share of the sorted list per server",
    "oracle": "oracle: the makespan plan from the true topology",
}


def show(
    table: str | Path | None = None,
    *,
    domain: str | None = None,
    half_life_days: float = 7.0,
    now: datetime | None = None,
) -> pl.DataFrame:
    """The routing table decayed to ``now``: one row per (server, domain, MX host) with
    estimates and mark, best first within each domain."""
    if half_life_days <= 0:
        raise RoutingError(f"half_life_days: must be > 0 (got {half_life_days})")
    frame = RoutingTable(table).load(half_life_days * 86400.0, now or datetime.now(UTC))
    if domain is not None:
        frame = frame.filter(pl.col("domain") == domain.strip().lower())
    return frame.select(SHOW_COLUMNS).sort(
        ["domain", "ms_per_recipient", "server"], nulls_last=True
    )


def explain(run_dir: str | Path, *, domain: str | None = None) -> pl.DataFrame:
    """Per (server, domain) of a run: estimate and plan at the start, what happened, why."""
    path = Path(run_dir)
    if not (path / MANIFEST).exists():
        raise RoutingError(f"{path}: not a run directory (no {MANIFEST})")
    records = read_records(path)
    policy = str(records.get("policy", {}).get("policy", "unknown"))
    actual = _actual(path)
    if actual.is_empty():
        raise RoutingError(f"{path}: the run has no outcomes yet: nothing to explain")
    frame = actual
    for name, columns in (
        ("estimates_start", {"ms_per_recipient": "expected_ms", "source": "estimate_from",
                             "confident": "confident"}),
        ("plan_start", {"planned_share": "planned_share", "planned_portions": "planned_portions"}),
        ("estimates_end", {"ms_per_recipient": "learned_ms"}),
    ):  # fmt: skip
        found = records.get(name)
        if isinstance(found, pl.DataFrame) and not found.is_empty():
            picked = found.select(
                "server", "domain", *[pl.col(c).alias(a) for c, a in columns.items()]
            )
            frame = frame.join(picked, on=["server", "domain"], how="left")
        else:
            frame = frame.with_columns([pl.lit(None).alias(a) for a in columns.values()])
    frame = frame.join(_events(records), on=["server", "domain"], how="left")
    if domain is not None:
        frame = frame.filter(pl.col("domain") == domain.strip().lower())
    rows = [dict(row, why=_why(policy, row)) for row in frame.iter_rows(named=True)]
    schema = pl.Schema({**frame.schema, "why": pl.String()})
    return pl.DataFrame(rows, schema=schema).sort(
        ["domain", "recipients"], descending=[False, True]
    )


def _actual(run_dir: Path) -> pl.DataFrame:
    """What each (server, domain) did in the run: recipient attempts, fates, timings."""
    outcomes = read_outcomes(run_dir).filter(pl.col("server").is_not_null())
    if outcomes.is_empty():
        return pl.DataFrame()
    key = pl.coalesce(pl.col("source_address"), pl.col("server")).alias("server")
    fates = (
        outcomes.filter(pl.col("status") != "suppressed")
        .with_columns(pl.col("server").alias("name"), key)
        .group_by("server", "domain")
        .agg(
            pl.col("name").unique().sort().str.join(",").alias("names"),
            pl.len().alias("recipients"),
            (pl.col("status") == "accepted").sum().alias("accepted"),
            (pl.col("status") == "deferred").sum().alias("deferred"),
            (pl.col("status") == "failed").sum().alias("failed"),
            pl.col("portion").n_unique().alias("portions"),
        )
        .with_columns(
            (pl.col("recipients") / pl.col("recipients").sum().over("domain")).alias("share")
        )
    )
    observations = read_observations(run_dir)
    if observations.is_empty():
        return fates.with_columns(pl.lit(None, pl.Float64).alias("measured_ms"))
    busy = (
        pl.col("transaction_s") + pl.col("connect_s").fill_null(0) + pl.col("banner_s").fill_null(0)
    )
    timing = (
        observations.with_columns(key)
        .group_by("server", "domain")
        .agg((1000 * busy.sum() / pl.col("recipients").sum()).alias("measured_ms"))
    )
    return fates.join(timing, on=["server", "domain"], how="left")


def _events(records: dict[str, Any]) -> pl.DataFrame:
    events = records.get("events")
    schema = {"server": pl.String, "domain": pl.String, "events": pl.String}
    if not isinstance(events, pl.DataFrame) or events.is_empty():
        return pl.DataFrame(schema=schema)
    text = pl.format("{} at {} s", pl.col("event"), pl.col("elapsed_s").round(1))
    return (
        events.sort("elapsed_s")
        .group_by("server", "domain", maintain_order=True)
        .agg(text.str.join("; ").alias("events"))
    )


def _why(policy: str, row: dict[str, Any]) -> str:
    """One sentence: what the policy expected and planned, against what happened."""
    got = f"got {row['share']:.0%} of the domain ({row['recipients']} recipient attempts)"
    measured = row.get("measured_ms")
    happened = f"{got}, measured {measured:.0f} ms per recipient" if measured else got
    bad = (row.get("deferred") or 0) + (row.get("failed") or 0)
    if bad:
        happened += f", {bad} deferred or failed"
    if policy != "learned":
        return f"{_BASELINE_WHY.get(policy, policy)}; {happened}"
    parts = []
    expected = row.get("expected_ms")
    if expected is None:
        parts.append("unknown at the start (a server or domain the first plan did not cover)")
    else:
        sure = "" if row.get("confident") else ", not confident"
        parts.append(f"expected {expected:.0f} ms per recipient ({row['estimate_from']}{sure})")
        share = row.get("planned_share")
        if share is not None:
            planned = "nothing" if not share else f"{share:.0%}"
            parts.append(f"first plan gave it {planned}")
    if row.get("events"):
        parts.append(row["events"])
    learned = row.get("learned_ms")
    if learned is not None:
        parts.append(f"learned {learned:.0f} ms per recipient by the end")
    return "; ".join([*parts, happened])
