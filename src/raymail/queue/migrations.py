"""The queue's schema, as numbered migrations applied in order, once each.

One schema for SQLite and PostgreSQL: times are Unix seconds (DOUBLE PRECISION), counts
and specs JSON text. ``{serial}`` stands for the dialect's auto-increment key. A migration
is applied inside one transaction together with its row in ``schema_version``, so a crash
leaves the schema at one version or the next, never between; two processes migrating at
once run one after the other (the transaction's write lock) and the second finds nothing
to do.
"""

from __future__ import annotations

import time
from typing import Final

from raymail.queue.db import Database, Transaction

MIGRATIONS: Final[tuple[tuple[int, str, tuple[str, ...]], ...]] = (
    (
        1,
        "campaign entries, leases, status events, webhook outbox",
        (
            """CREATE TABLE entries (
                id TEXT PRIMARY KEY,
                campaign TEXT NOT NULL,
                schedule_group TEXT NOT NULL,
                spec TEXT NOT NULL,
                spec_path TEXT,
                priority BIGINT NOT NULL,
                due_at DOUBLE PRECISION NOT NULL,
                timezone TEXT,
                status TEXT NOT NULL,
                run_dir TEXT NOT NULL,
                starts BIGINT NOT NULL DEFAULT 0,
                counts TEXT,
                last_error TEXT,
                created_at DOUBLE PRECISION NOT NULL,
                updated_at DOUBLE PRECISION NOT NULL,
                started_at DOUBLE PRECISION,
                finished_at DOUBLE PRECISION
            )""",
            "CREATE INDEX entries_due ON entries (status, due_at)",
            "CREATE INDEX entries_campaign ON entries (campaign)",
            """CREATE TABLE leases (
                entry_id TEXT PRIMARY KEY,
                holder TEXT NOT NULL,
                taken_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL
            )""",
            """CREATE TABLE status_events (
                id {serial},
                entry_id TEXT NOT NULL,
                at DOUBLE PRECISION NOT NULL,
                status TEXT NOT NULL,
                counts TEXT,
                detail TEXT
            )""",
            "CREATE INDEX status_events_entry ON status_events (entry_id, id)",
            """CREATE TABLE webhook_outbox (
                id {serial},
                event_id BIGINT NOT NULL,
                entry_id TEXT NOT NULL,
                url TEXT NOT NULL,
                body TEXT NOT NULL,
                attempts BIGINT NOT NULL DEFAULT 0,
                next_at DOUBLE PRECISION NOT NULL,
                delivered_at DOUBLE PRECISION,
                parked BIGINT NOT NULL DEFAULT 0,
                last_error TEXT
            )""",
            "CREATE INDEX webhook_outbox_due ON webhook_outbox (delivered_at, parked, next_at)",
        ),
    ),
)

LATEST: Final = MIGRATIONS[-1][0]


def schema_version(db: Database) -> int:
    """The version the database is at (0: empty)."""
    with db.transaction() as tx:
        _ensure_version_table(tx)
        return _current(tx)


def migrate(db: Database) -> int:
    """Bring the database to the latest version; returns the version reached."""
    for version, _what, statements in MIGRATIONS:
        with db.transaction() as tx:
            _ensure_version_table(tx)
            if _current(tx) >= version:
                continue
            for statement in statements:
                tx.execute(statement.replace("{serial}", db.serial_key))
            tx.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                (version, time.time()),
            )
    return LATEST


_PG_MIGRATION_LOCK: Final = 0x7261_796D  # an advisory lock key: "raym"


def _ensure_version_table(tx: Transaction) -> None:
    if tx.db.dialect == "postgresql":  # SQLite's BEGIN IMMEDIATE already serialises this
        tx.query("SELECT pg_advisory_xact_lock(?)", (_PG_MIGRATION_LOCK,))
    tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        "version BIGINT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
    )


def _current(tx: Transaction) -> int:
    rows = tx.query("SELECT MAX(version) FROM schema_version")
    return int(rows[0][0] or 0) if rows else 0
