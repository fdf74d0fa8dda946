"""The Ray job entry point, submitted with `ray job submit` to a real local `ray start --head`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import write_csv
from dns_server import free_port
from raymail.sink import SinkConfig, read_capture, run_sink

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _ray_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
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
            env=_ray_env(),
            start_new_session=True,
        )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{address}/api/version", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray head did not start: {log.read_text()[-2000:]}")
            time.sleep(1)
        yield address
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        time.sleep(1)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the head's children share its group


def test_ray_job_submit_sends_the_campaign(ray_head: str, tmp_path: Path) -> None:
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
            "--address", ray_head, "--working-dir", str(ROOT), "--",
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
