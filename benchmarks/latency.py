"""Slow receivers: raymail's msg/s as the receiver's latency and the connections vary.

Real mail exchangers answer the end of DATA after 0.1 s to over a second; loopback answers
at once. This sweeps both, in one run, with 10,000 personalised ~2 KB messages over 40
domains and 2 delivery servers (connections split between them):

- latency 0: Postfix's ``smtp-sink``;
- latency 0.1 s: the project's sink (``raymail.sink``, ``latency_ms: 100``) in a process
  of its own (smtp-sink's delays are whole seconds);
- latency 1 s: ``smtp-sink -w 1`` (each DATA answered after a second).

Each cell reports ``raymail_msg_s`` (the run's own sending time), ``ideal_msg_s``
(connections / latency: every connection busy all the time) and ``vs_ideal``; on the
smtp-sink cells Postfix's ``smtp-source`` sends the same count over as many sessions in the
same run (``raymail_vs_smtp_source``). A cell at latency L with C connections sends
``min(--recipients, C / L x --cell-seconds)`` messages, so slow cells stay bounded in time;
the target cell (1 s, 2 x 250 connections) always sends all of them: issue 16 asks for
>= 400 msg/s there. CPU seconds of this benchmark's processes per message come with each
cell (``cpu_us_per_msg``; on a shared machine prefer it and the ratios to the rates).

Prints one JSON object on stdout and the table as Markdown on stderr.

    python benchmarks/latency.py [--latencies 0,0.1,1] [--connections 25,100,250,500,1000]
                                 [--recipients 10000] [--cell-seconds 25] [--json-out PATH]
                                 [--shaping on|off|both]

Per-MX traffic shaping is on in the cells, as in a default spec: on a loaded machine a
loopback sink's replies slow down now and then and shaping's slow-reply rule lowers the
connections to 127.0.0.1 (the cell's ``backoff`` lines); ``--shaping both`` runs each cell
shaped and then unshaped, side by side (the target is judged on the shaped one).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import throughput as tp

DOMAINS = 40
SERVERS = 2
FILLER_LINES = 16  # ~2 KB rendered, as in throughput.py
TARGET = {"latency_s": 1.0, "connections": 500, "msg_s": 400.0}


def _sink(
    latency_s: float, connections: int, sink_bin: str, work: Path
) -> AbstractContextManager[Any]:
    """A receiver answering each message after ``latency_s``; ``.port`` is where."""
    sessions = connections + 64  # room for the pools' reconnects and the stats probe
    if latency_s == 0.0:
        return tp.SmtpSink(sink_bin, work / "smtp-sink.log", max_sessions=sessions)
    if latency_s == round(latency_s):
        return tp.SmtpSink(
            sink_bin,
            work / "smtp-sink.log",
            max_sessions=sessions,
            data_delay_s=int(latency_s),
            backlog=1024,
        )
    from raymail.sink import SinkConfig, SinkProcess

    config = SinkConfig.model_validate({"default": {"latency_ms": latency_s * 1000}})
    return SinkProcess(config)


def cell_recipients(latency_s: float, connections: int, args: argparse.Namespace) -> int:
    if latency_s == 0.0 or (
        latency_s == TARGET["latency_s"] and connections == TARGET["connections"]
    ):
        return int(args.recipients)
    budget = math.ceil(connections / latency_s * args.cell_seconds)
    return int(min(args.recipients, max(budget, 2 * DOMAINS)))


def run_cell(
    latency_s: float,
    connections: int,
    shaping: bool,
    args: argparse.Namespace,
    sink_bin: str,
    source_bin: str,
    work: Path,
) -> dict[str, Any]:
    count = cell_recipients(latency_s, connections, args)
    folder = work / f"cell-{latency_s:g}-{connections}-{'shaped' if shaping else 'unshaped'}"
    folder.mkdir()
    recipients = tp.write_recipients(folder / "recipients.parquet", count, domains=DOMAINS)
    with _sink(latency_s, connections, sink_bin, folder) as sink:
        spec = tp.make_spec(recipients, sink.port, connections, FILLER_LINES, servers=SERVERS)
        # Spread portions over all of a server's connections (one MX: the sink).
        smtp = spec.smtp.model_copy(update={"max_connections_per_mx": spec.concurrency})
        # Each cell its own routing table: no cell starts from limits another one learned.
        routing = spec.routing.model_copy(update={"table": str(folder / "routing")})
        shaped = spec.shaping.model_copy(update={"enabled": shaping})
        spec = spec.model_copy(update={"smtp": smtp, "routing": routing, "shaping": shaped})
        with tp.CpuWatch() as watch:
            result = tp.run_raymail(spec, folder / "run")
        source_rate: float | None = None
        if isinstance(sink, tp.SmtpSink):
            from raymail.compose.message import MessageTemplate

            email, values = next(tp._merge_rows(recipients))
            template = MessageTemplate(spec)
            message = template.render(email, values)
            sample = folder / "message.eml"
            sample.write_bytes(message.replace(b"\r\n", b"\n"))
            workload = tp.Workload(
                recipients, spec, [(template.envelope_sender(email), email, message)], sample, 0
            )
            source = tp.run_smtp_source(source_bin, sink.port, workload, count, connections)
            source_rate = source.rate
    shutil.rmtree(folder, ignore_errors=True)
    ideal = connections / latency_s if latency_s else None
    row = {
        "latency_s": latency_s,
        "connections": connections,
        "servers": SERVERS,
        "shaping": shaping,
        "recipients": count,
        "accepted": result.accepted,
        "raymail_msg_s": round(result.rate, 1),
        "elapsed_s": round(result.seconds, 2),
        "ideal_msg_s": round(ideal, 1) if ideal else None,
        "vs_ideal": tp._ratio(result.rate, ideal) if ideal else None,
        "smtp_source_msg_s": round(source_rate, 1) if source_rate else None,
        "raymail_vs_smtp_source": tp._ratio(result.rate, source_rate) if source_rate else None,
        "cpu_us_per_msg": round(watch.own_s / max(result.accepted, 1) * 1e6, 1),
    }
    tp.log(
        f"latency {latency_s:g} s, {connections} connections, {count} messages, shaping "
        f"{'on' if shaping else 'off'}: "
        f"raymail {result.rate:,.0f} msg/s"
        + (f", smtp-source {source_rate:,.0f} msg/s" if source_rate else "")
    )
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    """The sweep as a README table (msg/s; ideal = connections / latency)."""
    lines = [
        "| latency | connections (2 servers) | shaping | messages | raymail msg/s | of ideal "
        "| smtp-source msg/s | raymail / smtp-source |",
        "| ---: | ---: | :---: | ---: | ---: | ---: | ---: | ---: |",
    ]

    def fmt(value: float | None, pattern: str = "{:,.0f}") -> str:
        return "-" if value is None else pattern.format(value)

    for r in rows:
        lines.append(
            f"| {r['latency_s']:g} s | {r['connections']} | {'on' if r['shaping'] else 'off'} "
            f"| {r['recipients']:,} "
            f"| {fmt(r['raymail_msg_s'])} | {fmt(r['vs_ideal'], '{:.2f}')} "
            f"| {fmt(r['smtp_source_msg_s'])} | {fmt(r['raymail_vs_smtp_source'], '{:.2f}')} |"
        )
    return "\n".join(lines)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latencies", default="0,0.1,1", help="seconds, comma separated")
    parser.add_argument(
        "--connections", default="25,100,250,500,1000", help="total, comma separated"
    )
    parser.add_argument("--recipients", type=int, default=10_000)
    parser.add_argument("--cell-seconds", type=float, default=25.0, help="slow cells' budget")
    parser.add_argument("--json-out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--shaping",
        choices=("on", "off", "both"),
        default="on",
        help="per-MX traffic shaping in the cells (both: each cell shaped, then unshaped)",
    )
    args = parser.parse_args(argv)
    args.shaping_list = {"on": [True], "off": [False], "both": [True, False]}[args.shaping]
    args.latency_list = _floats(args.latencies)
    args.connection_list = [int(c) for c in _floats(args.connections)]
    if any(x < 0 for x in args.latency_list) or any(c < SERVERS for c in args.connection_list):
        parser.error(f"latencies must be >= 0 and connections >= {SERVERS}")
    if args.recipients < DOMAINS:
        parser.error(f"--recipients must be >= {DOMAINS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sink_bin, source_bin = tp.ensure_postfix()
    started = time.perf_counter()
    tp.start_ray()
    rows = []
    with tempfile.TemporaryDirectory(prefix="raymail-latency-") as tmp:
        work = Path(tmp)
        tp.private_home(work / "raymail-home")
        # warm-up: worker imports and caches, outside every cell
        warm = work / "warm"
        warm.mkdir()
        with tp.SmtpSink(sink_bin, warm / "smtp-sink.log") as sink:
            path = tp.write_recipients(warm / "r.parquet", 500, domains=DOMAINS)
            tp.run_raymail(tp.make_spec(path, sink.port, 50, FILLER_LINES), warm / "run")
        for latency_s in args.latency_list:
            for connections in args.connection_list:
                for shaping in args.shaping_list:
                    rows.append(
                        run_cell(latency_s, connections, shaping, args, sink_bin, source_bin, work)
                    )
    target = next(
        (
            r
            for r in rows
            if r["latency_s"] == TARGET["latency_s"] and r["connections"] == TARGET["connections"]
        ),
        None,
    )
    result: dict[str, Any] = {
        "benchmark": "latency",
        "domains": DOMAINS,
        "delivery_servers": SERVERS,
        "cells": rows,
        "target": TARGET,
        "target_msg_s": target["raymail_msg_s"] if target else None,
        "meets_target": bool(target and target["raymail_msg_s"] >= TARGET["msg_s"]),
        "missing": sum(r["recipients"] - r["accepted"] for r in rows),
        "seconds": round(time.perf_counter() - started, 1),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "versions": tp._versions(),
    }
    print(markdown(rows), file=sys.stderr, flush=True)
    text = json.dumps(result, indent=2)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n", encoding="utf-8")
    print(text, flush=True)
    return 1 if result["missing"] else 0


if __name__ == "__main__":
    sys.exit(main())
