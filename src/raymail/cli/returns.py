"""``raymail returns``: classify returned mail (bounces, complaints, replies) from the shell."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from raymail.cli.output import clean_errors
from raymail.errors import ReturnsError

returns_app = typer.Typer(
    name="returns",
    help="Process returned mail: bounces, complaints, auto-replies, replies.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    """Add the ``returns`` sub-app to the top-level app."""
    app.add_typer(returns_app, name="returns")


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
    from raymail.returns import iter_classified  # lazy: keeps --help fast

    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ReturnsError(f"no such file or directory: {', '.join(missing)}")
    out = sys.stdout
    for verdict in iter_classified(paths):
        row = verdict.as_dict()
        if not details:
            row.pop("per_recipient", None)
            row.pop("notes", None)
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
    out.flush()
