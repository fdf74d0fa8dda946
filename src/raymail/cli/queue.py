"""``raymail schedule``, ``raymail queue ...`` and ``raymail scheduler ...``: thin wrappers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from raymail.cli.output import clean_errors, console, print_json

queue_app = typer.Typer(name="queue", help="The pending campaign queue.", no_args_is_help=True)
scheduler_app = typer.Typer(
    name="scheduler", help="The scheduler that runs due campaigns.", no_args_is_help=True
)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--queue-url",
        help="sqlite:///PATH or postgresql://...; default "
        "$RAYMAIL_QUEUE_URL, else $RAYMAIL_HOME/queue.sqlite.",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
NameOption = Annotated[str, typer.Option("--name", help="The scheduler actor's name.")]
_FOLLOW_POLL_S = 0.5


def register(app: typer.Typer) -> None:
    app.command("schedule")(schedule)
    app.add_typer(queue_app, name="queue")
    app.add_typer(scheduler_app, name="scheduler")


def _queue(url: str | None):  # type: ignore[no-untyped-def]
    from raymail.queue.store import CampaignQueue

    return CampaignQueue(url)


@clean_errors
def schedule(
    spec: Annotated[Path, typer.Argument(help="Campaign spec (YAML).")],
    at: Annotated[
        str | None,
        typer.Option("--at", help="When: 2026-12-03T09:00[+01:00], 09:00 (next), +15m."),
    ] = None,
    now: Annotated[bool, typer.Option("--now", help="Due at once (the default).")] = False,
    priority: Annotated[
        int, typer.Option("--priority", help="Lower goes first; 0 for transactional mail.")
    ] = 100,
    tz: Annotated[
        str, typer.Option("--tz", help="Zone of an --at without offset (IANA name).")
    ] = "UTC",
    recipient_zone: Annotated[
        bool,
        typer.Option(
            "--recipient-time-zone",
            help="--at is a wall-clock time in each recipient's `timezone` column (--tz "
            "for rows without one): one queue entry per zone.",
        ),
    ] = False,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Default: $RAYMAIL_HOME/runs/ENTRY.")
    ] = None,
    queue_url: UrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Put a campaign in the queue, to run now or at a given time."""
    from raymail.queue.schedule import schedule_campaign
    from raymail.spec import load_spec

    if now and at:
        raise typer.BadParameter("give --at or --now, not both", param_hint="--at")
    if recipient_zone and not at:
        raise typer.BadParameter("--recipient-time-zone needs --at", param_hint="--at")
    entries = schedule_campaign(
        _queue(queue_url),
        load_spec(spec),
        at=at,
        tz=tz,
        priority=priority,
        spec_path=str(spec.resolve()),
        run_dir=run_dir,
        per_recipient_zone=recipient_zone,
    )
    if json_output:
        print_json([e.as_dict() for e in entries])
        return
    for entry in entries:
        zone = f" ({entry.timezone})" if entry.timezone else ""
        console.print(
            f"queued {entry.id}: due {entry.as_dict()['due']}{zone}, priority {entry.priority}",
            highlight=False,
            soft_wrap=True,
        )


@queue_app.command("list")
@clean_errors
def list_(
    everything: Annotated[bool, typer.Option("--all", help="Also done and cancelled.")] = False,
    queue_url: UrlOption = None,
    json_output: JsonOption = False,
) -> None:
    """Entries still to run (or all of them)."""
    from raymail.queue.store import PAUSED, QUEUED, RUNNING

    entries = _queue(queue_url).entries(None if everything else [QUEUED, RUNNING, PAUSED])
    if json_output:
        print_json([e.as_dict() for e in entries])
        return
    for e in entries:
        done = e.counts.get("done", 0)
        total = e.counts.get("total", "?")
        console.print(
            f"{e.id}  {e.status:9}  due {e.as_dict()['due']}  priority {e.priority}  "
            f"{done}/{total} done",
            highlight=False,
            soft_wrap=True,
        )


@queue_app.command("show")
@clean_errors
def show(
    ref: Annotated[str, typer.Argument(help="Entry id, schedule group or campaign name.")],
    queue_url: UrlOption = None,
) -> None:
    """Everything the queue knows of an entry (JSON)."""
    print_json([e.as_dict() for e in _queue(queue_url).find(ref)])


def _change(ref: str, queue_url: str | None, action: str) -> None:
    queue = _queue(queue_url)
    for entry in queue.find(ref):
        changed = getattr(queue, action)(entry.id)
        console.print(f"{changed.id}: {changed.status}", highlight=False)


@queue_app.command("cancel")
@clean_errors
def cancel(
    ref: Annotated[str, typer.Argument(help="Entry id, schedule group or campaign name.")],
    queue_url: UrlOption = None,
) -> None:
    """Take entries off the queue (a running one is stopped)."""
    _change(ref, queue_url, "cancel")


@queue_app.command("pause")
@clean_errors
def pause(
    ref: Annotated[str, typer.Argument(help="Entry id, schedule group or campaign name.")],
    queue_url: UrlOption = None,
) -> None:
    """Hold entries (a running one stops and resumes on unpause)."""
    _change(ref, queue_url, "pause")


@queue_app.command("unpause")
@clean_errors
def unpause(
    ref: Annotated[str, typer.Argument(help="Entry id, schedule group or campaign name.")],
    queue_url: UrlOption = None,
) -> None:
    """Put paused entries back in the queue."""
    _change(ref, queue_url, "unpause")


@queue_app.command("status")
@clean_errors
def status(
    ref: Annotated[str, typer.Argument(help="Entry id, schedule group or campaign name.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing changes until all end.")
    ] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="Stop following after this many s.")
    ] = None,
    queue_url: UrlOption = None,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object a line.")] = False,
) -> None:
    """Status changes of a campaign, as they happen with --follow."""
    from raymail.queue.store import FINAL

    queue = _queue(queue_url)
    ids = [e.id for e in queue.find(ref)]
    last = 0
    ends = None if timeout is None else time.monotonic() + timeout
    while True:
        for event in queue.events(ids, after=last):
            last = event.id
            _print_event(event.as_dict(), json_output)
        if not follow or all(queue.get(i).status in FINAL for i in ids):
            return
        if ends is not None and time.monotonic() > ends:
            raise typer.Exit(1)
        time.sleep(_FOLLOW_POLL_S)


def _print_event(event: dict[str, object], json_output: bool) -> None:
    if json_output:
        import json

        print(json.dumps(event, sort_keys=True), flush=True)
        return
    counts = event["counts"] if isinstance(event["counts"], dict) else {}
    shown = " ".join(f"{k} {v}" for k, v in counts.items() if k != "complete")
    detail = f" ({event['detail']})" if event["detail"] else ""
    print(f"{event['at']} {event['entry']} {event['status']}{detail} {shown}".rstrip(), flush=True)


# -- the scheduler ---------------------------------------------------------------------------


@scheduler_app.command("run")
@clean_errors
def run(
    name: NameOption = "scheduler",
    lease_s: Annotated[float, typer.Option("--lease-s", help="Lease length.")] = 30.0,
    review_s: Annotated[float, typer.Option("--review-s", help="Time between reviews.")] = 2.0,
    max_running: Annotated[int, typer.Option("--max-running", help="Runs at once.")] = 4,
    duration: Annotated[
        float | None, typer.Option("--for", help="Stop after this many seconds.")
    ] = None,
    queue_url: UrlOption = None,
) -> None:
    """Run a scheduler in the foreground (Ctrl-C stops it; its runs resume later)."""
    import os

    from raymail.queue.scheduler import Scheduler

    address = os.environ.get("RAY_ADDRESS")
    if not address:  # runs share one local Ray, started here, instead of one each
        import ray

        from raymail.runtime import ensure_ray

        ensure_ray()
        address = ray.get_runtime_context().gcs_address
    scheduler = Scheduler(
        queue_url,
        name=name,
        lease_s=lease_s,
        review_s=review_s,
        max_running=max_running,
        ray_address=address,
    )
    console.print(
        f"raymail: scheduler {scheduler.holder} on {scheduler.queue.db.describe()}",
        highlight=False,
        soft_wrap=True,
    )
    try:
        scheduler.run(max_s=duration)
    except KeyboardInterrupt:
        scheduler.shutdown()


@scheduler_app.command("start")
@clean_errors
def start(
    name: NameOption = "raymail-scheduler",
    lease_s: Annotated[float, typer.Option("--lease-s", help="Lease length.")] = 30.0,
    max_running: Annotated[int, typer.Option("--max-running", help="Runs at once.")] = 4,
    queue_url: UrlOption = None,
) -> None:
    """Start the scheduler as a detached Ray actor on the cluster at RAY_ADDRESS."""
    import os

    import ray

    from raymail.errors import QueueError
    from raymail.queue.actor import start_scheduler
    from raymail.queue.db import QUEUE_URL_ENV, default_url
    from raymail.spec import raymail_home

    if not os.environ.get("RAY_ADDRESS"):
        raise QueueError(
            "scheduler start needs a running cluster (RAY_ADDRESS); without one use "
            "'raymail scheduler run' in the foreground"
        )
    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    env = {QUEUE_URL_ENV: queue_url or default_url(), "RAYMAIL_HOME": str(raymail_home())}
    handle = start_scheduler(
        name, queue_url or default_url(), env, lease_s=lease_s, max_running=max_running
    )
    print_json(ray.get(handle.status.remote()))


@scheduler_app.command("stop")
@clean_errors
def stop(name: NameOption = "raymail-scheduler") -> None:
    """Stop the detached scheduler (its runs stop and resume under the next one)."""
    import os

    import ray

    from raymail.queue.actor import stop_scheduler

    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=False)
    stop_scheduler(name)
    console.print(f"raymail: scheduler {name} stopped", highlight=False)


@scheduler_app.command("status")
@clean_errors
def scheduler_status(name: NameOption = "raymail-scheduler") -> None:
    """What the detached scheduler has started and finished (JSON)."""
    import os

    import ray

    from raymail.queue.actor import find_scheduler

    ray.init(address=os.environ.get("RAY_ADDRESS", "auto"), log_to_driver=False)
    print_json(ray.get(find_scheduler(name).status.remote(), timeout=60))
