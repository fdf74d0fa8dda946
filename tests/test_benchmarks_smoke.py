"""The throughput benchmark runs end to end on a small count (behaviour only, not speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from system_packages import require_binary

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = ROOT / "benchmarks" / "throughput.py"
MESSAGES = 2000

KEYS = {
    "messages",
    "message_bytes",
    "connections",
    "smtp_source_msg_s",
    "aiosmtplib_loop_msg_s",
    "raymail_msg_s",
    "raymail_wall_msg_s",
    "raymail_vs_loop",
    "raymail_vs_limit",
    "raymail_accepted",
    "raymail_missing",
    "aiosmtplib_loop_accepted",
    "rounds",
    "cpu_count",
    "versions",
}


@pytest.mark.slow
def test_throughput_benchmark_small_run(tmp_path: Path) -> None:
    require_binary("smtp-sink", "postfix")
    require_binary("smtp-source", "postfix")
    out = tmp_path / "throughput.json"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(
        [
            sys.executable, str(BENCHMARK), "--messages", str(MESSAGES), "--no-warmup",
            "--json-out", str(out),
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=420, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    printed = json.loads(done.stdout)
    assert json.loads(out.read_text(encoding="utf-8")) == printed
    missing = KEYS - printed.keys()
    assert not missing, f"keys missing from the JSON: {sorted(missing)}"
    assert printed["messages"] == MESSAGES
    assert printed["raymail_accepted"] == MESSAGES
    assert printed["raymail_missing"] == 0
    assert printed["aiosmtplib_loop_accepted"] == MESSAGES
    assert 1500 <= printed["message_bytes"] <= 2600
    for key in ("smtp_source_msg_s", "aiosmtplib_loop_msg_s", "raymail_msg_s"):
        assert printed[key] > 0, key
    assert printed["raymail_vs_loop"] == pytest.approx(
        printed["raymail_msg_s"] / printed["aiosmtplib_loop_msg_s"], rel=0.01
    )
    assert printed["raymail_vs_limit"] == pytest.approx(
        printed["raymail_msg_s"] / printed["smtp_source_msg_s"], rel=0.01
    )
