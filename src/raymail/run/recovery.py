"""What a run has already done, from the ledger and the delivery journals.

Used when resuming a killed run and when a delivery server dies mid-portion: the ledger
holds the outcomes that reached the driver; the journals hold what the delivery servers
did that had not reached it yet. Together they say, per recipient, whether to send again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from raymail.delivery.journal import STATUS_OF_STATE, journal_files, journal_states
from raymail.intake.alternates import with_hop_addresses
from raymail.run.ledger import final_outcomes, read_outcomes
from raymail.schema import ALTERNATES, OUTCOME_SCHEMA
from raymail.status import ACCEPTED, DEFERRED, EXPIRED, FAILED, IN_DOUBT

RECOVERED_RESPONSE = {
    ACCEPTED: "accepted (recovered from the delivery journal)",
    DEFERRED: "deferred (recovered from the delivery journal)",
    FAILED: "failed (recovered from the delivery journal)",
    EXPIRED: "expired (recovered from the delivery journal): retry.max_age passed",
    IN_DOUBT: "in doubt: the delivery server stopped between sending the message and "
    "reading the reply",
}


def recovered_outcomes(
    journal: pl.DataFrame, known: pl.DataFrame, recipients: pa.Table, campaign: str
) -> pa.Table:
    """Outcome rows for journal entries whose (row, attempt) the ledger does not hold."""
    if journal.height == 0:
        return OUTCOME_SCHEMA.empty_table()
    missing = journal.join(known.select(["row", "attempt"]), on=["row", "attempt"], how="anti")
    if missing.height == 0:
        return OUTCOME_SCHEMA.empty_table()
    known_columns = ["row", "email", ALTERNATES, "alternate_of"]
    people = pl.from_arrow(
        recipients.select([c for c in known_columns if c in recipients.schema.names])
    )
    assert isinstance(people, pl.DataFrame)
    at = datetime.now(UTC)
    frame = (
        with_hop_addresses(missing.join(people, on="row", how="inner"))  # a hop's address
        .with_columns(
            pl.col("state").replace_strict(STATUS_OF_STATE, return_dtype=pl.String).alias("status"),
        )
        .with_columns(
            pl.col("status").replace_strict(RECOVERED_RESPONSE, return_dtype=pl.String)
            .alias("response"),
            pl.lit(campaign).alias("campaign"),
            pl.lit(None, pl.Int32).alias("smtp_code"),
            pl.lit(None, pl.String).alias("enhanced_status"),
            pl.lit(None, pl.String).alias("source_address"),
            pl.lit(None, pl.String).alias("mx_host"),
            pl.lit(None, pl.String).alias("message_id"),
            pl.lit(at).dt.replace_time_zone("UTC").alias("started_at"),
            pl.lit(at).dt.replace_time_zone("UTC").alias("finished_at"),
        )
    )  # fmt: skip
    return frame.select(OUTCOME_SCHEMA.names).to_arrow().cast(OUTCOME_SCHEMA)


def run_state(run_dir: Path, recipients: Path, campaign: str) -> tuple[pa.Table, pl.DataFrame]:
    """(outcomes recovered from journals, final outcome per recipient including them).

    The final outcomes carry ``first_at``: when the recipient's first attempt started (the
    deferral queue's ``max_age`` counts from it).

    Reads only the ledger columns that decide a recipient's fate, and from the recipient
    list (``recipients``, a Parquet file) only the rows the journals name and the ledger
    lacks: resuming a run of millions needs no copy of the list in memory.
    """
    ledger = read_outcomes(run_dir, columns=_FATE)
    journal = journal_states(journal_files(run_dir))
    missing = journal.join(ledger.select(["row", "attempt"]), on=["row", "attempt"], how="anti")
    people = _rows_of(recipients, missing["row"].unique().to_list())
    recovered = recovered_outcomes(journal, ledger, people, campaign)
    if recovered.num_rows:
        extra = pl.from_arrow(recovered.select(_FATE))
        assert isinstance(extra, pl.DataFrame)
        ledger = pl.concat([ledger, extra], how="vertical_relaxed")
    first = ledger.group_by("row").agg(pl.col("started_at").min().alias("first_at"))
    return recovered, final_outcomes(ledger).join(first, on="row", how="left")


_FATE = ["row", "attempt", "portion", "status", "started_at", "finished_at"]


def _rows_of(recipients: Path, rows: list[int]) -> pa.Table:
    """``row``, ``email`` and ``domain`` (and ``alternates``) of the given rows of the list."""
    columns = ["row", "email", "domain"]
    if ALTERNATES in pq.read_schema(recipients).names:
        columns.append(ALTERNATES)
    if not rows:
        return pa.table(
            {
                c: pa.array([], pa.string() if c == ALTERNATES else OUTCOME_SCHEMA.field(c).type)
                for c in columns
            }
        )
    return pq.read_table(recipients, columns=columns, filters=[("row", "in", rows)])
