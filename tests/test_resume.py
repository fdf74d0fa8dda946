"""Kills, resumes and failover: nobody accepted is sent twice, nobody is skipped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from conftest import make_spec, write_csv
from helpers import wait_for
from helpers.sessions import kill_session
from raymail.driver.campaign import resume_campaign, run_campaign
from raymail.run.report import RunReport
from raymail.sink import SinkConfig, read_capture, run_sink

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]


def _recipients(path: Path, n: int, domains: int = 4) -> Path:
    return write_csv(path, "email,name", [f"u{i}@d{i % domains}.test,N{i}" for i in range(n)])


def _captured(capture: Path) -> int:
    try:
        return read_capture(capture).height
    except Exception:  # the first capture file may not exist yet
        return 0


def _check_exactly_once(report: RunReport, capture: Path, n: int) -> pl.DataFrame:
    """Every recipient arrived; any duplicate is a recipient the report called in doubt."""
    per_rcpt = read_capture(capture).group_by("rcpt_to").len()
    assert per_rcpt.height == n, f"missed {n - per_rcpt.height} recipients"
    duplicates = set(per_rcpt.filter(pl.col("len") > 1)["rcpt_to"].to_list())
    assert duplicates <= set(report.in_doubt_recipients)
    assert report.accepted + report.in_doubt == n
    return per_rcpt


def _spawn_send(spec_path: Path, run_dir: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "raymail.cli", "send", str(spec_path), "--run-dir", str(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,  # the driver and the Ray it starts share one process group
    )


def _spec_file(path: Path, port: int, recipients: Path, extra: str = "") -> Path:
    path.write_text(
        "campaign: killme\nsender: news@sender.test\nsubject: 'Hi {{ name }}'\n"
        f"text: 'Hello {{{{ name }}}}'\nrecipients: {recipients}\n"
        f"mx_override: {{'*': '127.0.0.1:{port}'}}\ndelivery_servers: 2\nconcurrency: 4\n"
        "checkpoint_interval_s: 0.5\n" + extra
    )
    return path


def test_whole_ray_kill_then_resume(tmp_path: Path) -> None:
    n = 3000
    csv = _recipients(tmp_path / "list.csv", n)
    capture = tmp_path / "cap"
    config = SinkConfig(default={"latency_ms": 10})
    with run_sink(config, capture_dir=capture) as sink:
        spec = _spec_file(tmp_path / "c.yaml", sink.port, csv)
        proc = _spawn_send(spec, tmp_path / "run")
        try:
            wait_for("a quarter to be delivered", lambda: _captured(capture) >= n // 4, 180)
        finally:
            kill_session(proc.pid)  # the driver and all of its Ray, at once
            proc.wait(timeout=30)
        before = _captured(capture)
        assert before < n, "the run finished before the kill; the test proves nothing"
        report = resume_campaign(tmp_path / "run", live_progress=False)
    assert report.resumes == 1 and report.status == "complete"
    _check_exactly_once(report, capture, n)
    assert report.in_doubt <= 8  # at most the transactions in flight: 2 servers x 4
    again = resume_campaign(tmp_path / "run", live_progress=False)
    assert again.note is not None and "nothing was sent" in again.note


def test_resume_with_in_doubt_skip_does_not_resend(tmp_path: Path) -> None:
    n = 400
    csv = _recipients(tmp_path / "list.csv", n, domains=1)
    capture = tmp_path / "cap"
    config = SinkConfig(addresses={"u0@d0.test": "hang"})
    with run_sink(config, capture_dir=capture) as sink:
        spec = _spec_file(tmp_path / "c.yaml", sink.port, csv, "smtp: {data_timeout_s: 600}\n")
        proc = _spawn_send(spec, tmp_path / "run")
        try:
            wait_for(
                "u0 to hang while the rest goes on",
                lambda: sink.stats().hung >= 1 and _captured(capture) >= n - 150,
                180,
            )
        finally:
            kill_session(proc.pid)
            proc.wait(timeout=30)
        report = resume_campaign(tmp_path / "run", in_doubt="skip", live_progress=False)
    assert "u0@d0.test" in report.in_doubt_recipients
    assert report.in_doubt >= 1 and report.accepted + report.in_doubt == n
    captured = read_capture(capture)
    assert "u0@d0.test" not in captured["rcpt_to"].to_list()  # skipped, not resent
    assert captured.group_by("rcpt_to").len()["len"].max() == 1


def _parent(pid: int) -> int:
    try:  # /proc/PID/stat: "pid (comm) state ppid ..."; comm may hold spaces
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _ours(pid: int) -> bool:
    """A descendant of this test process: of the session's own Ray (its raylet is our child),
    never a delivery server of another Ray on the machine (others' tests and benchmarks)."""
    me = os.getpid()
    for _ in range(64):  # bounded: process trees are not that deep
        pid = _parent(pid)
        if pid == me:
            return True
        if pid <= 1:
            return False
    return False


def _delivery_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"DeliveryServer" in title and _ours(int(entry.name)):
                pids.append(int(entry.name))
    return pids


def test_killed_delivery_server_loses_nothing(tmp_path: Path) -> None:
    n = 3000
    csv = _recipients(tmp_path / "list.csv", n)
    capture = tmp_path / "cap"
    config = SinkConfig(default={"latency_ms": 10})
    result: dict[str, Any] = {}
    with run_sink(config, capture_dir=capture) as sink:
        spec = make_spec(csv, sink.port)

        def send() -> None:
            result["report"] = run_campaign(spec, tmp_path / "run", live_progress=False)

        thread = threading.Thread(target=send)
        thread.start()
        wait_for("a quarter to be delivered", lambda: _captured(capture) >= n // 4, 180)
        pids = _delivery_pids()
        assert pids, "no delivery server process found"
        os.kill(pids[0], signal.SIGKILL)
        thread.join(timeout=300)
    assert not thread.is_alive()
    report = result["report"]
    _check_exactly_once(report, capture, n)
    assert report.in_doubt == 0  # the in-doubt ones were resent (policy resend)


@pytest.mark.parametrize(
    ("policy", "dispatch"), [("resend", "push"), ("skip", "push"), ("resend", "pull")]
)
def test_stalled_server_is_replaced(tmp_path: Path, policy: str, dispatch: str) -> None:
    n = 600
    csv = _recipients(tmp_path / "list.csv", n)
    capture = tmp_path / "cap"
    # Pull mode: a server gets work only once its actor runs and asks. Small portions and a
    # slow sink keep the healthy server busy for seconds, so a late-starting hanging server
    # still asks before the work runs out (else the test would prove nothing).
    pull = dispatch == "pull"
    config = SinkConfig(
        default={"latency_ms": 50 if pull else 0},
        clients={"127.0.0.3": {"hang": True}},
    )
    with run_sink(config, capture_dir=capture) as sink:
        spec = make_spec(
            csv,
            sink.port,
            source_addresses=["127.0.0.2", "127.0.0.3"],
            stall_timeout_s=3,
            in_doubt=policy,
            dispatch=dispatch,
            portion_size=10 if pull else 100,
            smtp={"data_timeout_s": 600},
        )
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
        assert sink.stats().hung >= 1
    captured = read_capture(capture)
    assert {p.rsplit(":", 1)[0] for p in captured["peer"].to_list()} == {"127.0.0.2"}
    assert captured.group_by("rcpt_to").len()["len"].max() == 1
    hung = report.in_doubt_ever
    assert 1 <= hung <= 4  # the hung server's connections
    if policy == "resend":
        assert report.accepted == n and report.in_doubt == 0
    else:
        assert report.accepted == n - hung and report.in_doubt == hung


@pytest.mark.parametrize("dispatch", ["push", "pull"])
def test_failing_server_stops_getting_work(tmp_path: Path, dispatch: str) -> None:
    n = 1200
    csv = _recipients(tmp_path / "list.csv", n)
    capture = tmp_path / "cap"
    config = SinkConfig(clients={"127.0.0.3": {"tempfail_rate": 1.0}})
    with run_sink(config, capture_dir=capture) as sink:
        spec = make_spec(
            csv,
            sink.port,
            source_addresses=["127.0.0.2", "127.0.0.3"],
            portion_size=20,
            dispatch=dispatch,
            retry={
                "schedule": [],
                "max_attempts": 6,
                "initial_backoff_s": 0.1,
                "max_backoff_s": 0.5,
            },
        )
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
    assert report.accepted == n
    outcomes = pl.read_parquet(tmp_path / "run" / "outcomes")
    bad = outcomes.filter(pl.col("server") == "ds1")
    good = outcomes.filter(pl.col("server") == "ds0")
    assert bad["portion"].n_unique() < good["portion"].n_unique()
    assert bad.filter(pl.col("status") == "accepted").height == 0


def test_pull_mode_delivers_each_recipient_once(tmp_path: Path) -> None:
    n = 1500
    csv = _recipients(tmp_path / "list.csv", n)
    capture = tmp_path / "cap"
    with run_sink(SinkConfig(), capture_dir=capture) as sink:
        spec = make_spec(csv, sink.port, dispatch="pull", portion_size=50)
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
    _check_exactly_once(report, capture, n)
    servers = pl.read_parquet(tmp_path / "run" / "outcomes")["server"].unique().to_list()
    assert sorted(servers) == ["ds0", "ds1"]  # both servers asked for, and got, work
