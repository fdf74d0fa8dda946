"""A multi-node Ray cluster loses a delivery node mid-run: nobody missed, nobody twice
unless the report calls them in doubt, and delivery servers only on delivery nodes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl
import pytest

from raymail.sink import SinkConfig, read_capture, run_sink

pytestmark = pytest.mark.slow
SCENARIO = Path(__file__).with_name("multinode_scenario.py")


def test_node_loss_mid_run(tmp_path: Path) -> None:
    capture = tmp_path / "cap"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    # Ray's sockets live under its temp dir: a short one (socket paths are limited to 107
    # bytes), and the cluster's address file stays out of the machine-wide /tmp/ray.
    ray_tmp = tempfile.mkdtemp(prefix="rm-", dir="/tmp")
    env["RAY_TMPDIR"] = ray_tmp
    # Nodes start slowly on a busy 2-core machine: a raylet that gives up waiting for its
    # dashboard agent (default: well under a minute) aborts the whole cluster.
    env["RAY_raylet_start_wait_time_s"] = "180"
    env["RAY_agent_register_timeout_ms"] = "180000"
    config = SinkConfig(default={"latency_ms": 20})
    try:
        with run_sink(config, capture_dir=capture) as sink:
            proc = subprocess.run(
                [sys.executable, str(SCENARIO), str(sink.port), str(capture), str(tmp_path)],
                capture_output=True,
                text=True,
                timeout=420,
                env=env,
                start_new_session=True,  # Ray's reaper may signal its whole process group
            )
        logs = "" if proc.returncode == 0 else _ray_logs(Path(ray_tmp))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:] + logs
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" not in result, result["error"]
    assert "report" in result, f"the run did not end: {result}"
    report, n = result["report"], result["recipients"]

    # The node went while work was in flight, and the run still completed.
    assert result["removed_while_running"] and result["captured_at_removal"] < n
    assert report["status"] == "complete"

    # Placement: never on the head (no delivery resource); some server lived on the lost
    # node, and every server that answered after the loss did so from the survivor.
    workers, head, removed = set(result["workers"]), result["head"], result["removed"]
    nodes_seen = {node for nodes in result["placements"].values() for node in nodes}
    assert head not in nodes_seen and nodes_seen <= workers
    assert removed in result["placements_before"].values()
    survivor = (workers - {removed}).pop()
    moved = [nodes for nodes in result["placements"].values() if nodes[0] == removed]
    assert moved and all(nodes[-1] == survivor for nodes in moved if len(nodes) > 1)
    assert any(len(nodes) > 1 for nodes in moved), "no server was restarted elsewhere"

    # Issue 3's rule at the sink: everybody exactly once, or in doubt.
    per_rcpt = read_capture(capture).group_by("rcpt_to").len()
    assert per_rcpt.height == n, f"missed {n - per_rcpt.height} recipients"
    duplicates = set(per_rcpt.filter(pl.col("len") > 1)["rcpt_to"].to_list())
    assert duplicates <= set(report["in_doubt_recipients"])
    assert report["accepted"] + report["in_doubt"] == n


def _ray_logs(ray_tmp: Path) -> str:
    """The end of the cluster's daemon logs, to tell a failed start from a failed run."""
    parts = []
    for path in sorted(ray_tmp.glob("ray/session_*/logs/*")):
        if path.is_file() and path.name.startswith(("raylet", "gcs_server")):
            lines = path.read_text(errors="replace").splitlines()
            fatal = [line for line in lines if re.search(r"Check failed| F |FATAL|\*\*\*", line)]
            parts.append(f"\n--- {path.name}\n" + "\n".join((fatal or lines)[-12:]))
    return "".join(parts)
