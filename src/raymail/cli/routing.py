"""``raymail routing``: the learned routing table, probes, and why a run routed as it did."""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from raymail.cli.output import clean_errors, console, print_json

routing_app = typer.Typer(
    name="routing",
    help="Learned routing: the table of (server, domain) estimates, probes, explanations.",
    no_args_is_help=True,
)

TableOption = Annotated[
    Path | None,
    typer.Option("--table", help="Routing table directory (default $RAYMAIL_HOME/routing)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
DomainOption = Annotated[str | None, typer.Option("--domain", help="Only this domain.")]


def register(app: typer.Typer) -> None:
    """Add the ``routing`` sub-app to the top-level app."""
    app.add_typer(routing_app, name="routing")


@routing_app.command("show")
@clean_errors
def show_(
    domain: DomainOption = None,
    table: TableOption = None,
    half_life_days: Annotated[
        float, typer.Option("--half-life-days", help="Decay evidence by this half-life.")
    ] = 7.0,
    json_output: JsonOption = False,
) -> None:
    """The routing table as the next run will see it: estimates and marks per server."""
    from raymail.routing import show
    from raymail.routing.table import RoutingTable

    frame = show(table, domain=domain, half_life_days=half_life_days)
    where = str(RoutingTable(table).path)
    if json_output:
        print_json({"table": where, "rows": frame.to_dicts()})
        return
    columns = ("domain", "server", "mx_host", "mark", "ms_per_recipient", "rtt_ms", "hops",
               "deferral_rate", "failure_rate", "samples", "updated_at", "probe_error")  # fmt: skip
    _print(f"{where} ({frame.height} rows)", columns, frame.to_dicts())


@routing_app.command("probe")
@clean_errors
def probe_(
    spec: Annotated[Path, typer.Argument(help="Campaign spec: servers, source addresses, MX.")],
    domain: Annotated[
        list[str] | None,
        typer.Option("--domain", help="Domain to probe (repeatable); default: the spec's list."),
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="Probe from this process, not from Ray actors.")
    ] = False,
    json_output: JsonOption = False,
) -> None:
    """Measure RTT and hop count from each delivery server to the MX hosts, now."""
    from raymail.routing import probe
    from raymail.spec import load_spec

    frame = probe(load_spec(spec), domain, local=local)
    if json_output:
        print_json({"probes": frame.to_dicts()})
        return
    columns = ("server", "source_address", "domain", "mx_host", "rtt_ms", "hops", "error")
    _print(f"probes ({frame.height} rows)", columns, frame.to_dicts())


@routing_app.command("explain")
@clean_errors
def explain_(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.")],
    domain: DomainOption = None,
    json_output: JsonOption = False,
) -> None:
    """Why each server got what it got: estimates and plan against what happened."""
    from raymail.routing import explain

    frame = explain(run_dir, domain=domain)
    if json_output:
        print_json({"run_dir": str(run_dir), "rows": frame.to_dicts()})
        return
    columns = ("domain", "server", "recipients", "share", "expected_ms", "measured_ms", "why")
    _print(f"routing of {run_dir}", columns, frame.to_dicts())


def _print(title: str, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(c)) for c in columns))
    console.print(table)


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)
