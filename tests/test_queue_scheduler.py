"""The scheduler on real Ray and the sink: due campaigns run once, kills lose and double
nothing, status changes reach a real HTTP receiver on loopback, signed."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import ray
from typer.testing import CliRunner

from conftest import write_csv
from helpers import wait_for
from helpers.sessions import kill_session
from raymail.cli import app
from raymail.cli.commands import register
from raymail.queue.schedule import schedule_campaign
from raymail.queue.scheduler import Scheduler
from raymail.queue.store import DONE, CampaignQueue
from raymail.queue.webhook import (
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    verify_signature,
)
from raymail.run.report import build_report
from raymail.sink import SinkConfig, read_capture, run_sink
from raymail.spec import load_spec

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]
SECRET = "webhook-secret-0123456789"


def _spec_file(path: Path, campaign: str, port: int, recipients: Path, extra: str = "") -> Path:
    path.write_text(
        f"campaign: {campaign}\nsender: news@sender.test\nsubject: 'Hi {{{{ name }}}}'\n"
        f"text: 'Hello {{{{ name }}}}'\nrecipients: {recipients}\n"
        f"mx_override: {{'*': '127.0.0.1:{port}'}}\ndelivery_servers: 1\nconcurrency: 4\n"
        "checkpoint_interval_s: 0.5\nrouting: {probe: false}\n" + extra,
        encoding="utf-8",
    )
    return path


def _list(path: Path, prefix: str, n: int) -> Path:
    return write_csv(path, "email,name", [f"{prefix}{i}@d{i % 3}.test,N{i}" for i in range(n)])


def _captured(capture: Path) -> pl.DataFrame:
    try:
        return read_capture(capture)
    except Exception:  # no capture file yet
        return pl.DataFrame({"rcpt_to": []}, schema={"rcpt_to": pl.String})


def _exactly_once(capture: Path, prefix: str, n: int, run_dir: str) -> None:
    got = _captured(capture).filter(pl.col("rcpt_to").str.starts_with(prefix))
    per = got.group_by("rcpt_to").len()
    assert per.height == n, f"{prefix}: {n - per.height} recipients missed"
    twice = set(per.filter(pl.col("len") > 1)["rcpt_to"].to_list())
    report = build_report(run_dir)
    assert twice <= set(report.in_doubt_recipients), "a duplicate that was not in doubt"
    assert report.status == "complete"


def _address() -> str:
    return str(ray.get_runtime_context().gcs_address)


@contextlib.contextmanager
def _schedulers(url: str, count: int, **options: Any) -> Iterator[list[Scheduler]]:
    schedulers = [
        Scheduler(url, name=f"s{i}", ray_address=_address(), review_s=0.5, **options)
        for i in range(count)
    ]
    threads = [threading.Thread(target=s.run, daemon=True) for s in schedulers]
    for t in threads:
        t.start()
    try:
        yield schedulers
    finally:
        for s in schedulers:
            s.stop()
        for t in threads:
            t.join(timeout=60)


def test_two_schedulers_start_each_due_campaign_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'queue.sqlite'}"
    capture = tmp_path / "cap"
    queue = CampaignQueue(url)
    with run_sink(SinkConfig(), capture_dir=capture) as sink:
        specs = {
            name: _spec_file(
                tmp_path / f"{name}.yaml",
                name,
                sink.port,
                _list(tmp_path / f"{name}.csv", name, 60),
            )
            for name in ("bulk", "news", "alert")
        }
        entries = {
            name: schedule_campaign(
                queue,
                load_spec(path),
                priority=0 if name == "alert" else 50,
                run_dir=tmp_path / "runs" / name,
            )[0]
            for name, path in specs.items()
        }
        later = schedule_campaign(queue, load_spec(specs["news"]), at="+1h")[0]
        with _schedulers(url, 2, max_running=2) as schedulers:
            wait_for(
                "the three campaigns to be done",
                lambda: all(queue.get(e.id).status == DONE for e in entries.values()),
                300,
                0.25,
            )
        started = [i for s in schedulers for i in s.stats.started]
        assert sorted(started) == sorted(e.id for e in entries.values())  # each once, in all
        for name, entry in entries.items():
            _exactly_once(capture, name, 60, entry.run_dir)
            assert queue.get(entry.id).starts == 1
            assert queue.get(entry.id).counts["accepted"] == 60
        assert queue.get(later.id).status == "queued"  # not due: untouched
    statuses = [e.status for e in queue.events([entries["alert"].id])]
    assert statuses[0] == "queued" and statuses[-1] == DONE and "running" in statuses
    # The CLI follows a campaign's events (it ends once every entry of it is final).
    register(app)
    result = CliRunner().invoke(
        app,
        ["queue", "status", "alert", "--follow", "--json", "--queue-url", url, "--timeout", "30"],
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.output.splitlines()]
    assert lines[-1]["status"] == DONE and lines[-1]["counts"]["accepted"] == 60


class _Receiver(BaseHTTPRequestHandler):
    """A webhook receiver that fails its first requests (500) to exercise the retries."""

    received: list[tuple[dict[str, str], bytes]] = []
    fail_first = 2
    calls = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls += 1
        if type(self).calls <= type(self).fail_first:
            self.send_response(500)
        else:
            type(self).received.append((dict(self.headers), body))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_status_webhook_is_signed_retried_and_complete(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'queue.sqlite'}"
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/status"
    queue = CampaignQueue(url)
    try:
        with run_sink(SinkConfig(default={"latency_ms": 20}), capture_dir=tmp_path / "cap") as sink:
            spec = _spec_file(
                tmp_path / "c.yaml",
                "hooked",
                sink.port,
                _list(tmp_path / "c.csv", "h", 300),
                f"status_webhook: {hook}\nstatus_webhook_secret: {SECRET}\n",
            )
            entry = schedule_campaign(queue, load_spec(spec), run_dir=tmp_path / "run")[0]
            with _schedulers(url, 1) as (scheduler,):
                scheduler.webhooks.settings = type(scheduler.webhooks.settings)(
                    initial_backoff_s=0.2
                )
                wait_for("the run", lambda: queue.get(entry.id).status == DONE, 300, 0.25)
                events = queue.events([entry.id])
                wait_for("all webhooks", lambda: len(_Receiver.received) >= len(events), 60, 0.25)
    finally:
        server.shutdown()
    assert _Receiver.calls == len(events) + 2  # two refused, then each event once
    bodies = []
    for headers, body in _Receiver.received:
        assert verify_signature(SECRET, headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER])
        assert not verify_signature(
            "another-secret-123", headers[TIMESTAMP_HEADER], body, headers[SIGNATURE_HEADER]
        )
        data = json.loads(body)
        assert headers[EVENT_HEADER] == str(data["event"]) and data["campaign"] == "hooked"
        bodies.append(data)
    assert sorted(b["event"] for b in bodies) == [e.id for e in events]
    final = max(bodies, key=lambda b: b["event"])
    assert final["status"] == DONE and final["counts"]["accepted"] == 300
    assert any(b["status"] == "running" and b["counts"].get("queued", 0) > 0 for b in bodies)
    rows = queue.db.query(
        "SELECT MAX(attempts), COUNT(*) FROM webhook_outbox WHERE delivered_at IS NOT NULL"
    )
    assert rows[0] == (3, len(events))  # the first event needed three attempts


def test_killed_scheduler_and_run_are_resumed_by_another(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'queue.sqlite'}"
    capture = tmp_path / "cap"
    queue = CampaignQueue(url)
    n = 2000
    with run_sink(SinkConfig(default={"latency_ms": 10}), capture_dir=capture) as sink:
        spec = _spec_file(
            tmp_path / "c.yaml", "killme", sink.port, _list(tmp_path / "c.csv", "k", n)
        )
        entry = schedule_campaign(queue, load_spec(spec), run_dir=tmp_path / "run")[0]
        env = dict(os.environ, RAY_ADDRESS=_address())
        first = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "raymail.cli",
                "scheduler",
                "run",
                "--queue-url",
                url,
                "--lease-s",
                "3",
                "--review-s",
                "0.5",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=False,
        )
        # The run process has a session of its own: kill the scheduler and the run both.
        try:
            wait_for("a quarter sent", lambda: _captured(capture).height >= n // 4, 240, 0.25)
        finally:
            first.kill()
            first.wait(timeout=30)
            run_pid = _run_pid(entry.run_dir)
            if run_pid:
                kill_session(run_pid)
        sent_before = _captured(capture).height
        assert sent_before < n, "finished before the kill: the test proves nothing"
        assert queue.get(entry.id).status == "running"
        with _schedulers(url, 1, lease_s=3) as (second,):
            wait_for("the resumed run", lambda: queue.get(entry.id).status == DONE, 300, 0.25)
        assert second.stats.started == [entry.id]
        assert queue.get(entry.id).starts == 2
        assert build_report(entry.run_dir).resumes == 1
        _exactly_once(capture, "k", n, entry.run_dir)


def _run_pid(run_dir: str) -> int | None:
    """The pid of the driver holding the run directory's lock (written in run.lock)."""
    try:
        text = (Path(run_dir) / "run.lock").read_text()
    except OSError:
        return None
    return int(text.split()[1]) if text.startswith("pid ") else None


def test_detached_scheduler_actor_runs_the_queue(tmp_path: Path) -> None:
    from raymail.queue.actor import find_scheduler, start_scheduler, stop_scheduler

    url = f"sqlite:///{tmp_path / 'queue.sqlite'}"
    queue = CampaignQueue(url)
    with run_sink(SinkConfig(), capture_dir=tmp_path / "cap") as sink:
        spec = _spec_file(
            tmp_path / "c.yaml", "actor", sink.port, _list(tmp_path / "c.csv", "a", 40)
        )
        entry = schedule_campaign(queue, load_spec(spec), run_dir=tmp_path / "run")[0]
        home = {"RAYMAIL_HOME": os.environ["RAYMAIL_HOME"]}
        handle = start_scheduler("test-scheduler", url, home, review_s=0.5)
        try:
            assert find_scheduler("test-scheduler")  # named, found from another handle
            wait_for("the run", lambda: queue.get(entry.id).status == DONE, 300, 0.25)
            status = ray.get(handle.status.remote())
            assert status["started"] == [entry.id] and status["finished"] == {entry.id: DONE}
        finally:
            stop_scheduler("test-scheduler")
        _exactly_once(tmp_path / "cap", "a", 40, entry.run_dir)
