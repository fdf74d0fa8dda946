"""The scale benchmark runs end to end on small sizes (behaviour only, not speed or memory),
its drivers joining the session's Ray (--ray-address) rather than each starting one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.system_packages import require_binary

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = ROOT / "benchmarks" / "scale.py"
SIZES = (300, 1200)

RECORD_KEYS = {
    "recipients",
    "elapsed_s",
    "msg_s",
    "accepted",
    "missed",
    "accepted_twice",
    "driver_peak_rss_mb",
    "driver_rss_by_quarter_mb",
    "peak_object_store_mb",
    "run_dir_mb",
    "run_dir_files",
    "run_dir_peak_mb",
    "run_dir_peak_files",
    "background_cpu_share",
}


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_scale_benchmark_small_sizes(tmp_path: Path) -> None:
    import ray

    require_binary("smtp-sink", "postfix")
    out = tmp_path / "scale.json"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    address = str(ray.get_runtime_context().gcs_address)
    done = subprocess.run(
        [
            sys.executable, str(BENCHMARK), "--sizes", *map(str, SIZES), "--domains", "40",
            "--concurrency", "4", "--json-out", str(out), "--ray-address", address,
        ],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=540, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout)
    assert json.loads(out.read_text(encoding="utf-8")) == printed
    assert [s["recipients"] for s in printed["sizes"]] == list(SIZES)
    for size, record in zip(SIZES, printed["sizes"], strict=True):
        missing = RECORD_KEYS - record.keys()
        assert not missing, f"keys missing: {sorted(missing)}"
        assert record["accepted"] == size and record["missed"] == 0
        assert record["accepted_twice"] == 0
        assert record["driver_peak_rss_mb"] > 0 and record["run_dir_files"] > 0
    assert printed["meets"]["missed"] is True
    ratio = printed["sizes"][1]["msg_s"] / printed["sizes"][0]["msg_s"]
    assert printed["largest_vs_smallest_msg_s"] == pytest.approx(ratio, rel=0.01)
