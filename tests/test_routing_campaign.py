"""Learned routing end to end: real Ray, delivery servers bound to distinct 127.0.0.x
source addresses, and the embedded sink (in its own process) applying a topology, so
each (server, domain) link has its own latency and faults."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import make_spec, write_csv
from raymail.cli import _register, app
from raymail.driver.campaign import run_campaign
from raymail.routing import explain, show
from raymail.routing.estimates import TRIAL_RECIPIENTS
from raymail.run.ledger import final_outcomes, read_outcomes
from raymail.sink import Rule, SinkConfig, SinkProcess, Topology

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]

A, B = "127.0.0.2", "127.0.0.3"


def _list(path: Path, counts: dict[str, int]) -> Path:
    rows = [f"u{i}@{d},N{i}" for d, n in counts.items() for i in range(n)]
    return write_csv(path, "email,name", rows)


def _sink_config(links: dict[str, dict[str, dict[str, Any]]]) -> SinkConfig:
    rules = {ip: {d: Rule.model_validate(r) for d, r in by.items()} for ip, by in links.items()}
    return Topology(links=rules).apply(SinkConfig(seed=7))


def _spec(
    csv: Path, sink: SinkProcess, domains: list[str], dispatch: str = "push", **routing: Any
) -> Any:
    return make_spec(
        csv,
        sink.port,
        mx_override={d: f"mx.{d.split('.')[0]}.localhost:{sink.port}" for d in domains},
        source_addresses=[A, B],
        portion_size=10,
        concurrency=4,
        dispatch=dispatch,
        routing={"probe_interval_s": 1.0, **routing},
        retry={"schedule": [], "max_attempts": 4, "initial_backoff_s": 0.1, "max_backoff_s": 0.3},
    )


def _share(run_dir: Path) -> pl.DataFrame:
    """Final outcomes' share of each domain per source address."""
    final = final_outcomes(read_outcomes(run_dir))
    return (
        final.group_by("domain", "source_address")
        .len()
        .with_columns((pl.col("len") / pl.col("len").sum().over("domain")).alias("share"))
    )


def _share_of(shares: pl.DataFrame, domain: str, source: str) -> float:
    row = shares.filter((pl.col("domain") == domain) & (pl.col("source_address") == source))
    return float(row["share"].item()) if row.height else 0.0


def test_policy_prefers_the_server_the_topology_makes_faster(tmp_path: Path) -> None:
    # alpha is 10x faster from A, beta 10x faster from B
    links = {
        A: {"alpha.test": {"latency_ms": 15}, "beta.test": {"latency_ms": 150}},
        B: {"alpha.test": {"latency_ms": 150}, "beta.test": {"latency_ms": 15}},
    }
    domains = ["alpha.test", "beta.test"]
    csv = _list(tmp_path / "list.csv", {d: 300 for d in domains})
    with SinkProcess(_sink_config(links)) as sink:
        report = run_campaign(_spec(csv, sink, domains), tmp_path / "run", live_progress=False)
    assert report.accepted == 600
    shares = _share(tmp_path / "run")
    assert _share_of(shares, "alpha.test", A) >= 0.7, shares
    assert _share_of(shares, "beta.test", B) >= 0.7, shares

    # the table was empty: each server's first try of a domain is a trial piece, not a
    # whole portion, and the pieces' rows are sent once like any other
    outcomes = read_outcomes(tmp_path / "run")
    assert outcomes["row"].n_unique() == 600
    per_portion = outcomes.group_by("source_address", "domain", "portion").agg(
        pl.len().alias("size"), pl.col("started_at").min()
    )
    first = per_portion.sort("started_at").group_by("source_address", "domain").first()
    assert first.height == 4 and (first["size"] <= TRIAL_RECIPIENTS).all(), first
    assert per_portion["size"].max() == 10  # known pairs get whole portions

    table = show(domain="alpha.test")  # persisted in $RAYMAIL_HOME/routing
    marks = dict(zip(table["server"].to_list(), table["mark"].to_list(), strict=True))
    assert marks[A] == "preferred" and marks[B] != "preferred", table
    _register()
    printed = CliRunner().invoke(app, ["routing", "explain", str(tmp_path / "run"), "--json"])
    assert printed.exit_code == 0, printed.stderr
    assert len(json.loads(printed.stdout)["rows"]) == 4  # 2 servers x 2 domains
    why = explain(tmp_path / "run", domain="beta.test")
    assert why.height == 2 and why["why"].str.contains("measured").all()
    fast = why.filter(pl.col("server") == B)
    slow = why.filter(pl.col("server") == A)
    assert fast["measured_ms"].item() < slow["measured_ms"].item()


def test_server_whose_domain_turns_to_4xx_is_demoted_within_the_run(tmp_path: Path) -> None:
    domains = ["alpha.test", "beta.test"]
    healthy = {
        A: {"alpha.test": {"latency_ms": 10}, "beta.test": {"latency_ms": 20}},
        B: {"alpha.test": {"latency_ms": 60}, "beta.test": {"latency_ms": 20}},
    }
    csv = _list(tmp_path / "list.csv", {"alpha.test": 300, "beta.test": 200})
    with SinkProcess(_sink_config(healthy)) as sink:  # run 1 teaches: A is best for alpha
        run_campaign(_spec(csv, sink, domains), tmp_path / "run1", live_progress=False)
    before = show(domain="alpha.test")
    assert before.filter(pl.col("server") == A)["mark"].item() == "preferred", before

    broken: dict[str, dict[str, dict[str, Any]]] = {
        **healthy,
        A: {**healthy[A], "alpha.test": {"latency_ms": 10, "tempfail_rate": 1.0}},
    }
    with SinkProcess(_sink_config(broken)) as sink:
        report = run_campaign(_spec(csv, sink, domains), tmp_path / "run2", live_progress=False)
    assert report.accepted == 500  # alpha's deferred recipients went to B on retry

    events = pl.read_parquet(tmp_path / "run2" / "routing" / "events.parquet")
    demoted = events.filter(
        (pl.col("event") == "demoted")
        & (pl.col("server") == A)
        & (pl.col("domain") == "alpha.test")
    )
    assert demoted.height >= 1, events
    outcomes = read_outcomes(tmp_path / "run2")
    at = demoted["at"].min()
    after = outcomes.filter(
        (pl.col("started_at") > at)
        & (pl.col("source_address") == A)
        & (pl.col("domain") == "alpha.test")
    )
    alpha_from_a = outcomes.filter(
        (pl.col("source_address") == A) & (pl.col("domain") == "alpha.test")
    )
    # after the demotion A gets at most a probation portion or two of alpha, and it keeps
    # sending beta (the pair was demoted, not the server)
    assert after["portion"].n_unique() <= 2, after
    assert alpha_from_a["portion"].n_unique() <= 8, alpha_from_a
    beta_from_a = outcomes.filter(
        (pl.col("source_address") == A) & (pl.col("domain") == "beta.test")
    )
    assert beta_from_a.filter(pl.col("status") == "accepted").height > 0
    why = explain(tmp_path / "run2", domain="alpha.test").filter(pl.col("server") == A)
    assert "demoted" in why["why"].item()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_probe_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    links = {A: {"alpha.test": {"latency_ms": 5}}, B: {"alpha.test": {"latency_ms": 5}}}
    csv = _list(tmp_path / "list.csv", {"alpha.test": 60, "gone.test": 10})
    with SinkProcess(_sink_config(links)) as sink:
        spec = _spec(csv, sink, ["alpha.test"], dispatch="pull")
        override = {**(spec.mx_override or {}), "gone.test": f"127.0.0.1:{_closed_port()}"}
        spec = spec.model_copy(update={"mx_override": override, "retry": spec.retry.model_copy(
            update={"max_attempts": 2})})  # fmt: skip
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
    assert report.accepted == 60 and report.deferred == 10
    probes = pl.read_parquet(tmp_path / "run" / "routing" / "probes.parquet")
    gone = probes.filter(pl.col("domain") == "gone.test")
    assert gone.height >= 1, probes
    assert gone["error"].str.contains("unreachable: Connection refused").all(), gone
    assert gone["rtt_ms"].is_null().all()
    alpha = probes.filter(pl.col("domain") == "alpha.test")
    assert alpha["rtt_ms"].is_not_null().any(), probes
    table = show(domain="gone.test")
    assert table["probe_error"].str.contains("unreachable").all(), table
