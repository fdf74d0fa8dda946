"""Ad-hoc SQL over the events with DuckDB: analytics nobody predefined (seed 000).

The events (local and archived, scanner bursts flagged) are handed to DuckDB as an Arrow
table under the name ``events``; any SQL DuckDB understands runs over it. Bot and proxy hits
are in the table with ``bot = true`` (add ``WHERE NOT bot`` to leave them out), so a
question about the proxies themselves can be asked too. The time column is ``at``, a DuckDB
keyword: write it ``"at"`` (``date_trunc('hour', "at")``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import duckdb
import polars as pl

from raymail.errors import QueryError
from raymail.spec import S3Settings
from raymail.tracking.dataset import load_events
from raymail.tracking.events import events_root

VIEW = "events"


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


_BARE_AT = re.compile(r'(?<!["\w])at(?!["\w])', re.IGNORECASE)


def _hint(sql: str, exc: BaseException) -> str:
    """A pointer for the one trap of this schema: ``at`` is a DuckDB keyword."""
    if isinstance(exc, duckdb.ParserException) and _BARE_AT.search(sql):
        return ' (the time column must be quoted: "at" is a DuckDB keyword)'
    return ""


def query(
    sql: str,
    *,
    root: Path | None = None,
    campaigns: Iterable[str] | None = None,
    archive: bool = True,
    s3: S3Settings | None = None,
) -> pl.DataFrame:
    """Run ``sql`` over the ``events`` view; the result as a polars frame.

    A SQL error raises QueryError with DuckDB's one-line message (no traceback to read).
    """
    if not sql.strip():
        raise QueryError(
            "empty SQL: give a query such as SELECT kind, count(*) FROM events GROUP BY kind"
        )
    table = load_events(root or events_root(), campaigns=campaigns, archive=archive, s3=s3)
    with duckdb.connect(":memory:") as con:
        con.register(VIEW, table)
        try:
            relation = con.sql(sql)
            table = relation.to_arrow_table() if relation is not None else None
        except duckdb.Error as exc:
            raise QueryError(f"SQL error: {_one_line(exc)}{_hint(sql, exc)}") from None
    frame = pl.from_arrow(table) if table is not None else pl.DataFrame()
    assert isinstance(frame, pl.DataFrame)
    return frame
