"""Priority lanes: how soon urgent messages leave during a big bulk run, and what bulk pays.

One run, on the same shared delivery servers (``delivery_pool``) and the project's sink (a
process of its own, capturing every accepted message with the time it answered 250):

``warm-up``
    A small bulk campaign with a few priority messages: starts the pool's actors, imports
    and connects everything. Not measured.
``alone``
    The bulk campaign (``--recipients``, default 200,000) by itself.
``with_priority``
    The same bulk campaign; once a quarter of it is accepted, ``--priority-messages``
    (default 100) priority-0 messages are enqueued as ``--priority-campaigns`` campaigns
    (default 10), one every ``--spacing-s``, each started by ``run_campaign`` in a driver of
    its own (a thread here) the moment it is enqueued.

``--pairs`` (default 2) pairs of the two measured rounds run in ABBA order (alone, with,
with, alone, ...) so a machine that slows down or speeds up during the run (it is shared)
weighs on both sides alike.

``priority_p50_s`` / ``priority_p99_s``: per priority message (all rounds pooled), the
sink's capture time of its 250 less the moment its campaign was enqueued (this process's
wall clock; the sink runs on the same machine). ``bulk_vs_alone``: the bulk campaign's rate
with priority traffic over its rate alone, each rate the bulk messages captured over the
span from the first to the last capture, summed over the rounds of its kind. Targets:
p99 < 5 s, bulk >= 0.9. ``priority_during_bulk`` counts the priority messages accepted
while the bulk run still went on: the latencies mean something only when it is all of them.

Enqueued here means handed to a warm driver process (Ray connected, modules imported): the
path the scheduler's run processes take after their own start-up, which this does not time.

A fresh local Ray of its own, unless RAY_ADDRESS names one to join (the test suite's smoke
run joins the session's, a Ray start less).

Prints one JSON object on stdout (progress on stderr) and writes it to ``--json-out``
(default benchmarks/results/priority.json). Exits 1 when a message is missing or duplicated.

    python benchmarks/priority.py [--recipients 200000] [--priority-messages 100]
                                  [--priority-campaigns 10] [--pairs 2] [--json-out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "priority.json"
TARGET_P99_S = 5.0
TARGET_BULK_VS_ALONE = 0.9
BULK_DOMAINS = 20
BULK_SUFFIX = ".bulk.example"
POOL = "bench-priority"
POLL_S = 0.25  # each poll of the sink's counters is an SMTP connection of its own
ROUND_TIMEOUT_S = 3600.0


def log(message: str) -> None:
    print(f"priority: {message}", file=sys.stderr, flush=True)


def write_list(path: Path, emails: list[str]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [f"Name{i}" for i in range(len(emails))]
    pq.write_table(pa.table({"email": emails, "first_name": names}), path)
    return path


def spec_for(
    campaign: str, recipients: Path, sink: str, *, priority: int, servers: int, concurrency: int
) -> Any:
    from raymail.spec import parse_spec

    return parse_spec(
        {
            "campaign": campaign,
            "sender": "Raymail Bench <news@bench.example>",
            "subject": "Hello {{ first_name }}",
            "text": "Hi {{ first_name }},\nthis is the " + campaign + " message.\n",
            "recipients": str(recipients),
            "mx_override": {"*": sink},
            "delivery_pool": POOL,
            "priority": priority,
            "delivery_servers": servers,
            "concurrency": concurrency,
            "verp_secret": "bench-secret-priority",
            "smtp": {"helo_name": "bench.localhost"},
            "routing": {"policy": "round_robin", "probe": False},
        },
        campaign,
    )


@dataclass
class Round:
    """What one round measured."""

    name: str
    bulk_accepted: int = 0
    bulk_captured: int = 0  # distinct bulk recipients the sink accepted
    bulk_span_s: float = 0.0
    bulk_duplicates: int = 0
    priority_sent: int = 0  # priority recipients enqueued
    priority_accepted: int = 0  # as the priority campaigns' reports say
    priority_captured: int = 0
    priority_duplicates: int = 0
    priority_during_bulk: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def bulk_msg_s(self) -> float:
        return (self.bulk_captured - 1) / self.bulk_span_s if self.bulk_span_s > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "bulk_accepted": self.bulk_accepted,
            "bulk_msg_s": round(self.bulk_msg_s, 1),
            "bulk_span_s": round(self.bulk_span_s, 2),
            "priority_captured": self.priority_captured,
            "priority_p99_s": round(percentile(self.latencies, 99), 3) if self.latencies else None,
        }


def read_round(capture: Path, result: Round, enqueued: dict[str, float]) -> None:
    """Fill ``result`` from the sink's capture: first acceptance per recipient, copies."""
    from raymail.sink import iter_capture

    first: dict[str, datetime] = {}
    copies: Counter[str] = Counter()
    for msg in iter_capture(capture):
        for rcpt in msg.rcpt_tos:
            copies[rcpt] += 1
            first.setdefault(rcpt, msg.received_at)
    bulk = sorted(t.timestamp() for r, t in first.items() if r.endswith(BULK_SUFFIX))
    result.bulk_captured = len(bulk)
    result.bulk_span_s = bulk[-1] - bulk[0] if len(bulk) > 1 else 0.0
    result.bulk_duplicates = sum(n - 1 for r, n in copies.items() if r.endswith(BULK_SUFFIX))
    result.priority_duplicates = sum(copies[r] - 1 for r in enqueued if copies[r] > 1)
    priority = {r: first[r].timestamp() for r in enqueued if r in first}
    result.priority_captured = len(priority)
    result.priority_during_bulk = sum(1 for t in priority.values() if bulk and t < bulk[-1])
    result.latencies = sorted(t - enqueued[r] for r, t in priority.items())


def run_round(
    work: Path,
    name: str,
    bulk_list: Path,
    recipients: int,
    *,
    servers: int,
    concurrency: int,
    priority_messages: int = 0,
    priority_campaigns: int = 1,
    spacing_s: float = 0.5,
) -> Round:
    from raymail.driver.campaign import run_campaign
    from raymail.run.report import RunReport
    from raymail.sink import SinkProcess

    capture = work / f"capture-{name}"
    enqueued: dict[str, float] = {}  # priority recipient -> enqueue time (Unix seconds)
    result = Round(name)
    reports: list[Future[RunReport]] = []
    with SinkProcess(capture_dir=capture) as sink:
        bulk_spec = spec_for(
            f"bulk-{name}", bulk_list, sink.address, priority=100,
            servers=servers, concurrency=concurrency,
        )  # fmt: skip
        bulk_report: dict[str, RunReport] = {}
        failure: list[BaseException] = []

        def bulk() -> None:
            try:
                bulk_report["bulk"] = run_campaign(
                    bulk_spec, work / f"run-bulk-{name}", live_progress=False
                )
            except BaseException as exc:  # reported below, on the main thread
                failure.append(exc)

        thread = threading.Thread(target=bulk, name=f"bulk-{name}")
        thread.start()
        if priority_messages:
            deadline = time.monotonic() + ROUND_TIMEOUT_S
            while thread.is_alive() and time.monotonic() < deadline:
                if sink.stats().accepted >= recipients // 4:
                    break
                time.sleep(POLL_S)
            log(f"{name}: bulk at {sink.stats().accepted}; enqueueing priority messages")
            per, extra = divmod(priority_messages, priority_campaigns)
            lists = []
            for k in range(priority_campaigns):
                addrs = [f"p{k}-{j}@urgent{j % 3}.example" for j in range(per + (k < extra))]
                if addrs:
                    lists.append((k, addrs, write_list(work / f"urgent-{name}-{k}.parquet", addrs)))
            with ThreadPoolExecutor(len(lists), thread_name_prefix="urgent") as pool:
                for k, addrs, path in lists:
                    spec = spec_for(
                        f"urgent-{name}-{k}", path, sink.address, priority=0,
                        servers=servers, concurrency=concurrency,
                    )  # fmt: skip
                    enqueued.update(dict.fromkeys(addrs, time.time()))
                    run_dir = work / f"run-urgent-{name}-{k}"
                    reports.append(pool.submit(run_campaign, spec, run_dir, live_progress=False))
                    time.sleep(spacing_s)
            log(f"{name}: priority campaigns done")
        thread.join(ROUND_TIMEOUT_S)
    if failure or "bulk" not in bulk_report:
        raise SystemExit(f"priority: the bulk run of round {name} failed: {failure!r}")
    result.bulk_accepted = bulk_report["bulk"].accepted
    result.priority_sent = len(enqueued)
    result.priority_accepted = sum(r.result().accepted for r in reports)
    read_round(capture, result, enqueued)
    log(
        f"{name}: bulk {result.bulk_captured} at {result.bulk_msg_s:.0f} msg/s; priority "
        f"{result.priority_captured} captured, {result.priority_during_bulk} during bulk"
    )
    return result


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (inclusive method: 99 of 100 values is between the top two)."""
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def combined_rate(rounds: list[Round]) -> float:
    span = sum(r.bulk_span_s for r in rounds)
    return sum(r.bulk_captured - 1 for r in rounds) / span if span > 0 else 0.0


def complete(r: Round, recipients: int) -> bool:
    """Every bulk and priority recipient accepted exactly once."""
    return (
        r.bulk_accepted == r.bulk_captured == recipients
        and r.priority_accepted == r.priority_captured == r.priority_sent
        and r.bulk_duplicates == r.priority_duplicates == 0
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--recipients", type=int, default=200_000)
    parser.add_argument("--priority-messages", type=int, default=100)
    parser.add_argument("--priority-campaigns", type=int, default=10)
    parser.add_argument("--spacing-s", type=float, default=0.5)
    parser.add_argument("--pairs", type=int, default=2, help="alone/with-priority pairs (ABBA)")
    parser.add_argument("--warmup-recipients", type=int, default=2000)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=25)
    parser.add_argument("--json-out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.recipients < 4 or args.pairs < 1 or args.priority_campaigns < 1:
        parser.error("need --recipients >= 4, --pairs >= 1 and --priority-campaigns >= 1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    from raymail.delivery.shared import close_pool, pool_actor_name
    from raymail.runtime import ensure_ray, start_local_ray

    started = time.monotonic()
    kw: dict[str, Any] = {
        "servers": args.servers,
        "concurrency": args.concurrency,
        "priority_campaigns": args.priority_campaigns,
        "spacing_s": args.spacing_s,
    }
    with tempfile.TemporaryDirectory(prefix="raymail-priority-") as tmp:
        work = Path(tmp)
        os.environ["RAYMAIL_HOME"] = str(work / "home")  # no routing table of this machine
        emails = [f"b{i}@d{i % BULK_DOMAINS}{BULK_SUFFIX}" for i in range(args.recipients)]
        bulk_list = write_list(work / "bulk.parquet", emails)
        warm_n = max(4, min(args.warmup_recipients, args.recipients))
        warm_list = write_list(work / "warm.parquet", emails[:warm_n])
        if os.environ.get("RAY_ADDRESS"):
            ensure_ray()  # joins it
        else:
            start_local_ray(num_cpus=max(2, os.cpu_count() or 2), log_to_driver=False)
        try:
            log("warm-up round")
            run_round(
                work, "warmup", warm_list, warm_n, **kw,
                priority_messages=min(args.priority_messages, 2 * args.priority_campaigns),
            )  # fmt: skip
            alone: list[Round] = []
            mixed: list[Round] = []
            for pair in range(args.pairs):
                order = ("alone", "mixed") if pair % 2 == 0 else ("mixed", "alone")
                for kind in order:
                    name = f"{kind}-{pair}"
                    log(f"round {name}")
                    if kind == "alone":
                        alone.append(run_round(work, name, bulk_list, args.recipients, **kw))
                    else:
                        n = args.priority_messages
                        mixed.append(
                            run_round(
                                work, name, bulk_list, args.recipients, **kw, priority_messages=n
                            )
                        )
            preemptions = 0
            for index in range(args.servers):
                server = ray.get_actor(pool_actor_name(POOL, index), namespace="raymail")
                preemptions += int(ray.get(server.lanes.remote())["preemptions"])
        finally:
            if ray.is_initialized():
                close_pool(POOL)
                ray.shutdown()
    latencies = sorted(t for r in mixed for t in r.latencies)
    alone_rate, mixed_rate = combined_rate(alone), combined_rate(mixed)
    out = {
        "recipients": args.recipients,
        "priority_messages": args.priority_messages,
        "priority_campaigns": args.priority_campaigns,
        "pairs": args.pairs,
        "priority_p50_s": round(percentile(latencies, 50), 3) if latencies else None,
        "priority_p99_s": round(percentile(latencies, 99), 3) if latencies else None,
        "priority_max_s": round(latencies[-1], 3) if latencies else None,
        "priority_captured": sum(r.priority_captured for r in mixed),
        "priority_during_bulk": sum(r.priority_during_bulk for r in mixed),
        "bulk_alone_msg_s": round(alone_rate, 1),
        "bulk_with_priority_msg_s": round(mixed_rate, 1),
        "bulk_vs_alone": round(mixed_rate / alone_rate, 3) if alone_rate else None,
        "duplicates": sum(r.bulk_duplicates + r.priority_duplicates for r in alone + mixed),
        "complete": all(complete(r, args.recipients) for r in alone + mixed),
        "preemptions": preemptions,
        "rounds": {r.name: r.summary() for r in alone + mixed},
        "servers": args.servers,
        "concurrency": args.concurrency,
        "targets": {"priority_p99_s": TARGET_P99_S, "bulk_vs_alone": TARGET_BULK_VS_ALONE},
        "elapsed_s": round(time.monotonic() - started, 1),
        "cpu_count": os.cpu_count(),
    }
    text = json.dumps(out, indent=2)
    print(text)
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    args.json_out.write_text(text + "\n", encoding="utf-8")
    return 0 if out["complete"] else 1


if __name__ == "__main__":
    sys.exit(main())
