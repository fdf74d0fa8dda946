"""A campaign on a local multi-node Ray cluster that loses a delivery node halfway.

Run by tests/test_multinode.py in a process of its own: the test session already has its
own Ray, and one process holds one Ray connection. Prints one JSON object (placements,
nodes, the report) on its last line; the test checks it against the sink's capture.

    python tests/multinode_scenario.py SINK_PORT CAPTURE_DIR WORK_DIR
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, TypedDict

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

RECIPIENTS = 2400
SERVERS = 4
UNITS_PER_WORKER = 4  # the survivor has room for every server of the lost node
REMOVE_AT = RECIPIENTS // 3  # captured messages before a worker node is removed
# A lost node is noticed after a few missed health checks (default: half a minute).
FAST_FAILURE = {
    "health_check_initial_delay_ms": 1000,
    "health_check_period_ms": 1000,
    "health_check_failure_threshold": 3,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _NodePorts(TypedDict):
    dashboard_agent_listen_port: int
    metrics_agent_port: int
    metrics_export_port: int
    runtime_env_agent_port: int


def _node_ports() -> _NodePorts:
    """Every port a node would otherwise take at a fixed default (another Ray on this
    machine may hold them): the dashboard agent's, metrics', runtime env agent's."""
    return {
        "dashboard_agent_listen_port": _free_port(),
        "metrics_agent_port": _free_port(),
        "metrics_export_port": _free_port(),
        "runtime_env_agent_port": _free_port(),
    }


def _captured(capture: Path) -> int:
    from raymail.sink import read_capture

    try:
        return read_capture(capture).height
    except Exception:  # no capture file yet
        return 0


class Placements:
    """Which node each delivery server answered from (asked through its heartbeat)."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver
        self.seen: dict[str, list[str]] = {}

    def poll(self) -> None:
        import ray

        for server in list(self.driver.servers):
            try:
                stats = ray.get(server.handle.heartbeat.remote(), timeout=2)
            except Exception:  # dead, restarting or busy starting: asked again later
                continue
            nodes = self.seen.setdefault(server.name, [])
            if stats.node_id and (not nodes or nodes[-1] != stats.node_id):
                nodes.append(stats.node_id)

    def current(self) -> dict[str, str]:
        return {name: nodes[-1] for name, nodes in self.seen.items() if nodes}


def _start_cluster(attempts: int = 3) -> tuple[Any, list[Any]]:
    """A head without the delivery resource and two delivery workers.

    Ray 2.60's raylet gives its dashboard agent 30 s to start and aborts otherwise, which
    a busy 2-core machine sometimes exceeds: such a start is tried again, a bounded number
    of times.
    """
    from ray.cluster_utils import Cluster

    from raymail.runtime import DELIVERY_RESOURCE

    for attempt in range(1, attempts + 1):
        cluster = Cluster()
        try:
            cluster.add_node(
                num_cpus=1,
                resources={DELIVERY_RESOURCE: 0},  # the driver's node sends nothing
                include_dashboard=False,
                gcs_server_port=_free_port(),
                ray_client_server_port=_free_port(),
                _system_config=FAST_FAILURE,
                **_node_ports(),
            )
            workers = [
                cluster.add_node(
                    num_cpus=1, resources={DELIVERY_RESOURCE: UNITS_PER_WORKER}, **_node_ports()
                )
                for _ in range(2)
            ]
            return cluster, workers
        except Exception as exc:  # Ray raises a bare Exception for a node that never came up
            print(f"cluster start {attempt} failed: {exc}", file=sys.stderr, flush=True)
            cluster.shutdown()  # type: ignore[no-untyped-call]  # ray's Cluster has no annotations
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def main(sink_port: int, capture: Path, work: Path) -> dict[str, Any]:
    import ray

    from raymail.driver.campaign import CampaignDriver
    from raymail.run.rundir import RunDir
    from raymail.spec import parse_spec

    csv = work / "list.csv"
    csv.write_text(
        "email,name\n" + "".join(f"u{i}@d{i % 6}.test,N{i}\n" for i in range(RECIPIENTS))
    )
    cluster, workers = _start_cluster()
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        spec = parse_spec(
            {
                "campaign": "multinode",
                "sender": "news@sender.test",
                "subject": "Hi {{ name }}",
                "text": "Hello {{ name }}",
                "recipients": str(csv),
                "mx_override": {"*": f"127.0.0.1:{sink_port}"},
                "delivery_servers": SERVERS,
                "concurrency": 4,
                "checkpoint_interval_s": 0.5,
                "retry": {
                    "schedule": [],
                    "max_attempts": 4,
                    "initial_backoff_s": 0.2,
                    "max_backoff_s": 1.0,
                },
            }
        )
        driver = CampaignDriver(spec, RunDir(work / "run"), live_progress=False)
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["report"] = driver.run().model_dump(mode="json")
            except BaseException as exc:  # reported to the test, never swallowed
                outcome["error"] = f"{type(exc).__name__}: {exc}"

        thread = threading.Thread(target=run, daemon=True)
        started = time.monotonic()
        thread.start()
        placements = Placements(driver)
        while _captured(capture) < REMOVE_AT or len(placements.current()) < SERVERS:
            if not thread.is_alive() or time.monotonic() - started > 240:
                break
            placements.poll()
            time.sleep(0.3)
        before = placements.current()
        hosts = {w.node_id: sum(n == w.node_id for n in before.values()) for w in workers}
        victim = max(workers, key=lambda w: hosts[w.node_id])
        captured_at_removal = _captured(capture)
        removed_while_running = thread.is_alive()
        cluster.remove_node(victim, allow_graceful=False)
        while thread.is_alive() and time.monotonic() - started < 300:
            placements.poll()
            time.sleep(0.5)
        thread.join(timeout=5)
        stuck = sys._current_frames().get(thread.ident or -1) if thread.is_alive() else None
        return {
            "driver_stack": "".join(traceback.format_stack(stuck)) if stuck else None,
            "head": cluster.head_node.node_id,
            "workers": [w.node_id for w in workers],
            "removed": victim.node_id,
            "removed_while_running": removed_while_running,
            "captured_at_removal": captured_at_removal,
            "placements_before": before,
            "placements": placements.seen,
            "elapsed_s": round(time.monotonic() - started, 1),
            "captured_at_end": _captured(capture),
            "recipients": RECIPIENTS,
            **outcome,
        }
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    result = main(int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
    print(json.dumps(result, default=str))
