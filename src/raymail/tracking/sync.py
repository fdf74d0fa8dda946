"""The returns server's events and the runs' ledgers, brought into the events dataset.

Why derived parts rather than a second writer in the returns server: the returns events are
re-classified (newer rows supersede older ones) and compacted, and a ledger grows while a
run goes on. A sync therefore *derives* the dataset's rows from the whole current source
and rewrites one file per (source, campaign, day), ``sync-<source>-<key>.parquet``,
atomically: running it twice, after a re-classification or after a compaction gives the
same rows, never a duplicate, and the returns code and its tests stay as they are.

Mapping (``kind``; everything else in ``detail`` as JSON):

- returns: bounces (hard, soft, blocked, content) -> ``bounce``; complaints ->
  ``complaint``; remove requests -> ``unsubscribe``; human replies -> ``reply``;
  auto-replies and challenge-responses -> ``reply`` flagged ``bot`` (kept, excluded from
  analytics by default). Rows the returns importer took from a ledger (its source
  ``ledger``) are left to the ledger sync, so a rejection is counted once.
- ledger: each recipient's final attempt: accepted -> ``delivered``, failed -> ``bounce``.

A partition already archived (in the catalog) is not rewritten: archived days are frozen.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import polars as pl

from raymail.errors import TrackingError
from raymail.returns import reasons
from raymail.returns.events import EVENT_SCHEMA as RETURNS_SCHEMA
from raymail.returns.events import current_events
from raymail.returns.parts import read_parts, write_table_atomic
from raymail.run.ledger import final_outcomes, read_outcomes
from raymail.run.rundir import MANIFEST, OUTCOMES
from raymail.status import ACCEPTED, FAILED
from raymail.tracking.catalog import Catalog
from raymail.tracking.events import CAMPAIGN_PATTERN, TRACKING_SCHEMA

_RETURNS_KIND: Final[Mapping[str, tuple[str, str | None]]] = {
    reasons.HARD_BOUNCE_ADDRESS: ("bounce", None),
    reasons.HARD_BOUNCE_DOMAIN: ("bounce", None),
    reasons.MAILBOX_FULL: ("bounce", None),
    reasons.TRANSIENT: ("bounce", None),
    reasons.BLOCKED: ("bounce", None),
    reasons.CONTENT_REJECTED: ("bounce", None),
    reasons.COMPLAINT: ("complaint", None),
    reasons.REMOVE_REQUEST: ("unsubscribe", None),
    reasons.HUMAN_REPLY: ("reply", None),
    reasons.AUTO_REPLY: ("reply", "auto_reply"),
    reasons.CHALLENGE_RESPONSE: ("reply", "challenge_response"),
}
_LEDGER_KIND: Final = {ACCEPTED: "delivered", FAILED: "bounce"}
# Left in RUN_DIR/outcomes when the ledger went to the archive (see tracking.archive).
ARCHIVED_MARKER: Final = "ARCHIVED.json"


def source_key(path: Path) -> str:
    """A short stable id of a source folder (its resolved path)."""
    return hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:10]


def _shaped(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with every dataset column, in the schema's order and types."""
    empty = pl.from_arrow(TRACKING_SCHEMA.empty_table())
    assert isinstance(empty, pl.DataFrame)
    missing = [
        pl.lit(None, dtype=empty.schema[c]).alias(c)
        for c in empty.columns
        if c not in frame.columns
    ]
    return frame.with_columns(missing).select(
        [pl.col(c).cast(empty.schema[c]) for c in empty.columns]
    )


def returns_frame(events_dir: Path) -> pl.DataFrame:
    """Dataset rows for the returns events in ``events_dir`` (latest classification)."""
    frame = current_events(read_parts(events_dir, RETURNS_SCHEMA)).filter(
        pl.col("campaign").is_not_null()
        & pl.col("recipient").is_not_null()
        & (pl.col("source") != "ledger")
        & pl.col("category").is_in(list(_RETURNS_KIND))
    )
    kinds = {c: k for c, (k, _) in _RETURNS_KIND.items()}
    bots = {c: b for c, (_, b) in _RETURNS_KIND.items() if b}
    detail = ("event_id", "category", "reason", "status", "smtp_code", "source")
    return _shaped(
        frame.select(
            "campaign",
            pl.col("time").alias("at"),
            pl.col("category").replace_strict(kinds, return_dtype=pl.String).alias("kind"),
            pl.col("recipient").str.to_lowercase(),
            pl.lit("returns").alias("source"),
            pl.col("category").is_in(list(bots)).alias("bot"),
            pl.col("category")
            .replace_strict(bots, default=None, return_dtype=pl.String)
            .alias("bot_reason"),
            pl.struct(list(detail)).struct.json_encode().alias("detail"),
        )
    )


def ledger_frame(run_dir: Path) -> pl.DataFrame:
    """Dataset rows for a run's ledger: each recipient's delivery or rejection."""
    if not (run_dir / MANIFEST).exists():
        raise TrackingError(f"{run_dir}: not a run directory (no {MANIFEST})")
    final = final_outcomes(read_outcomes(run_dir)).filter(
        pl.col("status").is_in(list(_LEDGER_KIND))
    )
    response = pl.when(pl.col("status") == FAILED).then(pl.col("response").str.slice(0, 200))
    detail = ["smtp_code", "enhanced_status", "server", "mx_host", "attempt"]
    return _shaped(
        final.select(
            "campaign",
            pl.col("finished_at").alias("at"),
            pl.col("status").replace_strict(_LEDGER_KIND, return_dtype=pl.String).alias("kind"),
            pl.col("email").str.to_lowercase().alias("recipient"),
            "row",
            pl.lit("ledger").alias("source"),
            pl.lit(False).alias("bot"),
            "message_id",
            pl.struct([*detail, response.alias("response")]).struct.json_encode().alias("detail"),
        )
    )


def write_derived(root: Path, name: str, frame: pl.DataFrame) -> int:
    """Replace the derived file ``name`` in every partition by ``frame``'s rows; return them.

    Partitions that no longer get rows lose their file; archived partitions are left alone.
    """
    archived = set(Catalog(root).objects())
    bad = frame.filter(
        pl.col("campaign").is_null()
        | ~pl.col("campaign").str.contains(CAMPAIGN_PATTERN)
        | pl.col("at").is_null()
    )
    if bad.height:
        raise TrackingError(f"{name}: {bad.height} rows without a usable campaign id or time")
    written: set[Path] = set()
    total = 0
    dated = frame.with_columns(pl.col("at").dt.date().cast(pl.String).alias("__day"))
    for (campaign, day), group in dated.sort("at", "recipient", "kind").group_by(
        "campaign", "__day", maintain_order=True
    ):
        relative = Path(f"campaign={campaign}") / f"date={day}" / name
        if str(relative) in archived:
            continue
        table = group.drop("__day").to_arrow().cast(TRACKING_SCHEMA)
        write_table_atomic(table, root / relative)
        written.add(relative)
        total += group.height
    for stale in root.glob(f"campaign=*/date=*/{name}"):
        relative = stale.relative_to(root)
        if relative not in written and str(relative) not in archived:
            stale.unlink()
    return total


def sync_returns(root: Path, returns_dir: Path) -> int:
    """Derive the dataset's returns rows from a returns home's ``events`` folder."""
    events_dir = returns_dir / "events"
    name = f"sync-returns-{source_key(events_dir)}.parquet"
    return write_derived(root, name, returns_frame(events_dir))


def sync_ledger(root: Path, run_dir: Path) -> int:
    """Derive the dataset's delivery rows from a run directory's ledger.

    A ledger already archived is not read again: its rows are in the archived events.
    """
    if (run_dir / OUTCOMES / ARCHIVED_MARKER).exists():
        return 0
    return write_derived(root, f"sync-ledger-{source_key(run_dir)}.parquet", ledger_frame(run_dir))
