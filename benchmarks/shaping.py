"""Traffic shaping: raymail finding a receiver's connection limit by itself.

The receiver is the project's sink allowing ``--limit`` connections per client address and
answering ``421 4.7.0 Too many connections`` beyond it (``max_connections_per_client``),
with ``--latency-ms`` per message so the connections, not the CPU, set the pace. In one run:

- shaped: raymail at 2 delivery servers x 25 connections, shaping on (the default);
- hand-tuned: one delivery server with exactly ``--limit`` connections, shaping off.

The sink's refusal counter is polled every 20 ms. ``converge_s``: time from the shaped run's
start until the last refusal followed by ``--quiet-s`` without one (the limit found);
``refusals_after_convergence``: 421s counted after that. ``vs_hand_tuned``: accepted per
second of sending time, shaped / hand-tuned (target >= 0.9). ``failed`` must be 0.

    python benchmarks/shaping.py [--recipients 4000] [--limit 5] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from raymail.driver.campaign import run_campaign
from raymail.runtime import ensure_ray
from raymail.sink import SinkConfig, run_sink
from raymail.spec import parse_spec


def _spec(csv: Path, port: int, servers: int, connections: int, shaping: bool) -> Any:
    return parse_spec(
        {
            "campaign": "shaping-bench",
            "sender": "Bench <news@sender.test>",
            "subject": "Hello {{ name }}",
            "text": "Hi {{ name }},\nshaping benchmark.\n",
            "recipients": str(csv),
            "mx_override": {"*": f"127.0.0.1:{port}"},
            "delivery_servers": servers,
            "concurrency": connections,
            "portion_size": 50,
            "verp_secret": "bench-secret",
            "retry": {"max_attempts": 4, "initial_backoff_s": 0.2, "max_backoff_s": 1.0},
            "routing": {"policy": "round_robin", "probe": False},
            "shaping": {"enabled": shaping},
        },
        "shaping-bench",
    )


def _run(
    args: argparse.Namespace, work: Path, csv: Path, name: str, servers: int, conns: int,
    shaping: bool,
) -> dict[str, Any]:  # fmt: skip
    config = SinkConfig.model_validate(
        {"max_connections_per_client": args.limit, "default": {"latency_ms": args.latency_ms}}
    )
    refusals: list[float] = []
    with run_sink(config) as sink:
        done = threading.Event()
        started = time.monotonic()

        def poll() -> None:
            seen = 0
            while not done.wait(0.02):
                now = sink.stats().connections_refused
                refusals.extend([time.monotonic() - started] * (now - seen))
                seen = now

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        spec = _spec(csv, sink.port, servers, conns, shaping)
        report = run_campaign(spec, work / f"run-{name}", live_progress=False)
        done.set()
        watcher.join()
        stats = sink.stats()
    converge = 0.0
    for i, at in enumerate(refusals):
        nxt = refusals[i + 1] if i + 1 < len(refusals) else float("inf")
        if nxt - at > args.quiet_s:
            converge = at
            break
    return {
        "accepted": report.accepted,
        "failed": report.failed,
        "deferred": report.deferred,
        "elapsed_s": report.elapsed_s,
        "msg_s": round(report.accepted / report.elapsed_s, 1) if report.elapsed_s else 0.0,
        "refusals": stats.connections_refused,
        "converge_s": round(converge, 2),
        "refusals_after_convergence": sum(1 for t in refusals if t > converge),
        "peak_connections": stats.peak_connections,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=int, default=4000)
    parser.add_argument("--limit", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--quiet-s", type=float, default=2.0)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="raymail-shaping-") as tmp:
        work = Path(tmp)
        os.environ["RAYMAIL_HOME"] = str(work / "home")  # nothing learned before
        csv = work / "list.csv"
        lines = ["email,name", *(f"u{i}@d{i % 20}.test,N{i}" for i in range(args.recipients))]
        csv.write_text("\n".join(lines) + "\n", encoding="utf-8")
        ensure_ray()
        hand = _run(args, work, csv, "hand", 1, args.limit, False)
        shaped = _run(args, work, csv, "shaped", 2, 25, True)
    result = {
        "receiver": f"raymail sink, {args.limit} connections per client, 421 beyond",
        "recipients": args.recipients,
        "latency_ms": args.latency_ms,
        "start_connections": "2 x 25",
        "failed": shaped["failed"],
        "converge_s": shaped["converge_s"],
        "refusals_after_convergence": shaped["refusals_after_convergence"],
        "vs_hand_tuned": round(shaped["msg_s"] / hand["msg_s"], 3) if hand["msg_s"] else None,
        "shaped": shaped,
        "hand_tuned": hand,
    }
    text = json.dumps(result, indent=2)
    if args.json_out:
        args.json_out.write_text(text + "\n", encoding="utf-8")
    print(text)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
