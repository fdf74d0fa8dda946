"""``raymail suppression``: see and edit the list of addresses no campaign sends to."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raymail.cli.output import clean_errors, console, print_json
from raymail.cli.returns import CampaignOption, ConfigOption, load_config

suppression_app = typer.Typer(
    name="suppression",
    help="The suppression list: addresses no campaign sends to.",
    no_args_is_help=True,
)

PathOption = Annotated[
    Path | None,
    typer.Option("--path", help="The suppression list file (overrides the settings)."),
]


def register(app: typer.Typer) -> None:
    """Add the ``suppression`` sub-app to the top-level app."""
    app.add_typer(suppression_app, name="suppression")


def _list_path(path: Path | None, config: Path | None, campaign: list[Path] | None) -> Path:
    return path if path is not None else load_config(config, campaign).settings.suppression_file


@suppression_app.command("list")
@clean_errors
def list_(
    path: PathOption = None,
    config: ConfigOption = None,
    campaign: CampaignOption = None,
    everyone: Annotated[
        bool, typer.Option("--all", help="Also addresses that were removed from the list.")
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the suppressed addresses with why and when."""
    from rich.table import Table

    from raymail.returns.suppression import SuppressionList

    target = _list_path(path, config, campaign)
    suppression = SuppressionList(target)
    frame = suppression.read() if everyone else suppression.active()
    if json_output:
        print_json({"path": str(target), "addresses": frame.to_dicts()})
        return
    table = Table(title=f"{target} ({frame.height} addresses)")
    columns = ("email", "suppressed", "category", "detail", "campaign", "changed_at")
    for col in columns:
        table.add_column(col)
    for row in frame.iter_rows(named=True):
        table.add_row(*(str(row[c] if row[c] is not None else "") for c in columns))
    console.print(table)


@suppression_app.command("add")
@clean_errors
def add(
    emails: Annotated[list[str], typer.Argument(help="Addresses to suppress.")],
    detail: Annotated[str, typer.Option("--detail", help="Why (kept with the entry).")] = "",
    path: PathOption = None,
    config: ConfigOption = None,
    campaign: CampaignOption = None,
) -> None:
    """Suppress addresses by hand."""
    from raymail.returns.suppression import SuppressionList

    target = _list_path(path, config, campaign)
    added = SuppressionList(target).add(emails, detail=detail)
    print_json({"path": str(target), "added": added, "already": len(set(emails)) - added})


@suppression_app.command("remove")
@clean_errors
def remove(
    emails: Annotated[list[str], typer.Argument(help="Addresses to take off the list.")],
    path: PathOption = None,
    config: ConfigOption = None,
    campaign: CampaignOption = None,
) -> None:
    """Take addresses off the list (returns that arrive later count again)."""
    from raymail.returns.suppression import SuppressionList

    target = _list_path(path, config, campaign)
    removed = SuppressionList(target).remove(emails)
    print_json({"path": str(target), "removed": removed, "not_listed": len(set(emails)) - removed})
