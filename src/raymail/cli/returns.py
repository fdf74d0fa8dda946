"""``raymail returns``: receive, import, classify and report returned mail from the shell."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from raymail.cli.output import clean_errors, console, print_json
from raymail.errors import ReturnsError

if TYPE_CHECKING:
    from raymail.returns.config import ReturnsConfig
    from raymail.returns.report import ReturnsReport

returns_app = typer.Typer(
    name="returns",
    help="Process returned mail: bounces, complaints, auto-replies, replies.",
    no_args_is_help=True,
)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Returns config YAML (settings, runs, campaigns)."),
]
CampaignOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--campaign",
        "-C",
        help="A campaign spec, run directory or folder of run directories whose returns "
        "are ours (repeatable); settings come from its 'returns' section.",
    ),
]


def register(app: typer.Typer) -> None:
    """Add the ``returns`` sub-app to the top-level app."""
    app.add_typer(returns_app, name="returns")


def load_config(config: Path | None, campaigns: list[Path] | None) -> ReturnsConfig:
    """The returns config the options describe (defaults under $RAYMAIL_HOME)."""
    from raymail.returns.config import resolve_config

    return resolve_config(config, list(campaigns or []))


@returns_app.command("classify")
@clean_errors
def classify(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Message files, directories, Maildirs or mbox files."),
    ],
    details: Annotated[
        bool, typer.Option("--details", help="Add notes and per-recipient verdicts.")
    ] = False,
) -> None:
    """Print one JSON object per message (JSON Lines): category, reason, recipients, ..."""
    from raymail.cli.fast import write_verdicts  # lazy: keeps --help fast

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ReturnsError(f"no such file or directory: {', '.join(missing)}")
    write_verdicts(paths, details, sys.stdout)


@returns_app.command("serve")
@clean_errors
def serve(
    config: ConfigOption = None,
    campaign: CampaignOption = None,
    listen: Annotated[
        str | None, typer.Option("--listen", help="host:port; default: settings.listen.")
    ] = None,
) -> None:
    """Run the returns server (SMTP for the return domain) until Ctrl-C."""
    from raymail.hostport import split_host_port
    from raymail.returns.runner import serve_returns
    from raymail.returns.server import ReturnsServer

    loaded = load_config(config, campaign)
    host: str | None = None
    port: int | None = None
    if listen is not None:
        try:
            host, port = split_host_port(listen, listen=True)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--listen") from None

    def ready(server: ReturnsServer) -> None:
        domains = ", ".join(sorted(server.registry.domains)) or "none yet"
        print(f"raymail returns listening on {server.address} for {domains} (Ctrl-C to stop)")
        sys.stdout.flush()

    stopped = serve_returns(loaded, host=host, port=port, on_ready=ready)
    stats = stopped.stats
    print(f"raymail returns stopped: accepted={stats.accepted} processed={stats.processed}")


@returns_app.command("import")
@clean_errors
def import_(
    paths: Annotated[
        list[Path],
        typer.Argument(help="Maildirs, mbox files, .eml files or folders; a run directory "
                       "imports its ledger's rejections."),
    ],
    config: ConfigOption = None,
    campaign: CampaignOption = None,
) -> None:  # fmt: skip
    """Take returned mail (and runs' delivery rejections) into the archive and events."""
    from raymail.returns.importer import ImportResult, import_messages
    from raymail.returns.ledger_import import import_ledger
    from raymail.returns.process import ReturnsProcessor
    from raymail.returns.store import ReturnsStore
    from raymail.run.rundir import MANIFEST

    run_dirs = [p for p in paths if (p / MANIFEST).exists()]
    mail = [p for p in paths if p not in run_dirs]
    loaded = load_config(config, [*(campaign or []), *run_dirs])
    store = ReturnsStore(loaded.settings)
    processor = ReturnsProcessor(store, loaded.registry())
    try:
        result = import_messages(mail, processor) if mail else ImportResult()
        summary = result.as_dict()
        for run_dir in run_dirs:
            flushed = import_ledger(run_dir, processor)
            summary["events"] += flushed.events
            summary["suppressed"] += len(flushed.suppressed)
            summary.setdefault("ledger_runs", []).append(str(run_dir))
    finally:
        store.close()
    print_json(summary)


@returns_app.command("report")
@clean_errors
def report(
    config: ConfigOption = None,
    campaign: CampaignOption = None,
    only: Annotated[
        str | None, typer.Option("--only-campaign", help="Only this campaign id's returns.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Summarise the returns by category, reason and domain."""
    from raymail.returns.report import returns_report
    from raymail.returns.store import ReturnsStore

    result = returns_report(ReturnsStore(load_config(config, campaign).settings), campaign=only)
    if json_output:
        print_json(result)
    else:
        _print_report(result)


def _print_report(result: ReturnsReport) -> None:
    from rich.table import Table

    summary = Table(title=f"returns in {result['home']}")
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    for key in ("events", "messages", "ledger_rejections", "suppressed", "outbox_waiting",
                "outbox_parked", "rejects"):  # fmt: skip
        summary.add_row(key, str(result[key]))
    console.print(summary)
    reasons = Table(title="by category and reason")
    for col in ("category", "reason", "count"):
        reasons.add_column(col, justify="right" if col == "count" else "left")
    for row in result["by_reason"]:
        reasons.add_row(row["category"], row["reason"], str(row["count"]))
    console.print(reasons)
    domains = Table(title="by domain (largest 20)")
    domains.add_column("domain")
    domains.add_column("categories")
    for domain, counts in result["by_domain"].items():
        domains.add_row(domain, ", ".join(f"{k} {v}" for k, v in counts.items()))
    console.print(domains)


@returns_app.command("reclassify")
@clean_errors
def reclassify(
    config: ConfigOption = None,
    campaign: CampaignOption = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Record changed verdicts as new events.")
    ] = False,
) -> None:
    """Run the classifier over the whole archive again; print what changed (JSON)."""
    from raymail.returns.process import ReturnsProcessor
    from raymail.returns.reclassify import reclassify as run
    from raymail.returns.store import ReturnsStore

    loaded = load_config(config, campaign)
    store = ReturnsStore(loaded.settings)
    try:
        result = run(ReturnsProcessor(store, loaded.registry()), apply=apply)
    finally:
        store.close()
    print_json(result.as_dict())


@returns_app.command("forward")
@clean_errors
def forward(config: ConfigOption = None, campaign: CampaignOption = None) -> None:
    """Try every message in the forward outbox now (parked ones too); print the outcome."""
    from raymail.returns.forward import Forwarder, Outbox

    settings = load_config(config, campaign).settings
    outbox = Outbox(settings.returns_dir / "outbox")
    result = asyncio.run(Forwarder(outbox, settings).run_due(include_parked=True))
    print_json(result.as_dict())
