"""The ``raymail`` command: one typer sub-app per noun, each thin (parse, call, print)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="raymail",
    help="Send very large email campaigns from a Ray cluster.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    """Attach the sub-apps; imported lazily so `raymail --help` stays fast."""
    from raymail.cli import commands

    commands.register(app)


def main() -> None:
    """Console-script entry point."""
    _register()
    app()
