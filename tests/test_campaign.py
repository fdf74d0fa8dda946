"""End to end: recipient file -> Ray delivery servers -> real SMTP sink -> ledger and report."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import make_spec, write_csv
from raymail.cli import _register, app
from raymail.driver.campaign import run_campaign
from raymail.errors import RunDirError, RunLockedError
from raymail.run.ledger import final_outcomes, read_observations, read_outcomes
from raymail.run.rundir import RunDir
from raymail.sink import SinkConfig, read_capture, run_sink

pytestmark = pytest.mark.usefixtures("ray_session")


def _recipients(path: Path, n: int, domains: tuple[str, ...]) -> Path:
    rows = [f"user{i}@{domains[i % len(domains)]},Name{i}" for i in range(n)]
    return write_csv(path, "email,name", rows)


def _every_row_accounted(run_dir: Path, input_rows: int) -> pl.DataFrame:
    final = final_outcomes(read_outcomes(run_dir))
    rejects = pl.read_parquet(run_dir / "rejects.parquet")
    assert final.height + rejects.height == input_rows
    assert final["row"].n_unique() == final.height
    assert not set(final["row"].to_list()) & set(rejects["row"].to_list())
    return final


def test_campaign_delivers_each_recipient_once(tmp_path: Path) -> None:
    csv = _recipients(tmp_path / "list.csv", 450, ("a.test", "b.test", "c.test"))
    with open(csv, "a") as fh:
        fh.write("not-an-address,Bad\nuser0@A.TEST,Duplicate\n")
    capture = tmp_path / "capture"
    with run_sink(SinkConfig(), capture_dir=capture) as sink:
        spec = make_spec(csv, sink.port)
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
    assert report.total == 450
    assert report.accepted == 450
    assert report.rejected_input == 2
    assert report.deferred == report.failed == 0
    assert report.messages_per_s > 0
    assert set(report.domains) == {"a.test", "b.test", "c.test"}
    captured = read_capture(capture)
    per_rcpt = captured.group_by("rcpt_to").len()
    assert per_rcpt.height == 450 and per_rcpt["len"].max() == 1
    # the Message-ID the ledger recorded is the one the sink received
    final = _every_row_accounted(tmp_path / "run", 452)
    joined = final.join(captured, left_on="email", right_on="rcpt_to")
    assert (joined["message_id"] == joined["message_id_right"]).all()
    assert read_observations(tmp_path / "run").height >= 1
    parts = list((tmp_path / "run" / "outcomes").glob("*.parquet"))
    assert 1 <= len(parts) <= 20  # batched, not one file per portion


def test_faults_are_deferred_failed_and_retried(tmp_path: Path) -> None:
    csv = _recipients(tmp_path / "list.csv", 120, ("ok.test", "temp.test", "perm.test"))
    config = SinkConfig(
        domains={
            "temp.test": {"tempfail_rate": 1.0},
            "perm.test": {"permfail_rate": 1.0},
        },
        addresses={"user0@ok.test": "drop"},
    )
    with run_sink(config, capture_dir=tmp_path / "cap") as sink:
        report = run_campaign(make_spec(csv, sink.port), tmp_path / "run", live_progress=False)
    final = _every_row_accounted(tmp_path / "run", 120)
    by_domain = report.domains
    # the sink drops user0's connection after the body: maybe delivered, so "in doubt"
    assert by_domain["ok.test"] == {"accepted": 39, "deferred": 0, "failed": 0, "in_doubt": 1}
    assert by_domain["temp.test"] == {"accepted": 0, "deferred": 40, "failed": 0}
    assert by_domain["perm.test"] == {"accepted": 0, "deferred": 0, "failed": 40}
    temp = final.filter(pl.col("domain") == "temp.test")
    assert set(temp["attempt"].to_list()) == {3}  # max_attempts in make_spec
    assert set(temp["smtp_code"].to_list()) == {451}
    perm = final.filter(pl.col("domain") == "perm.test")
    assert set(perm["enhanced_status"].to_list()) == {"5.1.1"}
    assert set(perm["attempt"].to_list()) == {1}  # 5xx is never retried
    dropped = final.filter(pl.col("email") == "user0@ok.test").row(0, named=True)
    assert dropped["status"] == "in_doubt" and "dropped" in dropped["response"]
    assert dropped["attempt"] == 3  # the default policy resends: each try was in doubt
    assert report.in_doubt_recipients == ["user0@ok.test"]
    assert read_capture(tmp_path / "cap").height == 39


def test_tempfail_then_success_on_retry(tmp_path: Path) -> None:
    csv = _recipients(tmp_path / "list.csv", 200, ("flaky.test",))
    config = SinkConfig(seed=3, domains={"flaky.test": {"tempfail_rate": 0.5}})
    with run_sink(config, capture_dir=tmp_path / "cap") as sink:
        spec = make_spec(
            csv, sink.port, retry={"schedule": [], "max_attempts": 6, "initial_backoff_s": 0.1}
        )
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
    final = _every_row_accounted(tmp_path / "run", 200)
    assert report.accepted >= 190
    assert (final.filter(pl.col("status") == "accepted")["attempt"] > 1).any()  # some retried
    assert read_capture(tmp_path / "cap").group_by("rcpt_to").len()["len"].max() == 1


def test_shared_content_uses_many_rcpt_per_transaction(tmp_path: Path) -> None:
    csv = _recipients(tmp_path / "list.csv", 300, ("big.test",))
    with run_sink(SinkConfig(), capture_dir=tmp_path / "cap") as sink:
        spec = make_spec(csv, sink.port, subject="News", text="Same for everyone.\n")
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
    assert report.accepted == 300
    captured = read_capture(tmp_path / "cap")
    assert captured["rcpt_to"].n_unique() == 300
    transactions = captured.select(["file", "line"]).unique().height
    assert transactions <= 6  # portions of 100 recipients, up to 100 RCPT each
    obs = read_observations(tmp_path / "run")
    assert (obs["recipients"] > 1).any()


def test_report_cli_and_status(tmp_path: Path) -> None:
    csv = _recipients(tmp_path / "list.csv", 30, ("a.test", "b.test"))
    with run_sink(SinkConfig()) as sink:
        run_campaign(make_spec(csv, sink.port), tmp_path / "run", live_progress=False)
    _register()
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for key in (
        "total",
        "accepted",
        "deferred",
        "failed",
        "rejected_input",
        "elapsed_s",
        "messages_per_s",
        "domains",
    ):
        assert key in data
    assert data["accepted"] == 30
    text = runner.invoke(app, ["report", str(tmp_path / "run")])
    assert text.exit_code == 0 and "accepted" in text.output
    status = runner.invoke(app, ["status", str(tmp_path / "run")])
    assert "complete" in status.output and "30/30" in status.output
    missing = runner.invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "not a run directory" in missing.output


def test_run_dir_is_locked_and_not_reused(tmp_path: Path) -> None:
    csv = _recipients(tmp_path / "list.csv", 5, ("a.test",))
    holder = RunDir(tmp_path / "run")
    holder.lock()
    try:
        with pytest.raises(RunLockedError, match="another driver"):
            run_campaign(make_spec(csv, 1), tmp_path / "run")
    finally:
        holder.unlock()
    with run_sink(SinkConfig()) as sink:
        run_campaign(make_spec(csv, sink.port), tmp_path / "run", live_progress=False)
        with pytest.raises(RunDirError, match="already holds run"):
            run_campaign(make_spec(csv, sink.port), tmp_path / "run")


def test_target_minutes_sizes_servers_and_says_when_it_cannot(tmp_path: Path) -> None:
    csv = _recipients(tmp_path / "list.csv", 400, ("slow.test",))
    # ~16 s of work for the first server alone (it sends ~25/s): the added servers start
    # (~3 s, more on a loaded machine) while there is still work to take.
    config = SinkConfig(domains={"slow.test": {"latency_ms": 50}})
    with run_sink(config) as sink:
        spec = make_spec(
            csv,
            sink.port,
            delivery_servers=1,
            concurrency=2,
            portion_size=20,
            target_minutes=0.05,  # 3 s: more than 3 servers would be needed
            max_delivery_servers=3,
        )
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
    assert report.accepted == 400
    capacity = report.capacity
    assert capacity is not None
    assert capacity.servers == 3 and report.delivery_servers == 3
    assert not capacity.feasible and "cannot be met" in capacity.message
    servers = set(read_outcomes(tmp_path / "run")["server"].to_list())
    assert len(servers) >= 2  # the added servers took work
