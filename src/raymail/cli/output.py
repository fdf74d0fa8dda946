"""Printing helpers shared by the commands: JSON, report tables, clean errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from raymail.errors import RaymailError

if TYPE_CHECKING:
    from raymail.run.report import RunReport

P = ParamSpec("P")
R = TypeVar("R")

console = Console()


def clean_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn raymail's own errors into a one-line message and exit code 2, not a traceback."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except RaymailError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise typer.Exit(2) from None

    return wrapper


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def alternates_line(report: RunReport) -> str | None:
    """'alternates: moved to alternate 1: N, ...; accepted at an alternate: K' when the
    run moved anyone on (spec on_failure), else None."""
    if not report.alternates:
        return None
    hops = sorted(report.alternates.items(), key=lambda kv: int(kv[0]))
    moved = ", ".join(f"alternate {hop}: {n}" for hop, n in hops)
    accepted = report.accepted_at_alternate
    return f"alternates: moved to {moved}; accepted at an alternate: {accepted}"


def waiting_line(report: RunReport) -> str | None:
    """'waiting: N deferred recipient(s), next attempt due at T ...' for a run that ended
    its process waiting for later retries (retry.schedule), else None."""
    if report.next_due_at is None:
        return None
    return (
        f"waiting: {report.waiting} deferred recipient(s), next attempt due at "
        f"{report.next_due_at} (then: raymail resume {report.run_dir})"
    )


def print_report(report: RunReport) -> None:
    """A readable summary table, then the busiest domains."""
    summary = Table(title=f"campaign {report.campaign} ({report.status})")
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    shown = report.as_json()
    for key in (
        "total",
        "accepted",
        "deferred",
        "failed",
        "in_doubt",
        "expired",
        "suppressed",
        "not_attempted",
        "rejected_input",
        "attempts",
        "elapsed_s",
        "messages_per_s",
    ):
        summary.add_row(key, f"{shown[key]}")
    console.print(summary)
    for line in (waiting_line(report), alternates_line(report)):
        if line is not None:
            console.print(line, highlight=False, soft_wrap=True)
    if report.domains:
        table = Table(title="by domain (largest 15)")
        for col in ("domain", "accepted", "deferred", "failed"):
            table.add_column(col, justify="left" if col == "domain" else "right")
        ranked = sorted(report.domains.items(), key=lambda kv: -sum(kv[1].values()))[:15]
        for domain, counts in ranked:
            table.add_row(
                domain,
                str(counts.get("accepted", 0)),
                str(counts.get("deferred", 0)),
                str(counts.get("failed", 0)),
            )
        console.print(table)
    if report.sink:
        console.print(
            f"sink captured {report.sink.captured_deliveries} deliveries to "
            f"{report.sink.distinct_recipients} distinct recipients; "
            f"{report.sink.recipients_more_than_once} received more than one copy"
        )
