"""benchmarks/web.py runs end to end on a short load (behaviour only, never speed); its kill
trial kills the round's service rather than starting a second one (a Ray start less)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_web_benchmark_small_run(tmp_path: Path) -> None:
    out = tmp_path / "web.json"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "web.py"), "--seconds", "0.5", "--rounds", "1",
         "--kill-trials", "1", "--concurrency", "8", "--warmup-s", "0.5", "--kill-last-round",
         "--json-out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)
    assert json.loads(out.read_text(encoding="utf-8")) == printed
    for load in ("one_click", "open_pixel"):
        figures = printed[load]
        assert figures["raymail_web_requests_per_s"] > 0
        assert figures["bare_fastapi_requests_per_s"] > 0
        assert figures["raymail_web_cpu_ms_per_request"] > 0  # Ray's processes counted
        assert figures["bare_fastapi_cpu_ms_per_request"] > 0
        assert figures["vs_bare_fastapi"] == pytest.approx(
            figures["raymail_web_requests_per_s"] / figures["bare_fastapi_requests_per_s"],
            rel=0.01,
            abs=0.0006,  # the ratio is printed rounded to 3 decimals
        )
        (round_,) = printed["rounds"]
        assert round_[load]["raymail_web"]["acked_not_logged"] == 0
    (trial,) = printed["kill_trials"]
    assert trial["acknowledged"] > 0
    assert printed["lost_acknowledged"] == 0
