"""``raymail lists``: subscriber lists (versions, history) and applying the change log."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from raymail.cli.output import clean_errors, console, print_json
from raymail.cli.web import RunsOption

lists_app = typer.Typer(
    name="lists", help="Subscriber lists and the web change log.", no_args_is_help=True
)

HomeOption = Annotated[
    Path | None, typer.Option("--home", help="Web home (default: the spec's, else $RAYMAIL_HOME).")
]
OptionalSpec = Annotated[
    Path | None, typer.Option("--spec", help="Campaign spec with a 'web' section.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def register(app: typer.Typer) -> None:
    """Add the ``lists`` sub-app to the top-level app."""
    app.add_typer(lists_app, name="lists")


def _home(home: Path | None, spec: Path | None) -> Path:
    if home is not None:
        return home
    if spec is not None:
        from raymail.web.serve import config_from_paths

        return config_from_paths(spec).home
    from raymail.spec import raymail_home

    return raymail_home()


@lists_app.command("show")
@clean_errors
def show(
    list_id: Annotated[str | None, typer.Argument(help="List id; without it, every list.")] = None,
    version: Annotated[int | None, typer.Option(help="A version (default: latest).")] = None,
    to: Annotated[
        Path | None,
        typer.Option("--to", help="Write the subscribed members as a recipient table (Parquet)."),
    ] = None,
    home: HomeOption = None,
    spec: OptionalSpec = None,
    json_output: JsonOption = False,
) -> None:
    """The lists, or one list's members (subscribed and unsubscribed)."""
    import pyarrow.parquet as pq

    from raymail.lists.store import ListStore

    store = ListStore(_home(home, spec))
    if list_id is None:
        rows = [
            {"list": n, "versions": len(store.versions(n)), "members": store.read(n).num_rows}
            for n in store.lists()
        ]
        if json_output:
            print_json({"lists": rows})
        else:
            for row in rows:
                console.print(
                    f"{row['list']}: {row['members']} members, {row['versions']} versions"
                )
        return
    members = store.read(list_id, version).to_pylist()
    if to is not None:
        recipients = store.recipients(list_id, version)
        pq.write_table(recipients, to)
        console.print(f"{recipients.num_rows} subscribed members written to {to}")
        return
    if json_output:
        print_json({"list": list_id, "members": members})
        return
    for member in members:
        console.print(f"{member['email']}\t{member['status']}\t{member['fields']}")
    console.print(f"{len(members)} members")


@lists_app.command("history")
@clean_errors
def history(
    list_id: Annotated[str, typer.Argument(help="List id.")],
    home: HomeOption = None,
    spec: OptionalSpec = None,
    json_output: JsonOption = False,
) -> None:
    """One line per version: when, how many added or changed, size."""
    import dataclasses

    from raymail.lists.store import ListStore

    entries = [dataclasses.asdict(v) for v in ListStore(_home(home, spec)).history(list_id)]
    if json_output:
        print_json({"list": list_id, "versions": entries})
        return
    for e in entries:
        console.print(
            f"v{e['version']}  {e['at']}  +{e['added']} ~{e['updated']}  "
            f"{e['members']} members ({e['changes']} changes)"
        )


@lists_app.command("apply")
@clean_errors
def apply(
    spec: Annotated[Path, typer.Option("--spec", help="Campaign spec with a 'web' section.")],
    runs: RunsOption = None,
    json_output: JsonOption = False,
) -> None:
    """Apply everything waiting in the change log now (and send queued confirmations)."""
    from raymail.web.serve import applier_for, config_from_paths

    applier = applier_for(config_from_paths(spec, runs))
    result = applier.apply_all()
    sent = asyncio.run(applier.send_mail())
    data = {**result.as_dict(), "mail_sent": sent}
    if json_output:
        print_json(data)
    else:
        console.print(" ".join(f"{k}={v}" for k, v in data.items()))
