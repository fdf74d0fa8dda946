"""One queued campaign run, as a process of its own: ``python -m raymail.queue.runner ID``.

The scheduler starts one of these per due entry (the seed's "sender process"). It first
checks whether the entry ran before (step 140 of seed 002): a run directory that exists is
resumed, so nobody accepted is sent again; otherwise the campaign starts fresh. Either way
it is an ordinary run through the public ``run_campaign`` / ``resume_campaign``.

A process per run, not a thread in the scheduler, so that pausing or cancelling a running
campaign can stop it (SIGTERM unwinds the driver as ``ray job stop`` does: the ledger's
buffer is written, delivery servers stop) and one campaign's crash never takes the
scheduler or another campaign with it.

Exit codes: 0 the run is complete; 4 the run waits for deferred recipients (deferral queue:
the scheduler queues the entry again, due when they are); 3 another driver holds the run
directory (an orphan of a killed scheduler still sending; the scheduler tries again later);
1 anything else.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from types import FrameType

from raymail.errors import RaymailError, RunLockedError

EXIT_COMPLETE = 0
EXIT_FAILED = 1
EXIT_STOPPED = 2
EXIT_LOCKED = 3
EXIT_WAITING = 4


def _unwind_on_sigterm() -> None:
    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)


def run_entry(entry_id: str, queue_url: str | None) -> int:
    """Run or resume one entry's campaign; the exit code says how it ended."""
    from raymail.driver.campaign import resume_campaign, run_campaign
    from raymail.queue.store import CampaignQueue
    from raymail.run.rundir import RunDir

    entry = CampaignQueue(queue_url).get(entry_id)
    run_dir = RunDir(entry.run_dir)
    try:
        if run_dir.exists():
            report = resume_campaign(run_dir.path, live_progress=False)
        else:
            report = run_campaign(entry.spec(), run_dir.path, live_progress=False)
    except RunLockedError as exc:
        print(f"raymail: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except KeyboardInterrupt:
        print("raymail: stopped; the scheduler resumes it when it is due again", file=sys.stderr)
        return EXIT_STOPPED
    except RaymailError as exc:
        print(f"raymail: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(report.model_dump(mode="json", exclude={"domains"})))
    if report.status == "waiting":
        return EXIT_WAITING
    return EXIT_COMPLETE if report.status == "complete" else EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("entry", help="the queue entry id")
    parser.add_argument("--queue-url", default=None, help="default: $RAYMAIL_QUEUE_URL")
    args = parser.parse_args(argv)
    _unwind_on_sigterm()
    return run_entry(args.entry, args.queue_url)


if __name__ == "__main__":
    sys.exit(main())
