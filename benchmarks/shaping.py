"""Traffic shaping: raymail finding a receiver's connection limit by itself.

The receiver is the project's sink allowing ``--limit`` connections per client address and
answering ``421 4.7.0 Too many connections`` beyond it (``max_connections_per_client``),
with ``--latency-ms`` per message so the connections, not the CPU, set the pace. In one run:

- shaped: raymail at 2 delivery servers x 25 connections, shaping on (the default);
- hand-tuned: one delivery server with exactly ``--limit`` connections, shaping off.

Then the same two runs against a real Postfix on loopback
(``postfix_receiver.py``) allowing ``--limit`` connections per client by its
``smtpd_client_connection_count_limit`` (anvil; 421 beyond), queueing each message for real
and discarding it (``--no-postfix`` skips it; it needs root and the Debian package).

The receiver's refusal counter (the sink's, or Postfix's log lines) is polled every 20 ms.
``converge_s``: time from the shaped run's start until the last refusal followed by
``--quiet-s`` without one (the limit found);
``refusals_after_convergence``: 421s counted after that. ``vs_hand_tuned``: accepted per
second of sending time, shaped / hand-tuned (target >= 0.9). ``failed`` must be 0.

    python benchmarks/shaping.py [--recipients 4000] [--limit 5] [--latency-ms 20]
                                 [--postfix-recipients 2000 | --no-postfix]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
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
            "retry": {
                "schedule": [],
                "max_attempts": 4,
                "initial_backoff_s": 0.2,
                "max_backoff_s": 1.0,
            },
            "routing": {"policy": "round_robin", "probe": False},
            "shaping": {"enabled": shaping},
        },
        "shaping-bench",
    )


# A receiver: its port, its refusal counter, its peak connections (None: not known).
Receiver = tuple[int, Callable[[], int], Callable[[], int | None]]
Opened = contextlib.AbstractContextManager[Receiver]


@contextlib.contextmanager
def sink_receiver(args: argparse.Namespace) -> Iterator[Receiver]:
    config = SinkConfig.model_validate(
        {"max_connections_per_client": args.limit, "default": {"latency_ms": args.latency_ms}}
    )
    with run_sink(config) as sink:
        yield (
            sink.port,
            lambda: sink.stats().connections_refused,
            lambda: sink.stats().peak_connections,
        )


@contextlib.contextmanager
def real_postfix(args: argparse.Namespace) -> Iterator[Receiver]:
    from postfix_receiver import postfix_receiver

    with postfix_receiver(args.limit) as postfix:
        yield postfix.port, postfix.refusals, lambda: None


def _run(
    args: argparse.Namespace, work: Path, csv: Path, name: str, servers: int, conns: int,
    shaping: bool, receiver: Callable[[argparse.Namespace], Opened],
) -> dict[str, Any]:  # fmt: skip
    refusals: list[float] = []
    with receiver(args) as (port, refused, peak):
        done = threading.Event()
        started = time.monotonic()
        first = refused()

        def poll() -> None:
            seen = first
            while not done.wait(0.02):
                now = refused()
                refusals.extend([time.monotonic() - started] * (now - seen))
                seen = now

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        spec = _spec(csv, port, servers, conns, shaping)
        report = run_campaign(spec, work / f"run-{name}", live_progress=False)
        time.sleep(0.1)  # the last refusals reach the counter (Postfix logs them)
        done.set()
        watcher.join()
        total_refused, peak_connections = refused() - first, peak()
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
        "refusals": total_refused,
        "converge_s": round(converge, 2),
        "refusals_after_convergence": sum(1 for t in refusals if t > converge),
        "peak_connections": peak_connections,
    }


def _recipients(path: Path, count: int) -> Path:
    lines = ["email,name", *(f"u{i}@d{i % 20}.test,N{i}" for i in range(count))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _summary(shaped: dict[str, Any], hand: dict[str, Any]) -> dict[str, Any]:
    return {
        "failed": shaped["failed"],
        "converge_s": shaped["converge_s"],
        "refusals_after_convergence": shaped["refusals_after_convergence"],
        "vs_hand_tuned": round(shaped["msg_s"] / hand["msg_s"], 3) if hand["msg_s"] else None,
        "shaped": shaped,
        "hand_tuned": hand,
    }


def _postfix_installed() -> None:
    """Postfix's binaries (apt-get installs them when missing and root), and root to run."""
    if os.geteuid() != 0:
        raise SystemExit("shaping: the real-Postfix round needs root (or pass --no-postfix)")
    from throughput import ensure_postfix

    ensure_postfix()


def _postfix_version() -> str:
    import subprocess

    done = subprocess.run(
        ["postconf", "-h", "mail_version"], capture_output=True, text=True, timeout=30
    )
    return done.stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipients", type=int, default=4000)
    parser.add_argument("--limit", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--quiet-s", type=float, default=2.0)
    parser.add_argument("--postfix-recipients", type=int, default=2000)
    parser.add_argument("--no-postfix", action="store_true", help="skip the real-Postfix round")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="raymail-shaping-") as tmp:
        work = Path(tmp)
        os.environ["RAYMAIL_HOME"] = str(work / "home")  # nothing learned before
        csv = _recipients(work / "list.csv", args.recipients)
        ensure_ray()
        hand = _run(args, work, csv, "hand", 1, args.limit, False, sink_receiver)
        shaped = _run(args, work, csv, "shaped", 2, 25, True, sink_receiver)
        result = {
            "receiver": f"raymail sink, {args.limit} connections per client, 421 beyond",
            "recipients": args.recipients,
            "latency_ms": args.latency_ms,
            "start_connections": "2 x 25",
            **_summary(shaped, hand),
        }
        if not args.no_postfix:
            _postfix_installed()
            csv = _recipients(work / "postfix.csv", args.postfix_recipients)
            os.environ["RAYMAIL_HOME"] = str(work / "home-postfix")  # nothing learned before
            hand = _run(args, work, csv, "pf-hand", 1, args.limit, False, real_postfix)
            shaped = _run(args, work, csv, "pf-shaped", 2, 25, True, real_postfix)
            result["postfix"] = {
                "receiver": f"Postfix {_postfix_version()}, smtpd_client_connection_count_"
                f"limit = {args.limit} (421 beyond), queued and discarded",
                "recipients": args.postfix_recipients,
                **_summary(shaped, hand),
            }
    text = json.dumps(result, indent=2)
    if args.json_out:
        args.json_out.write_text(text + "\n", encoding="utf-8")
    print(text)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
