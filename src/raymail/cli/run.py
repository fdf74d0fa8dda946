"""Campaign commands: demo, send, report, status."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from raymail.cli.output import (
    alternates_line,
    clean_errors,
    console,
    print_json,
    print_report,
    waiting_line,
)
from raymail.status import InDoubtPolicy

if TYPE_CHECKING:
    from raymail.spec import CampaignSpec


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
    app.command("send")(send)
    app.command("resume")(resume)
    app.command("report")(report)
    app.command("status")(status)
    app.command("export")(export)


@clean_errors
def demo(
    recipients: Annotated[int, typer.Option(help="How many recipients to generate.")] = 20000,
    out: Annotated[Path, typer.Option(help="Folder for the list, capture and run.")] = Path(
        "raymail-demo"
    ),
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Generate recipients, start local Ray and an SMTP sink on loopback, send, report."""
    from raymail.demo import run_demo

    if (out / "run").exists():
        raise typer.BadParameter(
            f"{out}/run exists already; pass another --out", param_hint="--out"
        )
    report = run_demo(recipients, out)
    if json_output:
        print_json(report.as_json())
    else:
        print_report(report)
        console.print(f"run directory: {out / 'run'}")


@clean_errors
def send(
    spec: Annotated[Path, typer.Argument(help="Campaign spec (YAML).")],
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Where this run's state goes.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Send a campaign described by a spec file."""
    from raymail.driver.campaign import run_campaign
    from raymail.spec import load_spec

    loaded = load_spec(spec)
    result = run_campaign(loaded, run_dir)
    print_json(result.as_json()) if json_output else print_report(result)
    _archive_at_end(loaded, run_dir)


@clean_errors
def resume(
    run_dir: Annotated[Path, typer.Argument(help="The run directory of a stopped run.")],
    in_doubt: Annotated[
        InDoubtPolicy | None,
        typer.Option(
            "--in-doubt",
            help="Recipients whose message may have been delivered: resend (risk a "
            "duplicate) or skip (risk a miss). Default: the spec's choice (resend).",
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Continue a killed or stopped run: nobody accepted is sent again, nobody is skipped."""
    from raymail.driver.campaign import resume_campaign

    result = resume_campaign(run_dir, in_doubt=in_doubt)
    if result.note:
        console.print(f"raymail: {result.note}")
    print_json(result.as_json()) if json_output else print_report(result)
    from raymail.run.rundir import RunDir

    _archive_at_end(RunDir(run_dir).spec(), run_dir)


def _archive_at_end(spec: CampaignSpec, run_dir: Path) -> None:
    """``archive: {when_finished: true}``: the complete run goes to the archive now; a
    failure is a warning (the run itself succeeded; ``raymail archive run`` or the
    scheduler's next pass tries again)."""
    from raymail.errors import RaymailError
    from raymail.tracking.archive import archive_finished_run

    try:
        done = archive_finished_run(spec, run_dir)
    except (RaymailError, OSError) as exc:
        typer.echo(f"raymail: warning: the run is complete, its archive failed: {exc}", err=True)
        return
    if done is not None:
        typer.echo(
            f"raymail: archived {done.events_files} events files and {done.ledger_files} "
            f"ledger files of {spec.campaign} (when_finished)",
            err=True,
        )


@clean_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Summarise a run (finished, running or killed) from its run directory."""
    from raymail.run.report import build_report

    result = build_report(run_dir)
    print_json(result.as_json()) if json_output else print_report(result)


@clean_errors
def status(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
) -> None:
    """Where a run is: its stage and how far it got."""
    from raymail.run.report import build_report

    result = build_report(run_dir)
    console.print(
        f"{result.campaign}: {result.status} — {result.settled}/{result.total} settled "
        f"(accepted {result.accepted}, deferred {result.deferred}, "
        f"failed {result.failed}, in doubt {result.in_doubt}"
        + (f", expired {result.expired}" if result.expired else "")
        + f"); resumed {result.resumes} time(s)",
        soft_wrap=True,  # one line, whatever the width: scripts and logs read it
        highlight=False,
    )
    for line in (waiting_line(result), alternates_line(result)):
        if line is not None:
            console.print(f"  {line}", soft_wrap=True, highlight=False)
    from raymail.driver.progress import backoff_text

    for entry in result.backoff:
        console.print(f"  {backoff_text(entry)}", soft_wrap=True, highlight=False)


@clean_errors
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    to: Annotated[
        str | None,
        typer.Option("--to", help="Folder or s3:// prefix; default: the spec's `export`."),
    ] = None,
) -> None:
    """Copy a run's Parquet and JSON to its export destination (again, e.g. after a failure)."""
    from raymail.run.export import RunExport
    from raymail.run.rundir import RunDir

    spec = RunDir(run_dir).spec()
    dest = to or spec.export
    if not dest:
        raise typer.BadParameter("the spec has no `export`; pass --to", param_hint="--to")
    sent = RunExport(run_dir, dest, spec.s3).sync()
    console.print(f"raymail: {sent} file(s) copied to {dest}", highlight=False, soft_wrap=True)
