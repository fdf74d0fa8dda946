"""``raymail web serve``: the web service (Ray Serve) in the foreground until Ctrl-C."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from raymail.cli.output import clean_errors, console

web_app = typer.Typer(name="web", help="The web service: unsubscribe, subscribe, tracking.")

SpecOption = Annotated[
    Path, typer.Option("--spec", help="Campaign spec with a 'web' section (settings, lists).")
]
RunsOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--runs", help="Run directories, or folders of them (default: runs/ next to the spec)."
    ),
]


def register(app: typer.Typer) -> None:
    """Add the ``web`` sub-app to the top-level app."""
    app.add_typer(web_app, name="web")


@web_app.command("serve")
@clean_errors
def serve(
    spec: SpecOption,
    runs: RunsOption = None,
    host: Annotated[str, typer.Option(help="Address Serve's proxy listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port Serve's proxy listens on.")] = 8000,
    haproxy: Annotated[
        bool,
        typer.Option(
            "--haproxy",
            help="Serve's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1) for the local Ray it "
            "starts: several times the rate of the Python proxy; opens stats ports 8404 and "
            "9101 on all interfaces. On a cluster, set the variable on every node instead.",
        ),
    ] = False,
) -> None:
    """Start local Ray (or join RAY_ADDRESS) and serve until interrupted."""
    import os

    import ray

    from raymail.errors import WebError
    from raymail.web.serve import config_from_paths, run_local, shutdown, wait_forever

    config = config_from_paths(spec, runs)
    if haproxy:
        if os.environ.get("RAY_ADDRESS"):
            raise WebError(
                "--haproxy applies to a local Ray; on a cluster set "
                "RAY_SERVE_ENABLE_HA_PROXY=1 on every node before ray start"
            )
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"])
    url = run_local(config, host=host, port=port)
    console.print(f"raymail web: serving {config.spec.campaign} at {url} (Ctrl-C stops)")
    try:
        wait_forever()
    except KeyboardInterrupt:
        shutdown()
