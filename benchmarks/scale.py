"""Acceptance benchmark for issue "Scale": 100,000 and 1,000,000 recipients on one machine.

Every message is personalised (merge fields in the subject and body, a per-recipient
unsubscribe URL), so no two are identical; the recipients are spread over ``--domains``
(1,000) domains, and all go to Postfix's ``smtp-sink`` on loopback.

Each size runs in a fresh driver process (so its peak RSS is the driver's alone), with its
own local Ray started before the clock. The driver process samples, while the campaign
runs: its own RSS, the object store's use (Ray's memory info), the delivery servers' RSS,
and the run directory's bytes and file count. This process counts what the ledger says was
accepted against the input and prints one JSON object with a record per size and the
targets of the issue for the largest size:

- 0 missed (input rows not accepted), none accepted twice;
- driver peak RSS < 1 GB;
- run directory < 200 MB in < 1,000 files (at the end, and at its peak during the run);
- msg/s within 20% of the smallest size's (cost grows linearly with the list).

``elapsed_s`` is the wall time of ``run_campaign`` (loading, planning, sending, report);
``sending_s`` is the run's own dispatch time. The machine is shared: ``loadavg`` and
``background_cpu_share`` (the share of all cores used by other processes meanwhile) say how
busy it was, so a rate can be read in that light.

    python benchmarks/scale.py [--sizes 100000 1000000] [--domains 1000]
                               [--servers 2] [--concurrency 25] [--json-out PATH]
                               [--ray-address ADDRESS]

``--ray-address`` makes each driver join that Ray instead of starting its own (the test
suite's smoke run: a Ray start less per size). The delivery servers' RSS is then not
sampled (they are not this benchmark's processes) and the object store is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import (
    CpuWatch,
    SmtpSink,
    _delivery_server_pids,
    ensure_postfix,
    postfix_version,
    start_ray,
)
from throughput import make_spec as throughput_spec

TARGET_RSS_BYTES = 1_000_000_000
TARGET_RUN_DIR_BYTES = 200_000_000
TARGET_RUN_DIR_FILES = 1000
TARGET_RATE_RATIO = 0.8  # the largest size's msg/s at least this share of the smallest's
FILLER_LINES = 12  # about 2 KB per rendered message
SAMPLE_S = 1.0


def log(message: str) -> None:
    print(f"scale: {message}", file=sys.stderr, flush=True)


# -- the workload --------------------------------------------------------------------------


def write_recipients(path: Path, count: int, domains: int) -> Path:
    """``count`` unique recipients over ``domains`` domains, with merge fields (vectorised)."""
    import polars as pl

    i = pl.col("i")
    frame = pl.DataFrame({"i": pl.int_range(0, count, eager=True)}).select(
        email=pl.format("user{}@d{}.scale.example", i, (i * 7919) % domains),
        first_name=pl.format("First{}", i % 997),
        last_name=pl.format("Last{}", (i // 7) % 1009),
        city=pl.format("City{}", (i * 5) % 101),
        since=(1990 + i % 35).cast(pl.String),
        code=pl.format("S{}", i),
    )
    frame.write_parquet(path)
    return path


def make_spec(recipients: Path, port: int, servers: int, concurrency: int) -> Any:
    return throughput_spec(
        recipients,
        port,
        servers * concurrency,
        FILLER_LINES,
        campaign="scale-bench",
        servers=servers,
        max_attempts=5,
        max_backoff_s=5.0,
    )


# -- the driver process --------------------------------------------------------------------


def _rss(pid: int | str = "self") -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _tree(folder: Path) -> tuple[int, int]:
    """(bytes, files) under ``folder``."""
    size = files = 0
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                size += os.stat(os.path.join(root, name)).st_size
                files += 1
            except OSError:
                pass  # renamed or removed meanwhile
    return size, files


class Sampler:
    """Samples driver RSS, object store use, delivery-server RSS and the run directory."""

    def __init__(self, run_dir: Path, gcs_address: str) -> None:
        self.run_dir = run_dir
        self.gcs_address = gcs_address
        self.timeline: list[tuple[float, int]] = []  # (seconds, driver RSS)
        self.peak_store = 0
        self.peak_server_rss = 0
        self.peak_dir_bytes = 0
        self.peak_dir_files = 0
        self.store_errors = 0
        self._servers: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scale-sampler", daemon=True)
        self._started = time.monotonic()

    def _store_bytes(self) -> int:
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        reply = get_memory_info_reply(get_state_from_address(self.gcs_address))
        return int(reply.store_stats.object_store_bytes_used)

    def _sample(self) -> None:
        self.timeline.append((round(time.monotonic() - self._started, 1), _rss()))
        try:
            self.peak_store = max(self.peak_store, self._store_bytes())
        except Exception:  # a busy GCS may not answer in time; counted, not fatal
            self.store_errors += 1
        if len(self._servers) < 2:
            self._servers = _delivery_server_pids()
        for pid in self._servers:
            self.peak_server_rss = max(self.peak_server_rss, _rss(pid))
        size, files = _tree(self.run_dir)
        self.peak_dir_bytes = max(self.peak_dir_bytes, size)
        self.peak_dir_files = max(self.peak_dir_files, files)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._sample()


def drive(args: argparse.Namespace) -> int:
    """The child: start Ray, run one campaign while sampling, write the figures as JSON."""
    import resource

    import ray

    from raymail.driver.campaign import run_campaign

    start_ray(args.ray_address)
    gcs_address = str(ray.get_runtime_context().gcs_address)
    spec = make_spec(args.recipients, args.port, args.servers, args.concurrency)
    baseline_rss = _rss()
    with Sampler(args.run_dir, gcs_address) as sampler:
        started = time.perf_counter()
        report = run_campaign(spec, args.run_dir, live_progress=False)
        wall = time.perf_counter() - started
    ray.shutdown()
    timeline = sampler.timeline
    quarter = max(1, len(timeline) // 4)
    result = {
        "wall_s": wall,
        "report": report.model_dump(mode="json", exclude={"domains", "in_doubt_recipients"}),
        "driver_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "driver_rss_after_ray_init_bytes": baseline_rss,
        # driver RSS at the end of each quarter of the run: flat means streaming works
        "driver_rss_by_quarter_bytes": [rss for _, rss in timeline[quarter - 1 :: quarter]][:4],
        "peak_object_store_bytes": sampler.peak_store,
        "object_store_sample_errors": sampler.store_errors,
        "delivery_server_peak_rss_bytes": sampler.peak_server_rss,
        "run_dir_peak_bytes": sampler.peak_dir_bytes,
        "run_dir_peak_files": sampler.peak_dir_files,
    }
    args.result.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    return 0


# -- the parent ----------------------------------------------------------------------------


def _ledger_counts(run_dir: Path, size: int) -> dict[str, int]:
    """Accepted rows (distinct), rows accepted more than once, and missed input rows."""
    import polars as pl

    from raymail.run.ledger import scan_outcomes

    accepted = (
        scan_outcomes(run_dir)
        .filter(pl.col("status") == "accepted")
        .group_by("row")
        .len()
        .select(rows=pl.len(), twice=(pl.col("len") > 1).sum())
        .collect()
    )
    rows = int(accepted["rows"][0])
    return {"accepted": rows, "accepted_twice": int(accepted["twice"][0]), "missed": size - rows}


def run_size(size: int, args: argparse.Namespace, port: int, work: Path) -> dict[str, Any]:
    recipients = work / f"recipients-{size}.parquet"
    log(f"{size:,} recipients over {args.domains} domains -> {recipients}")
    write_recipients(recipients, size, args.domains)
    run_dir = work / f"run-{size}"
    result_path = work / f"result-{size}.json"
    command = [
        sys.executable, str(Path(__file__).resolve()), "--drive",
        "--recipients", str(recipients), "--run-dir", str(run_dir), "--port", str(port),
        "--servers", str(args.servers), "--concurrency", str(args.concurrency),
        "--result", str(result_path),
        *(["--ray-address", args.ray_address] if args.ray_address else []),
    ]  # fmt: skip
    timeout = 600 + size / 200  # generous: 200 msg/s would still finish
    load_before = os.getloadavg()
    with CpuWatch() as cpu:
        started = time.perf_counter()
        done = subprocess.run(command, timeout=timeout, check=False)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"scale: the driver for {size:,} recipients failed ({done.returncode})")
    child = json.loads(result_path.read_text(encoding="utf-8"))
    counts = _ledger_counts(run_dir, size)
    dir_bytes, dir_files = _tree(run_dir)
    wall = float(child["wall_s"])
    report = child["report"]
    cores = len(os.sched_getaffinity(0))
    record = {
        "recipients": size,
        "domains": args.domains,
        "elapsed_s": round(wall, 1),
        "msg_s": round(counts["accepted"] / wall, 1),
        "sending_s": report["elapsed_s"],
        "sending_msg_s": report["messages_per_s"],
        "accepted": counts["accepted"],
        "missed": counts["missed"],
        "accepted_twice": counts["accepted_twice"],
        "deferred": report["deferred"],
        "failed": report["failed"],
        "in_doubt": report["in_doubt"],
        "attempts": report["attempts"],
        "driver_peak_rss_mb": round(child["driver_peak_rss_bytes"] / 1e6, 1),
        "driver_rss_after_ray_init_mb": round(child["driver_rss_after_ray_init_bytes"] / 1e6, 1),
        "driver_rss_by_quarter_mb": [
            round(b / 1e6, 1) for b in child["driver_rss_by_quarter_bytes"]
        ],
        "peak_object_store_mb": round(child["peak_object_store_bytes"] / 1e6, 2),
        "delivery_server_peak_rss_mb": round(child["delivery_server_peak_rss_bytes"] / 1e6, 1),
        "run_dir_mb": round(dir_bytes / 1e6, 1),
        "run_dir_files": dir_files,
        "run_dir_peak_mb": round(child["run_dir_peak_bytes"] / 1e6, 1),
        "run_dir_peak_files": child["run_dir_peak_files"],
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "background_cpu_share": round(cpu.others_s / (seconds * cores), 3),
        "own_cpu_us_per_msg": round(cpu.own_s / max(counts["accepted"], 1) * 1e6, 1),
    }
    log(json.dumps(record))
    return record


def benchmark(args: argparse.Namespace, sink_bin: str, work: Path) -> dict[str, Any]:
    with SmtpSink(sink_bin, work / "smtp-sink.log") as sink:
        log(f"smtp-sink on 127.0.0.1:{sink.port}")
        sizes = [run_size(n, args, sink.port, work) for n in sorted(args.sizes)]
    small, large = sizes[0], sizes[-1]
    ratio = round(large["msg_s"] / small["msg_s"], 3) if small["msg_s"] else None
    targets = {
        "missed": large["missed"] == 0 and large["accepted_twice"] == 0,
        "driver_peak_rss": large["driver_peak_rss_mb"] * 1e6 < TARGET_RSS_BYTES,
        "run_dir_bytes": max(large["run_dir_mb"], large["run_dir_peak_mb"]) * 1e6
        < TARGET_RUN_DIR_BYTES,
        "run_dir_files": max(large["run_dir_files"], large["run_dir_peak_files"])
        < TARGET_RUN_DIR_FILES,
        "msg_s_ratio": ratio is not None and ratio >= TARGET_RATE_RATIO,
    }
    return {
        "benchmark": "scale",
        "sizes": sizes,
        "largest_vs_smallest_msg_s": ratio,
        "targets_for_largest": {
            "missed": 0,
            "driver_peak_rss_mb": TARGET_RSS_BYTES / 1e6,
            "run_dir_mb": TARGET_RUN_DIR_BYTES / 1e6,
            "run_dir_files": TARGET_RUN_DIR_FILES,
            "msg_s_ratio_at_least": TARGET_RATE_RATIO,
        },
        "meets": targets,
        "meets_all": all(targets.values()),
        "delivery_servers": args.servers,
        "concurrency_per_server": args.concurrency,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "postfix": postfix_version(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--domains", type=int, default=1000)
    parser.add_argument("--servers", type=int, default=2, help="delivery servers")
    parser.add_argument("--concurrency", type=int, default=25, help="connections per server")
    parser.add_argument("--json-out", type=Path, help="also write the JSON here")
    parser.add_argument("--work-dir", type=Path, help="keep lists and run dirs here")
    parser.add_argument("--ray-address", help="join this Ray instead of a fresh one per size")
    # the driver process (internal)
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--recipients", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.sizes) < 1 or args.domains < 1 or args.servers < 1 or args.concurrency < 1:
        parser.error("--sizes, --domains, --servers and --concurrency must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if args.drive:
        return drive(args)
    sink_bin, _ = ensure_postfix()
    if args.work_dir:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        result = benchmark(args, sink_bin, args.work_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="raymail-scale-") as tmp:
            result = benchmark(args, sink_bin, Path(tmp))
    text = json.dumps(result, indent=2)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n", encoding="utf-8")
    print(text, flush=True)
    return 0 if result["sizes"][-1]["missed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
