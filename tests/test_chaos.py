"""The chaos tool in a small configuration: one kill of each kind, nobody missed.

Runs ``benchmarks/chaos.py`` as a subprocess: three trials of 2,000 recipients (a driver
kill, a delivery-server kill and a whole-Ray kill, in a seeded order), each resumed until
complete, then counted at the sink per (recipient, Message-ID).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAOS = ROOT / "benchmarks" / "chaos.py"
RECIPIENTS = 2000

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_chaos_one_kill_of_each_kind(tmp_path: Path) -> None:
    out = tmp_path / "chaos.json"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [
            sys.executable, str(CHAOS), "--trials", "3", "--recipients", str(RECIPIENTS),
            "--seed", "3", "--latency-ms", "5", "--rekill-prob", "0.5",
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

    assert result["trials"] == 3
    assert result["trials_by_kind"] == {"actor": 1, "driver": 1, "ray": 1}
    for key in ("missed", "duplicates", "duplicates_not_in_doubt", "in_doubt"):
        assert isinstance(result[key], int), key
    for trial in result["per_trial"]:
        where = f"trial {trial['trial']} ({trial['kind']}), folder {trial.get('folder')}"
        assert trial["status"] == "complete", where
        assert trial["kill_count"] >= 1, f"{where}: the run ended before the kill"
        assert trial["missed"] == 0, f"{where}: missed {trial['examples']['missed']}"
        assert trial["duplicates_not_in_doubt"] == 0, (
            f"{where}: duplicates not in doubt {trial['examples']['duplicates_not_in_doubt']}"
        )
        assert trial["unexpected"] == 0, where
        assert trial["in_doubt"] <= trial["in_flight_bound"], where
        if trial["in_flight_at_kills"] is not None:  # measured from the killed journals
            assert trial["in_doubt"] <= trial["in_flight_at_kills"], where
        assert trial["distinct_recipients"] == RECIPIENTS, where
        assert trial["message_ids_per_recipient_max"] == 1, where
        assert trial["report"]["accepted"] == RECIPIENTS, where  # policy resend
    assert result["all_ok"] is True
    assert proc.returncode == 0, stderr[-3000:]
