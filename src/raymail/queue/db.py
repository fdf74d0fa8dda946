"""One database connection, SQLite or PostgreSQL, behind the same few calls.

The queue's SQL is written once, with ``?`` placeholders and types both engines accept
(TEXT, BIGINT, DOUBLE PRECISION); the few differences (auto-increment keys, how a write
transaction starts) live here. SQLite is the default (a file in ``$RAYMAIL_HOME``, nothing
to start); ``RAYMAIL_QUEUE_URL=postgresql://...`` selects PostgreSQL (psycopg 3) for a
cluster, where schedulers on several nodes share one queue.

Each thread gets its own connection: the scheduler's campaign watchers and its webhook
sender run in threads, and neither driver allows one connection to be shared freely.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from raymail.errors import QueueError
from raymail.spec import raymail_home

QUEUE_URL_ENV = "RAYMAIL_QUEUE_URL"
SQLITE_FILE = "queue.sqlite"
_BUSY_TIMEOUT_MS = 30_000  # writers of one SQLite file wait for each other this long

Row = tuple[Any, ...]


def default_url() -> str:
    """``$RAYMAIL_QUEUE_URL``, else a SQLite file in ``$RAYMAIL_HOME``."""
    configured = os.environ.get(QUEUE_URL_ENV)
    if configured:
        return configured
    return f"sqlite:///{raymail_home() / SQLITE_FILE}"


class Database:
    """A queue database named by URL: ``sqlite:///PATH`` or ``postgresql://...``."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or default_url()
        if self.url.startswith("sqlite:///"):
            self.dialect = "sqlite"
            self.path: Path | None = Path(self.url.removeprefix("sqlite:///")).expanduser()
        elif self.url.startswith(("postgresql://", "postgres://")):
            self.dialect = "postgresql"
            self.path = None
        else:
            raise QueueError(
                f"queue URL {_redact(self.url)!r}: use sqlite:///PATH or postgresql://..."
            )
        self._local = threading.local()

    @property
    def serial_key(self) -> str:
        """The column type of an auto-increment primary key in this dialect."""
        return (
            "INTEGER PRIMARY KEY AUTOINCREMENT"
            if self.dialect == "sqlite"
            else "BIGSERIAL PRIMARY KEY"
        )

    def describe(self) -> str:
        """The URL without its password (for messages)."""
        return _redact(self.url)

    # -- connections -----------------------------------------------------------------------

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _connect(self) -> Any:
        if self.dialect == "sqlite":
            assert self.path is not None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                timeout=_BUSY_TIMEOUT_MS / 1000,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")  # readers never block the writer
            conn.execute("PRAGMA synchronous = FULL")
            return conn
        try:
            import psycopg
        except ImportError:
            raise QueueError(
                "a postgresql:// queue needs psycopg 3: pip install 'psycopg[binary]'"
            ) from None
        try:
            return psycopg.connect(self.url, autocommit=True)
        except psycopg.Error as exc:
            raise QueueError(f"queue {self.describe()}: cannot connect: {exc}") from None

    def close(self) -> None:
        """Close this thread's connection (others close when their thread's object goes)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- statements ------------------------------------------------------------------------

    def _sql(self, sql: str) -> str:
        return sql if self.dialect == "sqlite" else sql.replace("?", "%s")

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A write transaction: SQLite takes its write lock at BEGIN (``IMMEDIATE``), so two
        processes deciding on the same rows run one after the other; PostgreSQL locks the
        rows each statement writes."""
        conn = self._connection()
        if self.dialect == "sqlite":
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield Transaction(self, conn.cursor())
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return
        with conn.transaction(), conn.cursor() as cursor:
            yield Transaction(self, cursor)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """Rows of one read (autocommit)."""
        cursor = self._connection().cursor()
        try:
            cursor.execute(self._sql(sql), tuple(params))
            return [tuple(r) for r in cursor.fetchall()]
        finally:
            cursor.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One write in a transaction of its own; the rows it changed."""
        with self.transaction() as tx:
            return tx.execute(sql, params)


class Transaction:
    """Statements inside one :meth:`Database.transaction`."""

    def __init__(self, db: Database, cursor: Any) -> None:
        self.db = db
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cursor.execute(self.db._sql(sql), tuple(params))
        return int(self._cursor.rowcount)

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cursor.execute(self.db._sql(sql), tuple(params))
        return [tuple(r) for r in self._cursor.fetchall()]


def _redact(url: str) -> str:
    """``postgresql://user:secret@host/db`` -> ``postgresql://user:***@host/db``."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
