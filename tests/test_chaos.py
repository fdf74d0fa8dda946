"""The chaos tool in a small configuration, and its counting on a real sink capture.

``test_chaos_driver_kill`` runs ``benchmarks/chaos.py`` as a subprocess: one trial of 1,000
recipients, a kill -9 of the driver whose orphaned delivery servers are left running until the
resume fences them off, resumed until complete, then counted at the sink per (recipient,
Message-ID). The kill -9 of the whole local Ray is test_resume.py's
``test_whole_ray_kill_then_resume``; the kill of a scheduler with its run is
test_queue_scheduler.py's; here ``test_chaos_scheduler_run_kill`` kills the run alone;
``test_chaos_kill_in_the_retry_phase`` kills a run whose deferred recipients are being
retried (the deferral queue). The delivery-server
kill is tested in test_resume.py. ``test_counting_*`` shows the count can fail: a recipient
never delivered and one delivered twice without being in doubt are both caught.
"""

from __future__ import annotations

import json
import os
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from raymail.sink import SinkConfig, read_capture, run_sink

ROOT = Path(__file__).resolve().parents[1]
CHAOS = ROOT / "benchmarks" / "chaos.py"
RECIPIENTS = 1000

sys.path.insert(0, str(ROOT / "benchmarks"))
from chaos import tally_deliveries  # type: ignore[import-not-found]  # noqa: E402 (benchmarks/, put on sys.path above, is not type-checked)


def _send(port: int, rcpt: str, message_id: str) -> None:
    body = f"Message-ID: <{message_id}>\r\nSubject: t\r\n\r\nhello\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail("news@sender.test", [rcpt], body)


def test_counting_finds_misses_and_duplicates_not_in_doubt(tmp_path: Path) -> None:
    capture = tmp_path / "cap"
    with run_sink(SinkConfig(), capture_dir=capture) as sink:
        _send(sink.port, "a@x.test", "m-a@x")
        _send(sink.port, "b@x.test", "m-b@x")
        _send(sink.port, "b@x.test", "m-b@x")  # the same message twice
        _send(sink.port, "c@x.test", "m-c@x")
        _send(sink.port, "c@x.test", "m-c@x")
    captured = read_capture(capture).select(["rcpt_to", "message_id"])
    want = {"a@x.test", "b@x.test", "c@x.test", "d@x.test"}

    found = tally_deliveries(want, captured, doubted={"c@x.test"})
    assert found["missed"] == 1 and found["examples"]["missed"] == ["d@x.test"]
    assert found["duplicates"] == 2 and found["duplicate_pairs"] == 2
    assert found["duplicates_not_in_doubt"] == 1
    assert found["examples"]["duplicates_not_in_doubt"] == ["b@x.test"]
    assert found["message_ids_per_recipient_max"] == 1

    clean = tally_deliveries(want - {"d@x.test"}, captured, doubted={"b@x.test", "c@x.test"})
    assert clean["missed"] == 0 and clean["duplicates_not_in_doubt"] == 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_chaos_driver_kill(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [
            sys.executable, str(CHAOS), "--trials", "1", "--recipients", str(RECIPIENTS),
            "--kinds", "driver", "--fence-prob", "1", "--rekill-prob", "0",
            "--latency-ms", "5", "--kill-from", "0.2", "--kill-to", "0.6", "--seed", "3",
            "--json-out", str(out), "--work-dir", str(tmp_path / "work"),
        ],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=540)
    finally:
        if proc.poll() is None:  # SIGTERM: the tool kills the sessions it started, then exits
            proc.terminate()
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    assert out.exists(), stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert json.loads(stdout) == result

    assert result["trials"] == 1
    assert result["trials_by_kind"] == {"driver": 1}
    for key in ("missed", "duplicates", "duplicates_not_in_doubt", "in_doubt"):
        assert isinstance(result[key], int), key
    for trial in result["per_trial"]:
        where = f"trial {trial['trial']} ({trial['kind']}), folder {trial.get('folder')}"
        assert trial["status"] == "complete", where
        assert trial["kill_count"] == 1, f"{where}: the run ended before the kill"
        assert trial["resumes"] >= 1, where
        assert trial["missed"] == 0, f"{where}: missed {trial['examples']['missed']}"
        assert trial["duplicates_not_in_doubt"] == 0, (
            f"{where}: duplicates not in doubt {trial['examples']['duplicates_not_in_doubt']}"
        )
        assert trial["unexpected"] == 0, where
        assert trial["in_doubt"] <= trial["in_flight_bound"], where
        assert trial["in_flight_at_kills"] is not None, where
        assert trial["in_doubt"] <= trial["in_flight_at_kills"], where
        assert trial["orphan_in_flight_after_fence"] == 0, f"{where}: the fence leaked"
        assert trial["distinct_recipients"] == RECIPIENTS, where
        assert trial["message_ids_per_recipient_max"] == 1, where
        assert trial["report"]["accepted"] == RECIPIENTS, where  # policy resend
    driver = next(t for t in result["per_trial"] if t["kind"] == "driver")
    assert driver["kills"][0]["orphans"].startswith("left"), driver["kills"]
    assert result["all_ok"] is True
    assert proc.returncode == 0, stderr[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_chaos_scheduler_run_kill(tmp_path: Path) -> None:
    """Through the queue: the run is killed under its scheduler, which resumes it."""
    out = tmp_path / "chaos.json"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [
            sys.executable, str(CHAOS), "--trials", "1", "--recipients", str(RECIPIENTS),
            "--kinds", "scheduler_run", "--rekill-prob", "0", "--latency-ms", "5",
            "--kill-from", "0.2", "--kill-to", "0.6", "--seed", "4", "--json-out", str(out),
            "--work-dir", str(tmp_path / "work"),
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert out.exists(), proc.stderr[-3000:]
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["trials_by_kind"] == {"scheduler_run": 1}
    for trial in result["per_trial"]:
        where = f"trial {trial['trial']} ({trial['kind']}), folder {trial.get('folder')}"
        assert trial["kill_count"] == 1 and trial["kills"][0]["processes_killed"] >= 1, where
        assert trial["status"] == "complete" and trial["queue_status"] == "done", where
        assert trial["queue_starts"] == 2 and trial["resumes"] == 1, where
        assert trial["missed"] == 0 and trial["duplicates_not_in_doubt"] == 0, where
        assert trial["in_doubt"] <= trial["in_flight_bound"], where
        assert trial["distinct_recipients"] == RECIPIENTS, where
    assert result["all_ok"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_chaos_kill_in_the_retry_phase(tmp_path: Path) -> None:
    """The deferral queue under a kill: a fifth of the recipients deferred twice by the sink
    and retried on a 1 s, 2 s schedule; the whole session killed -9 while they are between
    retries or being retried; the resume loses nobody and sends nobody twice."""
    out = tmp_path / "chaos.json"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [
            sys.executable, str(CHAOS), "--trials", "1", "--recipients", str(RECIPIENTS),
            "--kinds", "retry", "--rekill-prob", "0", "--latency-ms", "5",
            "--kill-from", "0.05", "--kill-to", "0.5", "--seed", "5", "--json-out", str(out),
            "--work-dir", str(tmp_path / "work"),
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert out.exists(), proc.stderr[-3000:]
    trial = json.loads(out.read_text(encoding="utf-8"))["per_trial"][0]
    where = f"folder {trial.get('folder')}"
    deferred = RECIPIENTS // 5
    assert trial["kill_count"] == 1 and trial["resumes"] >= 1, where
    killed_at = trial["kills"][0]["captured_at_kill"]
    assert RECIPIENTS - deferred < killed_at < RECIPIENTS, where  # in the retry phase
    assert trial["deferred_ever"] == deferred, where
    assert trial["status"] == "complete", where
    assert trial["missed"] == 0 and trial["duplicates_not_in_doubt"] == 0, where
    assert trial["distinct_recipients"] == RECIPIENTS, where
    assert trial["report"]["accepted"] == RECIPIENTS and trial["report"]["expired"] == 0, where
    assert proc.returncode == 0, proc.stderr[-3000:]
