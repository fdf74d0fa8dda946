"""``raymail archive``: tracking data and ledgers to object storage, and their storage classes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from raymail.cli.output import clean_errors, console, print_json

archive_app = typer.Typer(
    name="archive",
    help="Archive events and ledgers to S3 by the spec's criteria; move them between tiers.",
    no_args_is_help=True,
)

SpecArgument = Annotated[Path, typer.Argument(help="Campaign spec with an 'archive' section.")]
RootOption = Annotated[
    Path | None,
    typer.Option("--root", help="Events dataset folder (default $RAYMAIL_HOME/events)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def register(app: typer.Typer) -> None:
    """Add the ``archive`` sub-app to the top-level app."""
    app.add_typer(archive_app, name="archive")


def _root(root: Path | None) -> Path:
    from raymail.tracking.events import events_root

    return root or events_root()


def _print_moves(moves: list[object], json_output: bool) -> None:
    rows = [m.__dict__ for m in moves]
    if json_output:
        print_json(rows)
        return
    for row in rows:
        print(f"{row['path']}: {row['old']} -> {row['new']} ({row['status']}; {row['why']})")
    if not rows:
        print("no object to move")


@archive_app.command("run")
@clean_errors
def run_(
    spec: SpecArgument,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="The campaign's run directory (its ledger).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Archive now, whatever the criteria say.")
    ] = False,
    root: RootOption = None,
    json_output: JsonOption = False,
) -> None:
    """Archive what the criteria select (verified, then dropped locally), then apply tiers."""
    from raymail.spec import load_spec
    from raymail.tracking.archive import archive_campaign, archive_settings_of
    from raymail.tracking.tiers import apply_tier_rules

    campaign = load_spec(spec)
    settings = archive_settings_of(campaign.archive, str(spec))
    result = archive_campaign(
        campaign.campaign, settings, root=_root(root), run_dir=run_dir, s3=campaign.s3,
        force=force,
    )  # fmt: skip
    moves = apply_tier_rules(campaign.campaign, settings, root=_root(root), s3=campaign.s3)
    if json_output:
        print_json({"archive": result.as_dict(), "moves": [m.__dict__ for m in moves]})
        return
    why = "; ".join(result.reasons) or "no criterion holds"
    print(
        f"{campaign.campaign}: {result.events_files} events files ({result.rows} rows, "
        f"{result.bytes} bytes) and {result.ledger_files} ledger files archived ({why})"
    )
    _print_moves(list(moves), False)


@archive_app.command("tier")
@clean_errors
def tier_(
    campaign: Annotated[str, typer.Argument(help="Campaign id.")],
    to: Annotated[str, typer.Option("--to", help="Storage class, e.g. STANDARD_IA, GLACIER_IR.")],
    root: RootOption = None,
    json_output: JsonOption = False,
) -> None:
    """Move every archived object of a campaign to another storage class now."""
    from raymail.tracking.tiers import set_tier

    _print_moves(list(set_tier(campaign, to.upper(), root=_root(root))), json_output)


@archive_app.command("tiers")
@clean_errors
def tiers_(spec: SpecArgument, root: RootOption = None, json_output: JsonOption = False) -> None:
    """Apply the spec's tier rules (unread for N days: colder; read again: warmer)."""
    from raymail.spec import load_spec
    from raymail.tracking.archive import archive_settings_of
    from raymail.tracking.tiers import apply_tier_rules

    campaign = load_spec(spec)
    settings = archive_settings_of(campaign.archive, str(spec))
    moves = apply_tier_rules(campaign.campaign, settings, root=_root(root), s3=campaign.s3)
    _print_moves(list(moves), json_output)


@archive_app.command("show")
@clean_errors
def show_(
    campaign: Annotated[str | None, typer.Argument(help="Campaign id (default: all).")] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Ask the store for each object's class too.")
    ] = False,
    root: RootOption = None,
    json_output: JsonOption = False,
) -> None:
    """Each archived object: where it is, its rows, checksum, storage class and last read."""
    from raymail.tracking.catalog import Catalog
    from raymail.tracking.tiers import check_classes

    objects = sorted(Catalog(_root(root)).objects(campaign).values(), key=lambda o: o.path)
    differ = check_classes(campaign, root=_root(root)) if check else []
    if json_output:
        print_json({"objects": [o.__dict__ for o in objects], "differ": differ})
        return
    table = Table(title=f"{len(objects)} archived objects")
    for name in ("campaign", "kind", "path", "rows", "bytes", "class", "last read", "url"):
        table.add_column(name)
    for o in objects:
        klass = o.storage_class + (" (restoring)" if o.restoring else "")
        table.add_row(o.campaign, o.kind, o.path, str(o.rows), str(o.size), klass,
                      o.last_read or "never", o.url)  # fmt: skip
    console.print(table)
    for path, recorded, actual in differ:
        print(f"{path}: recorded {recorded}, the store says {actual}")
    if check and not differ:
        print("every recorded storage class matches the store")
