"""The suppression list: addresses no campaign sends to, and the driver's filter.

Stored as one Parquet file, rewritten atomically (temporary file, fsync, rename) on each
change. Parquet rather than DuckDB because the list is read by processes that run at the
same time as its writer: the campaign driver reads it when a run starts, the returns server
updates it as returns arrive, and ``raymail suppression add`` edits it from a shell. A
DuckDB database file admits one read-write process at a time, so the CLI would fail while
the server runs; a renamed Parquet file is always whole for readers, and writers take turns
through an ``flock`` on ``<file>.lock``. Changes come in batches (one per events flush),
so rewriting the file is cheap next to everything else (a million addresses: ~20 MB).

One row per address ever suppressed: ``suppressed`` false means it was removed by hand;
the rules then count only returns that arrived after ``changed_at``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from raymail._io import flocked
from raymail.errors import ReturnsError
from raymail.returns.parts import write_table_atomic
from raymail.schema import OUTCOME_SCHEMA
from raymail.spec import CampaignSpec
from raymail.status import SUPPRESSED

_TS = pa.timestamp("us", tz="UTC")

SUPPRESSION_SCHEMA: Final = pa.schema(
    [
        pa.field("email", pa.string()),  # lower-case
        pa.field("suppressed", pa.bool_()),
        pa.field("category", pa.string()),  # hard_bounce, soft_bounce, complaint, ... manual
        pa.field("detail", pa.string()),
        pa.field("campaign", pa.string()),  # the campaign whose return decided it
        pa.field("changed_at", _TS),
        pa.field("changed_by", pa.string()),  # rules, cli, ...
    ]
)
MANUAL: Final = "manual"


class SuppressionList:
    """The list at ``path``: read without a lock, changed under ``<path>.lock``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> pl.DataFrame:
        """Every row (suppressed or removed); an empty frame when the file does not exist."""
        if not self.path.exists():
            frame = pl.from_arrow(SUPPRESSION_SCHEMA.empty_table())
        else:
            try:
                frame = pl.read_parquet(self.path)
            except Exception as exc:  # any reader error means: the list cannot be trusted
                raise ReturnsError(
                    f"{self.path}: suppression list unreadable ({type(exc).__name__}: {exc}); "
                    "refusing to guess who is suppressed"
                ) from None
        assert isinstance(frame, pl.DataFrame)
        return frame

    def active(self) -> pl.DataFrame:
        """Rows of addresses currently suppressed."""
        return self.read().filter(pl.col("suppressed"))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with flocked(self.path.with_name(self.path.name + ".lock")):
            yield

    def upsert(self, changes: pl.DataFrame) -> None:
        """Replace (or add) the rows of the addresses in ``changes``."""
        if changes.height == 0:
            return
        changes = changes.select(SUPPRESSION_SCHEMA.names).unique("email", keep="last")
        with self._locked():
            current = self.read()
            merged = pl.concat(
                [current.join(changes.select("email"), on="email", how="anti"), changes],
                how="vertical_relaxed",
            ).sort("email")
            write_table_atomic(merged.to_arrow().cast(SUPPRESSION_SCHEMA), self.path)

    def add(self, emails: Iterable[str], *, detail: str = "", by: str = "cli") -> int:
        """Suppress addresses by hand; returns how many were not suppressed before."""
        wanted = sorted({e.strip().lower() for e in emails if e.strip()})
        before = set(self.active()["email"].to_list())
        new = [e for e in wanted if e not in before]
        self.upsert(_rows(new, True, MANUAL, detail, by))
        return len(new)

    def remove(self, emails: Iterable[str], *, by: str = "cli") -> int:
        """Un-suppress addresses; returns how many were suppressed."""
        wanted = {e.strip().lower() for e in emails if e.strip()}
        rows = self.active().filter(pl.col("email").is_in(sorted(wanted)))
        changed = rows.with_columns(
            pl.lit(False).alias("suppressed"),
            pl.lit(datetime.now(UTC)).dt.convert_time_zone("UTC").alias("changed_at"),
            pl.lit(by).alias("changed_by"),
        )
        self.upsert(changed)
        return changed.height


def _rows(emails: list[str], suppressed: bool, category: str, detail: str, by: str) -> pl.DataFrame:
    now = datetime.now(UTC)
    table = pa.table(
        {
            "email": emails,
            "suppressed": [suppressed] * len(emails),
            "category": [category] * len(emails),
            "detail": [detail] * len(emails),
            "campaign": [None] * len(emails),
            "changed_at": [now] * len(emails),
            "changed_by": [by] * len(emails),
        },
        schema=SUPPRESSION_SCHEMA,
    )
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def apply_suppression(table: pa.Table, spec: CampaignSpec) -> tuple[pa.Table, pa.Table]:
    """(rows to send, SUPPRESSED outcome rows for the others) of a normalised recipient table.

    Addresses compare lower-cased. Without a ``returns`` section in the spec no list is
    consulted. An unreadable list raises ReturnsError: sending to everyone would be worse.
    """
    if spec.returns is None or table.num_rows == 0:
        return table, OUTCOME_SCHEMA.empty_table()
    active = SuppressionList(spec.returns.suppression_file).active()
    if active.height == 0:
        return table, OUTCOME_SCHEMA.empty_table()
    lowered = pc.utf8_lower(table.column("email"))
    mask = pc.is_in(lowered, value_set=pa.array(active["email"].to_list(), pa.string()))
    mask = pc.fill_null(mask, False)
    if not pc.any(mask).as_py():
        return table, OUTCOME_SCHEMA.empty_table()
    return table.filter(pc.invert(mask)), _suppressed_outcomes(
        table.filter(mask), active, spec.campaign
    )


def _suppressed_outcomes(rows: pa.Table, active: pl.DataFrame, campaign: str) -> pa.Table:
    """Ledger rows for recipients never attempted because they are suppressed."""
    people = pl.from_arrow(rows.select(["row", "email", "domain"]))
    assert isinstance(people, pl.DataFrame)
    now = datetime.now(UTC)
    frame = (
        people.with_columns(pl.col("email").str.to_lowercase().alias("_key"))
        .join(active.select("email", "category", "detail").rename({"email": "_key"}),
              on="_key", how="left")
        .with_columns(
            pl.lit(campaign).alias("campaign"),
            pl.lit(SUPPRESSED).alias("status"),
            pl.lit(None, pl.Int32).alias("smtp_code"),
            pl.lit(None, pl.String).alias("enhanced_status"),
            pl.format("suppressed: {} ({})", pl.col("category"), pl.col("detail"))
            .alias("response"),
            pl.lit("suppression").alias("server"),
            pl.lit(None, pl.String).alias("source_address"),
            pl.lit(None, pl.String).alias("mx_host"),
            pl.lit(0, pl.Int32).alias("attempt"),
            pl.lit(None, pl.Int64).alias("portion"),
            pl.lit(None, pl.String).alias("message_id"),
            pl.lit(now).dt.convert_time_zone("UTC").alias("started_at"),
            pl.lit(now).dt.convert_time_zone("UTC").alias("finished_at"),
            pl.lit(0, pl.Int32).alias("hop"),
            pl.lit(None, pl.String).alias("alternate_of"),
        )
    )  # fmt: skip
    return frame.select(OUTCOME_SCHEMA.names).to_arrow().cast(OUTCOME_SCHEMA)
