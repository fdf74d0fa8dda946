"""``raymail followups``: further campaigns to the recipients the tracking events select."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from raymail.cli.output import clean_errors, print_json

followups_app = typer.Typer(
    name="followups",
    help="Follow-up campaigns from the spec's rules (not_opened, clicked, ...).",
    no_args_is_help=True,
)

SpecArgument = Annotated[Path, typer.Argument(help="The parent campaign's spec (followups:).")]


def register(app: typer.Typer) -> None:
    """Add the ``followups`` sub-app to the top-level app."""
    app.add_typer(followups_app, name="followups")


@followups_app.command("run")
@clean_errors
def run_(
    spec: SpecArgument,
    run_dir: Annotated[Path, typer.Option("--run-dir", help="The parent campaign's run.")],
    rule: Annotated[str | None, typer.Option("--rule", help="Only this rule (its id).")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count who would be selected; record nothing.")
    ] = False,
    at: Annotated[
        datetime | None, typer.Option("--at", help="Evaluate as if now were this (UTC).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Evaluate the rules: resume unfinished follow-ups, then select and send new ones."""
    from raymail.spec import load_spec
    from raymail.tracking.followups import run_followups

    now = at.replace(tzinfo=at.tzinfo or UTC) if at else None
    results = run_followups(load_spec(spec), run_dir, rule=rule, now=now, dry_run=dry_run)
    if json_output:
        print_json([r.__dict__ for r in results])
        return
    for r in results:
        how = "resumed" if r.resumed else "selected"
        sent = f", accepted {r.report.accepted}" if r.report else ""
        print(f"{r.rule} {r.batch}: {how} {r.selected}{sent} {r.run_dir}".rstrip())
    if not results:
        print("nobody new to follow up")


@followups_app.command("show")
@clean_errors
def show_(
    spec: SpecArgument,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Each rule's batches: how many were selected and how their runs stand."""
    from raymail.spec import load_spec
    from raymail.tracking.followups import rule_status

    rows = rule_status(load_spec(spec))
    if json_output:
        print_json(rows)
        return
    for row in rows:
        print(f"{row['rule']} {row['batch'] or '-'}: {row['selected']} selected, {row['status']}")
