"""The routing table (Parquet, kept across runs): decay, marks, and what domains on a
common MX host share; plus the ``raymail routing`` commands' clear errors and probes."""

from __future__ import annotations

import json
import socket
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import make_spec, write_csv
from raymail.cli import _register, app
from raymail.errors import SpecError
from raymail.routing import RoutingTable, show
from raymail.routing.estimates import PairStats, estimate
from raymail.routing.model import SUMS, Evidence, PortionEvidence
from raymail.sink import SinkConfig, run_sink

DAY = 86400.0
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _evidence(rows: Sequence[tuple[str, str, str, float, float]]) -> pl.DataFrame:
    """(server, domain, mx, recipients, seconds per recipient) -> evidence sums."""
    evidence = Evidence()
    for server, domain, mx, n, per in rows:
        sums = dict.fromkeys(SUMS, 0.0)
        sums.update(transactions=n, recipients=n, busy_s=n * per, transaction_s=n * per,
                    accepted=n)  # fmt: skip
        evidence.add(PortionEvidence({(server, domain, mx): list(sums.values())}, [], domain))
    return evidence.frame(T0)


def test_table_persists_decays_and_marks(tmp_path: Path) -> None:
    table = RoutingTable(tmp_path / "routing")
    first = _evidence(
        [
            ("10.0.0.1", "a.test", "mx.p.test", 100, 0.02),
            ("10.0.0.2", "a.test", "mx.p.test", 100, 0.2),
        ]
    )
    table.merge(first, None, 7 * DAY, T0)
    assert (tmp_path / "routing" / "routes.parquet").exists()
    later = RoutingTable(tmp_path / "routing").load(7 * DAY, T0 + timedelta(days=7))
    assert later["recipients"].to_list() == [50.0, 50.0]  # one half-life: half the weight
    marks = dict(zip(later["server"], later["mark"], strict=True))
    assert marks == {"10.0.0.1": "preferred", "10.0.0.2": "unacceptable"}
    # a second run adds to (does not overwrite) the decayed evidence
    table.merge(_evidence([("10.0.0.1", "a.test", "mx.p.test", 10, 0.02)]), None, 7 * DAY,
                T0 + timedelta(days=7))  # fmt: skip
    merged = table.load(7 * DAY, T0 + timedelta(days=7)).filter(pl.col("server") == "10.0.0.1")
    assert merged["recipients"].item() == 60.0


def test_domains_on_a_common_mx_share_what_was_learned(tmp_path: Path) -> None:
    table = RoutingTable(tmp_path / "routing")
    rows = [
        ("fast", "a.test", "mx.p.test", 50, 0.01),
        ("slow", "a.test", "mx.p.test", 50, 0.1),
        ("fast", "z.test", "mx.q.test", 50, 0.1),
        ("slow", "z.test", "mx.q.test", 50, 0.01),
    ]
    table.merge(_evidence(rows), None, 7 * DAY, T0)
    stats = PairStats(table.load(7 * DAY, T0))
    ks = np.array([stats.key("fast"), stats.key("slow")])
    b = stats.domain("b.test")  # never mailed, but found on mx.p.test (a probe says so)
    stats.set_groups(b, "mx.p.test", "p.test")
    est = estimate(stats, ks, np.array([b, stats.domain("y.test")]))
    assert est.tau[0, 0] < est.tau[1, 0] / 5  # b.test: what a.test showed, same MX
    assert est.confident[:, 0].all() and not est.confident[:, 1].any()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_routing_cli_probe_show_and_clear_errors(tmp_path: Path, raymail_home: Path) -> None:
    _register()
    runner = CliRunner()
    empty = runner.invoke(app, ["routing", "show", "--json"])
    assert empty.exit_code == 0 and json.loads(empty.stdout)["rows"] == []
    bad = runner.invoke(app, ["routing", "show", "--half-life-days", "0"])
    assert bad.exit_code == 2 and "half_life_days" in bad.stderr
    missing = runner.invoke(app, ["routing", "explain", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "not a run directory" in missing.stderr

    csv = write_csv(tmp_path / "list.csv", "email", ["a@up.test", "b@gone.test"])
    with run_sink(SinkConfig()) as sink:
        spec = make_spec(csv, sink.port, source_addresses=["127.0.0.2"], delivery_servers=1,
                         mx_override={"up.test": f"127.0.0.1:{sink.port}",
                                      "gone.test": f"127.0.0.1:{_closed_port()}"})  # fmt: skip
        spec_file = tmp_path / "spec.yaml"
        spec_file.write_text(json.dumps(spec.model_dump(mode="json")), encoding="utf-8")
        done = runner.invoke(app, ["routing", "probe", str(spec_file), "--local", "--json"])
    assert done.exit_code == 0, done.stderr
    rows = {r["domain"]: r for r in json.loads(done.stdout)["probes"]}
    assert rows["up.test"]["rtt_ms"] > 0 and rows["up.test"]["error"] is None
    assert rows["up.test"]["hops"] == 1 and rows["up.test"]["source_address"] == "127.0.0.2"
    assert rows["gone.test"]["rtt_ms"] is None
    assert rows["gone.test"]["error"].startswith("unreachable: Connection refused")
    saved = show(raymail_home / "routing", domain="gone.test")
    assert saved["server"].to_list() == ["127.0.0.2"]
    assert saved["mark"].to_list() == ["unacceptable"]  # unreachable, no delivery evidence
    listed = runner.invoke(app, ["routing", "show", "--domain", "up.test"])
    assert listed.exit_code == 0 and "routing (1 rows)" in listed.stdout


def test_routing_spec_keys_are_checked_by_name(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "list.csv", "email", ["a@x.test"])
    assert make_spec(csv, 25).routing.policy == "learned"  # the default
    for policy in ("round_robin", "equal_shares"):
        assert make_spec(csv, 25, routing={"policy": policy}).routing.policy == policy
    with pytest.raises(SpecError, match=r"routing\.policy"):
        make_spec(csv, 25, routing={"policy": "fastest"})
    with pytest.raises(
        SpecError, match=r"unknown key 'routing\.explore' \(did you mean 'exploration'"
    ):
        make_spec(csv, 25, routing={"explore": 0.2})
    with pytest.raises(SpecError, match=r"routing\.exploration"):
        make_spec(csv, 25, routing={"exploration": 0.9})
