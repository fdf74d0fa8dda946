"""Registers every command and sub-app on the top-level app."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach all commands; each module owns one noun."""
    from raymail.cli import (
        archive,
        dkim,
        events,
        followups,
        lists,
        queue,
        returns,
        routing,
        run,
        sink,
        suppression,
        web,
    )

    archive.register(app)
    dkim.register(app)
    events.register(app)
    followups.register(app)
    queue.register(app)
    returns.register(app)
    routing.register(app)
    run.register(app)
    sink.register(app)
    suppression.register(app)
    web.register(app)
    lists.register(app)
