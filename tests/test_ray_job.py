"""The Ray job entry point, submitted with `ray job submit` to a real local `ray start --head`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from conftest import write_csv
from helpers import wait_for
from helpers.dns_server import free_port
from raymail.sink import SinkConfig, read_capture, run_sink

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _ray_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    return env


@dataclass(frozen=True)
class Head:
    address: str  # the dashboard's HTTP address, for `ray job` and the SDK
    metrics_port: int  # Prometheus text served by the node's agent


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    """A separate Ray head (its own ports), in its own process group so it can be removed.

    Every port is chosen free: the session's Ray already holds the fixed defaults (the
    dashboard agent's 52365 above all), and a head whose agent cannot bind never runs jobs.
    """
    port, dashboard = free_port(), free_port()
    agent_ports = {
        name: free_port()
        for name in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
            "ray-client-server-port",
        )
    }
    log = tmp_path_factory.mktemp("rayhead") / "head.log"
    ray_bin = str(Path(sys.executable).parent / "ray")
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                ray_bin,
                "start",
                "--head",
                f"--port={port}",
                f"--dashboard-port={dashboard}",
                "--dashboard-host=127.0.0.1",
                "--num-cpus=2",
                "--include-dashboard=true",
                '--resources={"raymail_delivery": 8}',
                "--disable-usage-stats",
                *(f"--{name}={value}" for name, value in agent_ports.items()),
                "--block",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            # Metrics reach the Prometheus endpoint each second (default: 10 s).
            env={**_ray_env(), "RAY_metrics_report_interval_ms": "1000"},
            start_new_session=True,
        )
    address = f"http://127.0.0.1:{dashboard}"
    try:

        def up() -> bool:
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2) as resp:
                    if resp.status == 200:
                        return True
            except OSError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"ray head exited: {log.read_text()[-2000:]}")
            return False

        wait_for(lambda: f"ray head to start: {log.read_text()[-2000:]}", up, 120, 1)
        yield Head(address, agent_ports["metrics-export-port"])
    finally:
        # A test head needs no clean stop: SIGKILL to its process group at once (every
        # process the head starts, job drivers included, stays in that group; a SIGTERM
        # first only cost 3-4 s of waiting).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def test_ray_job_submit_sends_the_campaign(ray_head: Head, tmp_path: Path) -> None:
    rows = [f"u{i}@d{i % 3}.test,N{i}" for i in range(300)]
    write_csv(tmp_path / "list.csv", "email,name", rows)
    run_dir = tmp_path / "run"
    with run_sink(SinkConfig(), capture_dir=tmp_path / "cap") as sink:
        spec = tmp_path / "campaign.yaml"
        spec.write_text(
            "campaign: jobtest\nsender: news@sender.test\nsubject: 'Hi {{ name }}'\n"
            "text: 'Hello {{ name }}'\nrecipients: list.csv\n"
            f"mx_override: {{'*': '127.0.0.1:{sink.port}'}}\n"
            "delivery_servers: 2\nconcurrency: 4\n"
        )
        command = [
            str(Path(sys.executable).parent / "ray"), "job", "submit",
            "--address", ray_head.address, "--working-dir", str(ROOT), "--",
            "python", "jobs/send_campaign.py", str(spec), "--run-dir", str(run_dir),
        ]  # fmt: skip
        for _ in range(12):
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=300, env=_ray_env()
            )
            output = result.stdout + result.stderr
            # The dashboard answers before its job agent is ready, and drops requests
            # while it starts under load: both are worth another try.
            transient = ("No available agent", "Connection aborted", "ConnectionError")
            if result.returncode == 0 or not any(t in output for t in transient):
                break
            time.sleep(5)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "raymail:" in result.stdout  # plain progress lines in the job's log
    report = json.loads((run_dir / "report.json").read_text())
    assert report["accepted"] == 300 and report["campaign"] == "jobtest"
    assert read_capture(tmp_path / "cap").group_by("rcpt_to").len().height == 300


# -- the life cycle: submit, follow, stop halfway, resubmit with --resume ----------------

CAMPAIGN = "lifecycle"
PROGRESS_LINE = re.compile(
    r"raymail: sent (\d+)/(\d+) \(\d+\.\d%\) \| accepted \d+ deferred \d+ failed \d+ "
    r"in doubt \d+ retrying \d+ \| [\d,]+ msg/s \| ETA (\d+:\d\d:\d\d|\?)"
)
STATUS_LINE = re.compile(rf"{CAMPAIGN}: (\w+) . (\d+)/(\d+) settled")
# What the delivery servers export: sample name -> a label it must carry.
WANTED_METRICS = {
    "ray_raymail_accepted_total": "domain",
    "ray_raymail_smtp_seconds_count": "domain",
    "ray_raymail_inflight_portions": "server",
}


class MetricsWatch:
    """Reads the head's Prometheus endpoint and keeps the largest value seen per metric
    (summed over servers and domains) of this test's campaign."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.seen: dict[str, float] = {}
        self.labels: dict[str, set[str]] = {}

    def poll(self) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        try:
            url = f"http://127.0.0.1:{self.port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = resp.read().decode()
        except OSError:
            return
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(body):
            for sample in family.samples:
                label = WANTED_METRICS.get(sample.name)
                if label is None or sample.labels.get("campaign") != CAMPAIGN:
                    continue
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
                self.labels.setdefault(sample.name, set()).add(sample.labels.get(label, ""))
        for name, value in totals.items():
            self.seen[name] = max(self.seen.get(name, 0.0), value)

    def complete(self) -> bool:
        return set(self.seen) == set(WANTED_METRICS) and all(
            self.seen[name] > 0 for name in ("ray_raymail_accepted_total",
                                              "ray_raymail_smtp_seconds_count")
        )  # fmt: skip


def _submit(client: Any, args: list[str], env_vars: dict[str, str]) -> str:
    """Submit the job script, retrying while the head's job agent is still starting."""
    entrypoint = " ".join(["python", "jobs/send_campaign.py", *args])
    runtime_env = {"working_dir": str(ROOT), "env_vars": env_vars}
    for _ in range(12):
        try:
            job_id: str = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
            return job_id
        except Exception as exc:  # the SDK raises RuntimeError with the HTTP body
            transient = ("No available agent", "Connection aborted", "ConnectionError", "503")
            if not any(t in str(exc) for t in transient):
                raise
            time.sleep(5)
    pytest.fail("the job agent never accepted the submission")


def _status(run_dir: Path) -> tuple[str, int] | None:
    """`raymail status RUN_DIR` from another process: (stage, settled), None if unreadable."""
    result = subprocess.run(
        [sys.executable, "-m", "raymail.cli", "status", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = STATUS_LINE.search(result.stdout)
    return (match.group(1), int(match.group(2))) if match else None


def test_job_stop_then_resume_with_progress_metrics_and_status(
    ray_head: Head, tmp_path: Path
) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    n = 1500
    write_csv(tmp_path / "list.csv", "email,name", [f"u{i}@d{i % 4}.test,N{i}" for i in range(n)])
    run_dir, capture = tmp_path / "run", tmp_path / "cap"
    client = JobSubmissionClient(ray_head.address)
    metrics = MetricsWatch(ray_head.metrics_port)
    statuses: list[tuple[str, int]] = []
    stop_status = threading.Event()

    def watch_status() -> None:  # its own thread: a CLI start-up must not delay the stop
        while not stop_status.wait(1.0):
            if (run_dir / "run.json").exists() and (state := _status(run_dir)):
                statuses.append(state)

    status_thread = threading.Thread(target=watch_status, daemon=True)
    env_vars = {"RAYMAIL_PROGRESS_INTERVAL_S": "1"}
    config = SinkConfig(default={"latency_ms": 60})
    with run_sink(config, capture_dir=capture) as sink:
        spec = tmp_path / "campaign.yaml"
        spec.write_text(
            f"campaign: {CAMPAIGN}\nsender: news@sender.test\nsubject: 'Hi {{{{ name }}}}'\n"
            "text: 'Hello {{ name }}'\nrecipients: list.csv\n"
            f"mx_override: {{'*': '127.0.0.1:{sink.port}'}}\n"
            "delivery_servers: 2\nconcurrency: 4\ncheckpoint_interval_s: 0.5\n"
        )
        first = _submit(client, [str(spec), "--run-dir", str(run_dir)], env_vars)
        status_thread.start()

        # Follow the job: its log, `raymail status` and the metrics, until a third is sent
        # and `raymail status` has shown progress (stop anyway at four fifths).
        deadline = time.monotonic() + 240
        while (sent := _captured(capture)) < n // 3 or (
            sent < 4 * n // 5 and not any(settled for _, settled in statuses)
        ):
            assert time.monotonic() < deadline, client.get_job_logs(first)[-3000:]
            assert client.get_job_status(first) in {JobStatus.PENDING, JobStatus.RUNNING}, (
                client.get_job_logs(first)[-3000:]
            )
            metrics.poll()
            time.sleep(0.5)
        client.stop_job(first)
        stop_status.set()
        _wait_status(client, first, {JobStatus.STOPPED, JobStatus.FAILED, JobStatus.SUCCEEDED})
        first_logs = client.get_job_logs(first)
        assert client.get_job_status(first) == JobStatus.STOPPED, first_logs[-3000:]
        before = _captured(capture)
        assert before < n, "the run finished before the stop; the test proves nothing"

        second = _submit(client, [str(spec), "--run-dir", str(run_dir), "--resume"], env_vars)
        deadline = time.monotonic() + 240
        while client.get_job_status(second) not in {JobStatus.SUCCEEDED, JobStatus.FAILED}:
            assert time.monotonic() < deadline, client.get_job_logs(second)[-3000:]
            if not metrics.complete():
                metrics.poll()
            time.sleep(1)
        second_logs = client.get_job_logs(second)
        assert client.get_job_status(second) == JobStatus.SUCCEEDED, second_logs[-3000:]
        for _ in range(20):  # a job shorter than the export period: a few more reads
            if metrics.complete():
                break
            metrics.poll()
            time.sleep(1)

    # The result: everybody once; a second copy only for someone the report calls in doubt.
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "complete" and report["resumes"] == 1
    per_rcpt = read_capture(capture).group_by("rcpt_to").len()
    assert per_rcpt.height == n, f"missed {n - per_rcpt.height} recipients"
    duplicates = set(per_rcpt.filter(pl.col("len") > 1)["rcpt_to"].to_list())
    assert duplicates <= set(report["in_doubt_recipients"])
    assert report["accepted"] + report["in_doubt"] == n

    # Progress in `ray job logs`: plain lines with every field, no terminal escape codes.
    lines = [m for m in PROGRESS_LINE.finditer(first_logs)]
    assert lines and all(int(m.group(2)) == n for m in lines), first_logs[-2000:]
    assert 0 < int(lines[-1].group(1)) < n
    assert "resuming campaign" in second_logs and PROGRESS_LINE.search(second_logs)
    ours = [line for line in (first_logs + second_logs).splitlines() if "raymail:" in line]
    assert ours and not any("\x1b" in line for line in ours)  # Ray's own lines may be coloured

    # `raymail status` from another process while the first job ran.
    assert statuses, "raymail status never answered during the run"
    assert any(stage == "delivering" and settled > 0 for stage, settled in statuses), statuses

    # Ray metrics from the head node's Prometheus endpoint.
    assert metrics.complete(), metrics.seen
    assert {"d0.test", "d1.test", "d2.test", "d3.test"} <= metrics.labels[
        "ray_raymail_smtp_seconds_count"
    ]
    assert metrics.seen["ray_raymail_accepted_total"] <= n + len(duplicates)


def _captured(capture: Path) -> int:
    try:
        return read_capture(capture).height
    except Exception:  # no capture file yet
        return 0


def _wait_status(client: Any, job_id: str, wanted: set[Any], timeout: float = 60) -> None:
    wait_for(
        lambda: f"job {job_id} (still {client.get_job_status(job_id)})",
        lambda: client.get_job_status(job_id) in wanted,
        timeout,
        0.5,
    )
