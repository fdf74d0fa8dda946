"""Resume benchmark: a run killed when 90 % was done resends only the rest, and soon.

Acceptance (issue 6): "Resuming a run that was 90 % done sends only the rest and starts
sending within 15 s of the command". Each round, against a capturing SMTP sink on loopback
that runs in its own process:

1. ``raymail send SPEC --run-dir D`` (a subprocess in a new session) sends a personalised
   campaign (default 20,000 recipients over 20 domains); the time from the command to the
   first message at the sink is the *fresh* reference;
2. once ``--kill-at`` (default 90 %) of the recipients reached the sink, the whole session
   (driver, Ray daemons, delivery servers) is killed with SIGKILL; the sink is left to settle
   and the run's state is read as the resume will read it (ledger + delivery journals):
   ``remaining_before_resume`` recipients are neither accepted nor failed;
3. ``raymail resume D`` (a subprocess in a new session) is timed from the command to the
   first new message at the sink (``seconds_to_first_send``) and to its exit.

Then the capture is split at the resume: ``resent`` messages arrived after it started;
``sent_only_the_rest`` holds when they are exactly the remaining recipients, each once, and
any recipient captured both before and after is one the ledger lists as in doubt (a message
in flight at the kill). ``resume_vs_fresh_first_send`` compares the two start-up times
measured in the same round (the machine is shared and noisy: ratios, not absolute times).
``phases`` splits the resume's start-up using the stage history in run.json: a resume
records "delivering" when it has raised the fence (it then starts Ray and the delivery
servers during the fence wait), again once the ledger and journals are read and the work is
queued, then "complete".

Prints one JSON object on stdout (progress on stderr). With ``--repeat N`` the times are
medians over N rounds and the counts are summed; exit status 1 when a round did not send
only the rest or did not start sending within 15 s.

    python benchmarks/resume.py [--recipients 20000] [--kill-at 0.9] [--repeat 3]
                                [--json-out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
from chaos import (
    KILL_WAIT_S,
    RUN_TIMEOUT_S,
    CaptureCounter,
    Sessions,
    kill_session,
    raymail_env,
    sent_or_ended,
    spawn_raymail,
    wait_exit,
    wait_until,
    write_recipients,
    write_spec,
)

from raymail.run.ledger import read_outcomes
from raymail.run.recovery import run_state
from raymail.run.rundir import RunDir
from raymail.sink import SinkConfig, SinkProcess, read_capture

TARGET_FIRST_SEND_S = 15.0
FAST_POLL_S = 0.01


def log(message: str) -> None:
    print(f"resume: {message}", file=sys.stderr, flush=True)


def settle(counter: CaptureCounter, quiet_s: float = 0.5, limit_s: float = 10.0) -> int:
    """Wait until the capture stops growing for ``quiet_s`` (bounded by ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    last, since = counter.poll(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = counter.poll()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return last


def state_before(run_dir: Path) -> dict[str, Any]:
    """What the resume will find: per-recipient final status from the ledger and journals."""
    listed = run_dir / "recipients.parquet"
    recipients = pq.read_table(listed, columns=["row", "email"])
    _, final = run_state(run_dir, listed, RunDir(run_dir).spec().campaign)
    counts = dict(final.group_by("status").len().iter_rows())
    emails = pl.from_arrow(recipients)
    assert isinstance(emails, pl.DataFrame)
    accepted_rows = final.filter(pl.col("status") == "accepted").select(
        pl.col("row").cast(pl.Int64)
    )
    accepted = set(accepted_rows.join(emails, on="row", how="inner")["email"].to_list())
    settled = sum(counts.get(s, 0) for s in ("accepted", "failed"))
    return {
        "recipients": recipients.num_rows,
        "accepted": counts.get("accepted", 0),
        "in_doubt": counts.get("in_doubt", 0),
        "deferred": counts.get("deferred", 0),
        "failed": counts.get("failed", 0),
        "remaining": recipients.num_rows - settled,
        "accepted_set": accepted,
    }


def resume_phases(run_dir: Path, started_wall: float) -> list[dict[str, Any]]:
    """Seconds from the resume command to each stage it recorded (run.json history)."""
    phases = []
    for stage in RunDir(run_dir).manifest().get("stages", []):
        at = datetime.fromisoformat(stage["at"]).timestamp()
        if at >= started_wall:
            phases.append({"stage": stage["stage"], "after_s": round(at - started_wall, 3)})
    return phases


def one_round(
    index: int, args: argparse.Namespace, recipients: Path, folder: Path, env: dict[str, str]
) -> dict[str, Any]:
    run_dir, capture, logs = folder / "run", folder / "capture", folder / "logs"
    n = args.recipients
    target = int(n * args.kill_at)
    sessions = Sessions()
    config = SinkConfig(seed=index, default={"latency_ms": args.latency_ms})  # type: ignore[arg-type]
    with SinkProcess(config, capture_dir=capture) as sink:
        spec = write_spec(
            folder / "campaign.yaml",
            recipients,
            sink.address,
            servers=args.servers,
            concurrency=args.concurrency,
        )
        counter = CaptureCounter(capture)
        try:
            t0 = time.monotonic()
            proc = sessions.add(
                spawn_raymail(
                    ["send", str(spec), "--run-dir", str(run_dir)], logs / "send.log", env
                )
            )
            wait_until(sent_or_ended(counter, 1, proc), KILL_WAIT_S, FAST_POLL_S)
            fresh_first = time.monotonic() - t0 if counter.count else None
            wait_until(sent_or_ended(counter, target, proc), KILL_WAIT_S)
            if proc.poll() is not None:
                raise RuntimeError(f"round {index}: the run ended before the kill")
            killed = kill_session(proc.pid)
            wait_exit(proc, 30)
            at_kill = counter.count
            before = settle(counter)
            state = state_before(run_dir)
            snapshot = read_capture(capture).select(["rcpt_to", "file", "line"])

            started_wall, t1 = time.time(), time.monotonic()
            rproc = sessions.add(spawn_raymail(["resume", str(run_dir)], logs / "resume.log", env))
            wait_until(sent_or_ended(counter, before + 1, rproc), RUN_TIMEOUT_S, FAST_POLL_S)
            first = time.monotonic() - t1 if counter.count > before else None
            code = wait_exit(rproc, RUN_TIMEOUT_S)
            resume_total = time.monotonic() - t1
            kill_session(rproc.pid)
        finally:
            sessions.kill_all()
    return analyse(
        run_dir,
        capture,
        snapshot,
        state,
        {
            "round": index,
            "killed_processes": killed,
            "captured_at_kill": at_kill,
            "captured_before_resume": before,
            "fresh_seconds_to_first_send": _round(fresh_first),
            "seconds_to_first_send": _round(first),
            "resume_total_s": round(resume_total, 3),
            "resume_exit_code": code,
            "phases": resume_phases(run_dir, started_wall),
        },
    )


def analyse(
    run_dir: Path,
    capture: Path,
    snapshot: pl.DataFrame,
    state: dict[str, Any],
    fields: dict[str, Any],
) -> dict[str, Any]:
    """Split the capture at the resume and check it sent exactly the rest."""
    captured = read_capture(capture).select(["rcpt_to", "file", "line"])
    seen = snapshot.group_by("file").agg(pl.col("line").max().alias("seen"))
    after = (
        captured.join(seen, on="file", how="left")
        .filter(pl.col("line") > pl.col("seen").fill_null(0))
        .get_column("rcpt_to")
    )
    before_set = set(snapshot["rcpt_to"].to_list())
    after_set = set(after.to_list())
    doubted = set(
        read_outcomes(run_dir).filter(pl.col("status") == "in_doubt")["email"].unique().to_list()
    )
    again = before_set & after_set
    accepted_again = state["accepted_set"] & after_set
    expected = set(pq.read_table(run_dir / "recipients.parquet", columns=["email"])[0].to_pylist())
    missed = expected - before_set - after_set
    resent, resent_distinct = after.len(), len(after_set)
    only_rest = (
        resent == resent_distinct == state["remaining"]
        and not accepted_again
        and again <= doubted
        and not missed
    )
    first = fields["seconds_to_first_send"]
    fresh = fields["fresh_seconds_to_first_send"]
    fields.update(
        status=RunDir(run_dir).manifest().get("status"),
        remaining_before_resume=state["remaining"],
        in_doubt_before_resume=state["in_doubt"],
        accepted_before_resume=state["accepted"],
        remaining_at_sink=len(expected - before_set),
        resent=resent,
        resent_distinct=resent_distinct,
        resent_also_before=len(again),
        resent_also_before_not_in_doubt=len(again - doubted),
        accepted_before_and_resent=len(accepted_again),
        missed=len(missed),
        sent_only_the_rest=only_rest,
        resume_vs_fresh_first_send=round(first / fresh, 3) if first and fresh else None,
        within_15_s=first is not None and first <= TARGET_FIRST_SEND_S,
    )
    return fields


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _median(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM ends the run through the ``finally`` blocks that kill what it started."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipients", type=int, default=20000)
    parser.add_argument("--kill-at", type=float, default=0.9, help="share at the sink")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=25)
    parser.add_argument("--latency-ms", type=float, default=3.0)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if not 0 < args.kill_at < 1:
        parser.error("--kill-at must be between 0 and 1")
    started = time.monotonic()
    rounds: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="raymail-resume-"))
    keep = False
    ray_tmp = Path(tempfile.mkdtemp(prefix="rmresume-", dir="/tmp"))  # short: socket paths
    try:
        recipients = write_recipients(work / "recipients.parquet", args.recipients)
        env = raymail_env(ray_tmp)
        for i in range(args.repeat):
            folder = work / f"round-{i}"
            try:
                result = one_round(i, args, recipients, folder, env)
            except Exception:
                keep = True  # its logs say why
                raise
            rounds.append(result)
            log(
                f"round {i}: first send after {result['seconds_to_first_send']} s "
                f"(fresh run {result['fresh_seconds_to_first_send']} s), resent "
                f"{result['resent']} of {result['remaining_before_resume']} remaining, "
                f"only the rest: {result['sent_only_the_rest']}"
            )
            if result["sent_only_the_rest"] and result["within_15_s"]:
                shutil.rmtree(folder, ignore_errors=True)
            else:  # keep its run directory, capture and logs to look at
                result["folder"] = str(folder)
                keep = True
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
        if keep:
            log(f"kept {work} (a round fell short)")
        else:
            shutil.rmtree(work, ignore_errors=True)
    summary = {
        "benchmark": "resume",
        "recipients": args.recipients,
        "kill_at": args.kill_at,
        "delivery_servers": args.servers,
        "concurrency": args.concurrency,
        "sink_latency_ms": args.latency_ms,
        "rounds": len(rounds),
        "seconds_to_first_send": _median([r["seconds_to_first_send"] for r in rounds]),
        "max_seconds_to_first_send": max(
            (r["seconds_to_first_send"] or float("inf") for r in rounds), default=None
        ),
        "fresh_seconds_to_first_send": _median([r["fresh_seconds_to_first_send"] for r in rounds]),
        "resume_vs_fresh_first_send": _median([r["resume_vs_fresh_first_send"] for r in rounds]),
        "resume_total_s": _median([r["resume_total_s"] for r in rounds]),
        "remaining_before_resume": sum(r["remaining_before_resume"] for r in rounds),
        "resent": sum(r["resent"] for r in rounds),
        "in_doubt_before_resume": sum(r["in_doubt_before_resume"] for r in rounds),
        "resent_also_before": sum(r["resent_also_before"] for r in rounds),
        "missed": sum(r["missed"] for r in rounds),
        "sent_only_the_rest": all(r["sent_only_the_rest"] for r in rounds),
        "within_15_s": all(r["within_15_s"] for r in rounds),
        "target_first_send_s": TARGET_FIRST_SEND_S,
        "per_round": rounds,
        "elapsed_s": round(time.monotonic() - started, 1),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    text = json.dumps(summary, indent=2, default=str)
    if args.json_out:
        args.json_out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0 if summary["sent_only_the_rest"] and summary["within_15_s"] else 1


if __name__ == "__main__":
    sys.exit(main())
