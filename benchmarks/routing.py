"""Acceptance benchmark for learned routing (issue 7): makespan per routing policy.

For each topology seed, one generated topology (``raymail.sink.random_topology``: every
domain has a fast and a slow delivery server, latency-dominated, tens of ms per
transaction) is served by one sink process; each delivery server binds its own 127.0.0.x
source address, so the sink applies the (server, domain) link. The same recipient list is
then sent, in this one run, with:

``oracle``        the learned policy's planner given the true topology (every pair's
                  latency) instead of learning it: re-plans as the run goes, explores nothing
``oracle_static`` (with ``--static-oracle``) the makespan plan computed once, up front, from
                  the same truth (reported, not in the targets)
``round_robin``   portions dealt to servers in turn
``equal_shares``  the list cut into equal contiguous shares (the seed's plain partitioning)
``learned_cold``  the learned policy with an empty routing table (probing on)
``learned_warm``  the learned policy after two earlier runs (the cold one and one more) on
                  the same table (probing on); ``--warm-repeats`` runs, each from its own
                  copy of that table, averaged
``learned_warm_noprobe``  the same, probing off, each repeat run next to a probing one
                  (order alternating): the probing overhead is
                  ``learned_warm / learned_warm_noprobe - 1``

Makespan is first recipient started to last recipient finished (from the ledger), so Ray
worker start-up is outside it. Ratios are taken per seed and averaged over seeds. Prints
one JSON object on stdout (progress goes to stderr); exit status 1 when a run lost mail.

    python benchmarks/routing.py [--seeds 5] [--recipients 3000] [--json-out PATH]
    python benchmarks/routing.py --quick     # one small seed: a smoke run, not the figures
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

TARGETS = {
    "warm_vs_oracle": ("<=", 1.10),
    "round_robin_vs_warm": (">=", 1.5),
    "cold_vs_oracle": ("<=", 1.25),
    "probing_overhead": ("<=", 0.05),
}
SENDER = "Raymail Bench <news@bench.example>"


def log(message: str) -> None:
    print(f"[routing-bench] {message}", file=sys.stderr, flush=True)


def write_recipients(path: Path, domains: list[str], count: int, seed: int) -> Path:
    """``count`` recipients over ``domains`` with uneven (Zipf-like) sizes; one merge field
    each, so every recipient is its own SMTP transaction."""
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) ** 0.6 for i in range(len(domains))]
    rng.shuffle(weights)
    picks = rng.choices(domains, weights=weights, k=count)
    lines = ["email,name", *(f"u{i}@{d},N{i}" for i, d in enumerate(picks))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def campaign_spec(
    csv: Path,
    mx_override: dict[str, str],
    clients: list[str],
    args: argparse.Namespace,
    routing: dict[str, Any],
) -> Any:
    from raymail.spec import parse_spec

    return parse_spec(
        {
            "campaign": "routing-bench",
            "sender": SENDER,
            "subject": "Hello {{ name }}",
            "text": "Hi {{ name }},\nthis is the routing benchmark.\n",
            "recipients": str(csv),
            "mx_override": mx_override,
            "delivery_servers": len(clients),
            "source_addresses": clients,
            "concurrency": args.concurrency,
            "portion_size": args.portion_size,
            "verp_secret": "bench",
            "checkpoint_interval_s": 2.0,
            "retry": {
                "schedule": [],
                "max_attempts": 4,
                "initial_backoff_s": 0.2,
                "max_backoff_s": 1.0,
            },
            "routing": routing,
        },
        "routing-bench",
    )


def run_once(
    spec: Any, run_dir: Path, router: Callable[[Any, Path, Any], Any] | None
) -> dict[str, Any]:
    """One campaign; ``router(spec, run_dir, servers)`` replaces the spec's router."""
    from raymail.driver.campaign import CampaignDriver
    from raymail.run.ledger import read_outcomes
    from raymail.run.rundir import RunDir

    driver = CampaignDriver(spec, RunDir(run_dir), live_progress=False)
    if router is not None:
        driver.router = router(
            spec, run_dir, lambda: {s.name: s.handle for s in driver.servers if s.healthy}
        )
    report = driver.run()
    outcomes = read_outcomes(run_dir)
    span = outcomes.select(
        (pl.col("finished_at").max() - pl.col("started_at").min()).dt.total_microseconds()
    ).item()
    probes = run_dir / "routing" / "probes.parquet"
    return {
        "makespan_s": round(span / 1e6, 3),
        "accepted": int(report.accepted),
        "total": int(report.total),
        "probe_rows": pl.read_parquet(probes).height if probes.exists() else 0,
    }


def fast_share(run_dir: Path, topology: Any) -> float:
    """Share of recipients the run sent through each domain's fastest server."""
    from raymail.run.ledger import final_outcomes, read_outcomes

    final = final_outcomes(read_outcomes(run_dir))
    fastest = {d: topology.fastest(d) for d in topology.domains}
    hits = final.select(
        (pl.col("source_address") == pl.col("domain").replace_strict(fastest, default=None))
        .mean()
        .alias("share")
    ).item()
    return round(float(hits or 0.0), 3)


def seed_round(seed: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from raymail.routing import OracleRouter, StaticOracleRouter
    from raymail.sink import SinkProcess, random_topology

    clients = [f"127.0.0.{2 + i}" for i in range(args.servers)]
    domains = [f"d{i:02d}.s{seed}.bench" for i in range(args.domains)]
    topology = random_topology(
        seed,
        clients,
        domains,
        fast_ms=(args.fast_ms, args.fast_ms * 1.6),
        providers=args.providers or None,
    )
    folder = work / f"seed-{seed}"
    folder.mkdir(parents=True)
    topology.write(folder / "topology.yaml")
    csv = write_recipients(folder / "list.csv", domains, args.recipients, seed)
    tables = folder / "tables"

    def routing(policy: str, table: str, probe: bool) -> dict[str, Any]:
        return {
            "policy": policy,
            "table": str(tables / table),
            "probe": probe,
            "probe_interval_s": args.probe_interval,
        }

    def oracle(spec: Any, run_dir: Path, servers: Any) -> Any:
        return OracleRouter(
            spec, topology.seconds_per_transaction, run_dir=run_dir, servers=servers
        )

    def oracle_static(spec: Any, run_dir: Path, servers: Any) -> Any:
        return StaticOracleRouter(
            spec, topology.seconds_per_transaction, run_dir=run_dir, servers=servers
        )

    plan: list[tuple[str, dict[str, Any], Any]] = [
        ("learned_cold", routing("learned", "learned", True), None),
        ("learned_second", routing("learned", "learned", True), None),
    ]
    # the warm runs: each repeat starts from its own copy of the table the two runs left,
    # with and without probing, in alternating order so drift favours neither
    for r in range(args.warm_repeats):
        pair = [
            (f"learned_warm.{r}", routing("learned", f"warm-probe-{r}", True), None),
            (f"learned_warm_noprobe.{r}", routing("learned", f"warm-noprobe-{r}", False), None),
        ]
        plan.extend(pair if (seed + r) % 2 == 0 else pair[::-1])
    plan += [
        ("oracle", routing("learned", "oracle", False), oracle),
        ("round_robin", routing("round_robin", "round_robin", False), None),
        ("equal_shares", routing("equal_shares", "equal_shares", False), None),
    ]
    if args.static_oracle:
        plan.append(("oracle_static", routing("learned", "oracle_static", False), oracle_static))
    if args.only:  # a development aid: these runs only, no ratios
        plan = [p for p in plan if p[0].split(".")[0] in args.only.split(",")]
    results: dict[str, Any] = {}
    with SinkProcess(topology.to_config()) as sink:
        for name, settings, router in plan:
            table = Path(settings["table"])
            if name.startswith("learned_warm") and not table.exists():
                shutil.copytree(tables / "learned", table)
            spec = campaign_spec(csv, topology.mx_override(sink.port), clients, args, settings)
            log(f"seed {seed}: {name} ...")
            run_dir = folder / name
            results[name] = run_once(spec, run_dir, router)
            results[name]["fast_share"] = fast_share(run_dir, topology)
            log(f"seed {seed}: {name} {results[name]}")
    results = _merge_repeats(results)
    lost = [n for n, r in results.items() if r["accepted"] != r["total"]]
    if args.only:
        return {"seed": seed, "runs": results, "lost_mail": lost}
    span = {name: r["makespan_s"] for name, r in results.items()}
    ratios = {
        "warm_vs_oracle": span["learned_warm"] / span["oracle"],
        "round_robin_vs_warm": span["round_robin"] / span["learned_warm"],
        "equal_shares_vs_warm": span["equal_shares"] / span["learned_warm"],
        "cold_vs_oracle": span["learned_cold"] / span["oracle"],
        "probing_overhead": span["learned_warm"] / span["learned_warm_noprobe"] - 1.0,
    }
    if "oracle_static" in span:
        ratios["oracle_static_vs_oracle"] = span["oracle_static"] / span["oracle"]
    return {
        "seed": seed,
        "runs": results,
        "ratios": {k: round(v, 3) for k, v in ratios.items()},
        "lost_mail": lost,
    }


def _merge_repeats(results: dict[str, Any]) -> dict[str, Any]:
    """``name.r`` runs become one entry: mean makespan and fast share, every run kept."""
    merged: dict[str, Any] = {}
    for name, result in results.items():
        base, _, repeat = name.partition(".")
        if not repeat:
            merged[name] = result
            continue
        entry = merged.setdefault(base, {"repeats": []})
        entry["repeats"].append(result)
    for entry in merged.values():
        runs = entry.get("repeats")
        if runs:
            entry["makespan_s"] = round(statistics.fmean(r["makespan_s"] for r in runs), 3)
            entry["fast_share"] = round(statistics.fmean(r["fast_share"] for r in runs), 3)
            entry["accepted"] = min(r["accepted"] for r in runs)
            entry["total"] = runs[0]["total"]
    return merged


def summarise(
    rounds: list[dict[str, Any]], args: argparse.Namespace, started: float
) -> dict[str, Any]:
    names = rounds[0]["runs"].keys()
    means = {
        key: round(statistics.fmean(r["ratios"][key] for r in rounds), 3)
        for key in rounds[0]["ratios"]
    }
    met = {}
    for key, (op, target) in TARGETS.items():
        met[key] = means[key] <= target if op == "<=" else means[key] >= target
    return {
        "servers": args.servers,
        "domains": args.domains,
        "recipients": args.recipients,
        "concurrency": args.concurrency,
        "portion_size": args.portion_size,
        "fast_ms": args.fast_ms,
        "providers": args.providers,
        "probe_interval_s": args.probe_interval,
        "seeds": [r["seed"] for r in rounds],
        "makespan_s": {name: [r["runs"][name]["makespan_s"] for r in rounds] for name in names},
        "mean_makespan_s": {
            name: round(statistics.fmean(r["runs"][name]["makespan_s"] for r in rounds), 3)
            for name in names
        },
        "fast_share": {
            name: round(statistics.fmean(r["runs"][name]["fast_share"] for r in rounds), 3)
            for name in names
        },
        "ratios": means,
        "ratios_per_seed": [r["ratios"] for r in rounds],
        "targets": {k: f"{op} {v}" for k, (op, v) in TARGETS.items()},
        "targets_met": met,
        "lost_mail": [r["seed"] for r in rounds if r["lost_mail"]],
        "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "wall_s": round(time.monotonic() - started, 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="topology seeds (1..N)")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--domains", type=int, default=30)
    parser.add_argument("--recipients", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--portion-size", type=int, default=10)
    parser.add_argument("--fast-ms", type=float, default=50.0, help="fastest link latency")
    parser.add_argument("--probe-interval", type=float, default=5.0)
    parser.add_argument(
        "--providers",
        type=int,
        default=10,
        help="mail providers the domains are hosted on (one MX host and one latency "
        "profile each); 0: every domain its own",
    )
    parser.add_argument(
        "--warm-repeats",
        type=int,
        default=2,
        help="warm runs with and without probing, each from its own copy of the table",
    )
    parser.add_argument("--work", type=Path, help="keep run directories here")
    parser.add_argument("--json-out", type=Path, help="also write the JSON here")
    parser.add_argument("--only", help="comma-separated runs (development aid: no ratios)")
    parser.add_argument(
        "--static-oracle", action="store_true", help="also run the plan fixed up front"
    )
    parser.add_argument(
        "--quick", action="store_true", help="one small seed (6 domains, 240 recipients)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.domains, args.recipients, args.providers = 1, 6, 240, 3
        args.warm_repeats = 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import ray

    from raymail.runtime import DELIVERY_RESOURCE

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    started = time.monotonic()
    work = args.work or Path(tempfile.mkdtemp(prefix="raymail-routing-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["RAYMAIL_HOME"] = str(work / "home")  # never the user's table
    ray.init(
        address="local",
        num_cpus=2,
        resources={DELIVERY_RESOURCE: 64},
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    try:
        rounds = [
            seed_round(seed, args, work)
            for seed in range(args.first_seed, args.first_seed + args.seeds)
        ]
    finally:
        ray.shutdown()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.only:
        print(json.dumps(rounds, indent=2))
        return 0
    result = summarise(rounds, args, started)
    text = json.dumps(result, indent=2)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 1 if result["lost_mail"] else 0


if __name__ == "__main__":
    sys.exit(main())
