"""Ray job entry point: `ray job submit --working-dir . -- python jobs/send_campaign.py SPEC`.

Runs inside the job's driver process on the cluster (RAY_ADDRESS is set by Ray), sends the
campaign, prints progress lines suited to `ray job logs`, and ends with the report as JSON.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType

try:
    import raymail  # noqa: F401  (installed on the cluster: see cluster.yaml setup_commands)
except ImportError:  # running from a source checkout uploaded as the job's working dir
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from raymail.driver.campaign import resume_campaign, run_campaign
from raymail.errors import RaymailError
from raymail.spec import load_spec


def _unwind_on_sigterm() -> None:
    """`ray job stop` sends SIGTERM (then SIGKILL a few seconds later): unwind as on
    Ctrl-C, so the ledger's buffer is written and delivery servers stop before their next
    message. A resume finds less in doubt; it is correct either way."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("spec", help="campaign spec (YAML)")
    parser.add_argument(
        "--run-dir",
        help="run directory (default: runs/CAMPAIGN-TIMESTAMP next to the spec)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir if it exists (after `ray job stop` or a crash)",
    )
    parser.add_argument("--in-doubt", choices=["resend", "skip"], help="policy on resume")
    args = parser.parse_args(argv)
    _unwind_on_sigterm()
    try:
        spec = load_spec(args.spec)
        run_dir = (
            Path(args.run_dir)
            if args.run_dir
            else (Path(args.spec).resolve().parent / "runs" / f"{spec.campaign}-{int(time.time())}")
        )
        if args.resume and (run_dir / "run.json").exists():
            print(f"raymail: resuming campaign {spec.campaign} in {run_dir}", flush=True)
            report = resume_campaign(run_dir, in_doubt=args.in_doubt, live_progress=False)
        else:
            print(f"raymail: campaign {spec.campaign} -> {run_dir}", flush=True)
            report = run_campaign(spec, run_dir, live_progress=False)
    except RaymailError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "raymail: stopped; submit again with --resume and the same --run-dir to continue",
            file=sys.stderr,
            flush=True,
        )
        return 130
    if report.note:
        print(f"raymail: {report.note}", flush=True)
    if report.status == "waiting":  # the deferral queue: only retries due later are left
        print(
            f"raymail: waiting: {report.waiting} deferred recipient(s), next attempt due at "
            f"{report.next_due_at}; submit again with --resume and the same --run-dir then",
            flush=True,
        )
    print(json.dumps(report.as_json(), indent=2, sort_keys=True, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
