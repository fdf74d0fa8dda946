"""``raymail events``: the tracking events dataset: ad-hoc SQL, a campaign summary, sync."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from raymail.cli.output import clean_errors, console, print_json

events_app = typer.Typer(
    name="events",
    help="Tracking events (opens, clicks, returns, deliveries): SQL, summaries, sync.",
    no_args_is_help=True,
)

RootOption = Annotated[
    Path | None,
    typer.Option("--root", help="Events dataset folder (default $RAYMAIL_HOME/events)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
LocalOption = Annotated[
    bool, typer.Option("--local-only", help="Leave archived (S3) events out of the query.")
]


def register(app: typer.Typer) -> None:
    """Add the ``events`` sub-app to the top-level app."""
    app.add_typer(events_app, name="events")


def _root(root: Path | None) -> Path:
    from raymail.tracking.events import events_root

    return root or events_root()


@events_app.command("query")
@clean_errors
def query_(
    sql: Annotated[str, typer.Argument(help="SQL over the view 'events' (DuckDB dialect).")],
    campaign: Annotated[
        list[str] | None, typer.Option("--campaign", help="Only these campaigns (faster).")
    ] = None,
    root: RootOption = None,
    local_only: LocalOption = False,
    json_output: JsonOption = False,
    csv_output: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
    limit: Annotated[int, typer.Option("--limit", help="Rows printed in the table.")] = 100,
) -> None:
    """Run any SQL over the events; e.g. SELECT kind, count(*) FROM events GROUP BY kind."""
    from raymail.tracking.sql import query

    frame = query(sql, root=_root(root), campaigns=campaign or None, archive=not local_only)
    if json_output:
        print_json(frame.to_dicts())
    elif csv_output:
        print(frame.write_csv(), end="")
    else:
        table = Table(title=f"{frame.height} rows")
        for name in frame.columns:
            table.add_column(name)
        for row in frame.head(limit).iter_rows():
            table.add_row(*("" if v is None else str(v) for v in row))
        console.print(table)


@events_app.command("summary")
@clean_errors
def summary_(
    campaign: Annotated[str, typer.Argument(help="Campaign id.")],
    include_bots: Annotated[
        bool, typer.Option("--include-bots", help="Count image-proxy and scanner hits too.")
    ] = False,
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Also draw the summary to this PNG file.")
    ] = None,
    top: Annotated[
        int, typer.Option("--top", help="Domains shown by name; the rest by MX host.")
    ] = 15,
    root: RootOption = None,
    local_only: LocalOption = False,
    json_output: JsonOption = False,
) -> None:
    """Opens, clicks, unique rates, by domain and by hour (bot and proxy hits left out)."""
    from raymail.tracking.plots import plot_summary
    from raymail.tracking.summary import campaign_summary

    summary = campaign_summary(
        campaign, root=_root(root), include_bots=include_bots, top=top, archive=not local_only
    )
    if plot is not None:
        plot_summary(summary, plot, top_domains=top)
    if json_output:
        print_json(summary)
        return
    head = Table(title=f"campaign {campaign}" + (" (bots included)" if include_bots else ""))
    head.add_column("measure")
    head.add_column("value", justify="right")
    for key in ("delivered", "opens", "unique_opens", "unique_open_rate", "clicks",
                "unique_clicks", "unique_click_rate", "click_to_open", "bounces", "complaints",
                "unsubscribes", "replies", "bot_hits_excluded"):  # fmt: skip
        head.add_row(key, "" if summary[key] is None else str(summary[key]))
    console.print(head)
    _rows("by domain", summary["by_domain"])
    _rows("by hour (UTC)", summary["by_hour"])
    _rows("links", summary["links"][:top])
    if plot is not None:
        console.print(f"plot written to {plot}")


def _rows(title: str, rows: list[dict[str, object]]) -> None:
    if not rows:
        return
    table = Table(title=title)
    for name in rows[0]:
        table.add_column(name)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    console.print(table)


@events_app.command("sync")
@clean_errors
def sync_(
    run_dir: Annotated[
        list[Path] | None, typer.Option("--run-dir", help="A run directory whose ledger to add.")
    ] = None,
    returns_home: Annotated[
        Path | None,
        typer.Option("--returns-home", help="Returns home (default $RAYMAIL_HOME) to add."),
    ] = None,
    no_returns: Annotated[
        bool, typer.Option("--no-returns", help="Do not add the returns server's events.")
    ] = False,
    root: RootOption = None,
) -> None:
    """Bring the returns server's events and run ledgers into the events dataset."""
    from raymail.spec import raymail_home
    from raymail.tracking.sync import sync_ledger, sync_returns

    dataset = _root(root)
    if not no_returns:
        home = returns_home or raymail_home()
        print(f"returns {home}: {sync_returns(dataset, home / 'returns')} rows")
    for folder in run_dir or []:
        print(f"ledger {folder}: {sync_ledger(dataset, folder)} rows")
