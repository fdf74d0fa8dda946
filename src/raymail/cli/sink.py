"""``raymail sink``: run the SMTP sink in the foreground until Ctrl-C."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from raymail.cli.output import clean_errors

if TYPE_CHECKING:
    from raymail.sink import SinkServer


def register(app: typer.Typer) -> None:
    """Add the ``sink`` command to the top-level app."""
    app.command("sink")(sink)


@clean_errors
def sink(
    host: Annotated[str, typer.Option(help="Loopback address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on; 0 picks a free one.")] = 2525,
    config: Annotated[
        Path | None, typer.Option("--config", help="Sink config YAML (faults, latency).")
    ] = None,
    capture: Annotated[
        Path | None,
        typer.Option("--capture", help="Directory to append accepted messages to (JSON Lines)."),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="PEM certificate; enables STARTTLS.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="PEM private key for --tls-cert.")
    ] = None,
    stats: Annotated[
        Path | None, typer.Option("--stats", help="Write the counters as JSON here on exit.")
    ] = None,
    topology: Annotated[
        Path | None,
        typer.Option(
            "--topology",
            help="Topology YAML: latency, rates and faults per (client address, domain).",
        ),
    ] = None,
) -> None:
    """Run an SMTP sink that accepts mail for any domain (loopback only)."""
    from raymail.sink import SinkConfig, load_config, load_topology, serve  # lazy: fast --help

    def ready(server: SinkServer) -> None:
        print(f"raymail sink listening on {server.address} (Ctrl-C to stop)", flush=True)

    settings = load_config(config) if config is not None else SinkConfig()
    if topology is not None:
        settings = load_topology(topology).apply(settings)
    final = serve(
        settings,
        host=host,
        port=port,
        capture_dir=capture,
        tls_cert=tls_cert,
        tls_key=tls_key,
        stats_path=stats,
        on_ready=ready,
    )
    print("raymail sink stopped: " + ", ".join(f"{k}={v}" for k, v in final.to_dict().items()))
