"""Delivery through real DNS (dnsmasq), STARTTLS and bound source addresses, end to end."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from conftest import make_spec, write_csv
from helpers.certs import self_signed
from helpers.dns_server import Dnsmasq, free_port
from helpers.system_packages import require_binary
from raymail.driver.campaign import run_campaign
from raymail.run.ledger import final_outcomes, read_observations, read_outcomes
from raymail.sink import SinkConfig, read_capture, run_sink

pytestmark = pytest.mark.usefixtures("ray_session")

ZONE = """\
local=/test/
local-ttl=30
mx-host=mx.test,mail.mx.test,10
host-record=mail.mx.test,127.0.0.1
# the preferred exchanger refuses connections; the backup works
mx-host=backup.test,dead.backup.test,5
mx-host=backup.test,live.backup.test,10
host-record=dead.backup.test,127.0.0.9
host-record=live.backup.test,127.0.0.1
# no MX: the domain's own address
host-record=implicit.test,127.0.0.1
mx-host=nullmx.test,.,0
"""


def test_mx_lookup_fallback_and_dns_failures(tmp_path: Path) -> None:
    dns = Dnsmasq(require_binary("dnsmasq", "dnsmasq-base"), tmp_path, ZONE)
    try:
        domains = ("mx.test", "backup.test", "implicit.test", "nullmx.test", "nowhere.test")
        rows = [f"u{i}@{d},N{i}" for d in domains for i in range(5)]
        csv = write_csv(tmp_path / "list.csv", "email,name", rows)
        with run_sink(SinkConfig(), port=free_port(), capture_dir=tmp_path / "cap") as sink:
            spec = make_spec(
                csv,
                0,
                mx_override=None,
                nameservers=[f"127.0.0.1:{dns.port}"],
                smtp={"port": sink.port, "connect_timeout_s": 3},
            )
            report = run_campaign(spec, tmp_path / "run", live_progress=False)
    finally:
        dns.stop()
    by_domain = report.domains
    for ok in ("mx.test", "backup.test", "implicit.test"):
        assert by_domain[ok] == {"accepted": 5, "deferred": 0, "failed": 0}, ok
    assert by_domain["nullmx.test"]["failed"] == 5
    assert by_domain["nowhere.test"]["failed"] == 5
    final = final_outcomes(read_outcomes(tmp_path / "run"))
    mx_hosts = final.filter(pl.col("domain") == "backup.test")["mx_host"].unique().to_list()
    assert mx_hosts == ["live.backup.test"]
    nx = final.filter(pl.col("domain") == "nowhere.test")["response"].to_list()
    assert all("not exist" in r or "NXDOMAIN" in r for r in nx), nx
    assert read_capture(tmp_path / "cap").height == 15


def test_starttls_and_source_addresses(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    csv = write_csv(
        tmp_path / "list.csv", "email,name", [f"u{i}@d{i % 4}.test,N{i}" for i in range(80)]
    )
    with run_sink(SinkConfig(), capture_dir=tmp_path / "cap", tls_cert=cert, tls_key=key) as sink:
        spec = make_spec(
            csv, sink.port, source_addresses=["127.0.0.2", "127.0.0.3"], portion_size=10
        )
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
    assert report.accepted == 80
    peers = {p.rsplit(":", 1)[0] for p in read_capture(tmp_path / "cap")["peer"].to_list()}
    assert peers == {"127.0.0.2", "127.0.0.3"}
    observations = read_observations(tmp_path / "run")
    assert observations.height > 0 and observations["tls"].all()


def test_starttls_required_but_not_offered_is_deferred(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "list.csv", "email,name", ["a@x.test,A", "b@x.test,B"])
    with run_sink(SinkConfig(), capture_dir=tmp_path / "cap") as sink:
        spec = make_spec(csv, sink.port, smtp={"starttls": "required"})
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
    assert report.accepted == 0 and report.deferred == 2
    final = final_outcomes(read_outcomes(tmp_path / "run"))
    assert all("STARTTLS" in r for r in final["response"].to_list())
    assert read_capture(tmp_path / "cap").height == 0
