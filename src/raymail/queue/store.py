"""The pending campaign queue (the seed's "pending message queue"), in a real database.

An *entry* is one campaign run to start at a due time: its spec (copied in, so editing the
file later changes nothing queued), priority, status and run directory. A campaign sent
"at 9:00 in each recipient's time zone" is one *schedule group* of entries, one per zone.

Statuses: ``queued`` (waiting for its time) -> ``running`` (a scheduler holds its lease and
a driver sends) -> ``done`` (the run reached ``complete``: the seed's P699, after which the
message leaves the queue) or ``failed`` (the driver could not go on; the reason is kept).
``paused`` and ``cancelled`` are the user's; a paused entry goes back to ``queued`` on
``unpause`` and a stopped run then resumes where it stopped.

Exactly-once starts rest on the *lease*: a row per entry naming the scheduler that holds
it and when that expires, taken in a transaction only when absent or expired. A scheduler
renews its leases while their drivers run; a killed scheduler's leases expire and another
(or the same, restarted) takes them over and resumes the runs, whose run directories
(resume, the ``flock``) make sure nobody is sent twice.

One module (over 400 lines) because it is the one place that writes the queue's tables:
every status change and lease is a transaction here, so their rules can be read together.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from raymail.errors import QueueError
from raymail.queue.db import Database, Row, Transaction
from raymail.queue.migrations import migrate
from raymail.spec import CampaignSpec, parse_spec, raymail_home

QUEUED: Final = "queued"
PAUSED: Final = "paused"
RUNNING: Final = "running"
DONE: Final = "done"
FAILED: Final = "failed"
CANCELLED: Final = "cancelled"
FINAL: Final = frozenset({DONE, FAILED, CANCELLED})

_ENTRY_COLUMNS: Final = (
    "id, campaign, schedule_group, spec, spec_path, priority, due_at, timezone, status, "
    "run_dir, starts, counts, last_error, created_at, updated_at, started_at, finished_at"
)


@dataclass(frozen=True)
class Entry:
    """One queued campaign run, as the database holds it."""

    id: str
    campaign: str
    group: str
    spec_json: str
    spec_path: str | None
    priority: int
    due_at: float
    timezone: str | None
    status: str
    run_dir: str
    starts: int
    counts: dict[str, int]
    last_error: str | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None

    @classmethod
    def from_row(cls, row: Row) -> Entry:
        values = list(row)
        values[11] = json.loads(values[11]) if values[11] else {}
        return cls(*values)

    def spec(self) -> CampaignSpec:
        return parse_spec(json.loads(self.spec_json), f"queue entry {self.id}")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, times as ISO 8601 (UTC)."""
        return {
            "id": self.id,
            "campaign": self.campaign,
            "group": self.group,
            "priority": self.priority,
            "due": iso(self.due_at),
            "timezone": self.timezone,
            "status": self.status,
            "run_dir": self.run_dir,
            "starts": self.starts,
            "counts": self.counts,
            "last_error": self.last_error,
            "spec_path": self.spec_path,
            "created": iso(self.created_at),
            "started": iso(self.started_at),
            "finished": iso(self.finished_at),
        }


@dataclass(frozen=True)
class StatusEvent:
    """One change of an entry's status or of its message counts."""

    id: int
    entry_id: str
    at: float
    status: str
    counts: dict[str, int]
    detail: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "event": self.id,
            "entry": self.entry_id,
            "at": iso(self.at),
            "status": self.status,
            "counts": self.counts,
            "detail": self.detail,
        }


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def default_runs_root() -> Path:
    """Where scheduled runs get their run directories: ``$RAYMAIL_HOME/runs``."""
    return raymail_home() / "runs"


class CampaignQueue:
    """The queue's operations; opening it brings the schema to the latest version."""

    def __init__(self, url: str | None = None) -> None:
        self.db = Database(url)
        migrate(self.db)

    # -- the user's side ---------------------------------------------------------------------

    def schedule(
        self,
        spec: CampaignSpec,
        *,
        due_at: float,
        priority: int = 100,
        spec_path: str | None = None,
        run_dir: str | Path | None = None,
        timezone: str | None = None,
        group: str | None = None,
        part: int | None = None,
    ) -> Entry:
        """Queue one run of ``spec`` due at ``due_at`` (Unix seconds)."""
        group = group or new_group_id(spec.campaign)
        spec = spec.model_copy(update={"priority": int(priority)})  # the lanes read it
        entry_id = group if part is None else f"{group}.{part}"
        where = Path(run_dir) if run_dir else default_runs_root() / entry_id
        now = time.time()
        with self.db.transaction() as tx:
            tx.execute(
                f"INSERT INTO entries ({_ENTRY_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, NULL, NULL, ?, ?, NULL, NULL)",
                (
                    entry_id,
                    spec.campaign,
                    group,
                    spec.model_dump_json(),
                    spec_path,
                    int(priority),
                    float(due_at),
                    timezone,
                    QUEUED,
                    str(where),
                    now,
                    now,
                ),
            )
            self._record(tx, entry_id, QUEUED, {}, f"due {iso(due_at)}", spec)
        return self.get(entry_id)

    def get(self, entry_id: str) -> Entry:
        rows = self.db.query(f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE id = ?", (entry_id,))
        if not rows:
            raise QueueError(f"queue {self.db.describe()}: no entry {entry_id!r}")
        return Entry.from_row(rows[0])

    def find(self, ref: str) -> list[Entry]:
        """Entries an id, a schedule group or a campaign name refers to (in that order)."""
        for column in ("id", "schedule_group", "campaign"):
            rows = self.db.query(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE {column} = ? ORDER BY id", (ref,)
            )
            if rows:
                return [Entry.from_row(r) for r in rows]
        raise QueueError(f"queue {self.db.describe()}: no entry, group or campaign {ref!r}")

    def entries(self, statuses: list[str] | None = None) -> list[Entry]:
        """All entries (or those in ``statuses``), by due time then priority."""
        sql = f"SELECT {_ENTRY_COLUMNS} FROM entries"
        params: tuple[Any, ...] = ()
        if statuses:
            sql += f" WHERE status IN ({', '.join('?' for _ in statuses)})"
            params = tuple(statuses)
        rows = self.db.query(sql + " ORDER BY due_at, priority, id", params)
        return [Entry.from_row(r) for r in rows]

    def cancel(self, entry_id: str) -> Entry:
        """Take an entry off the queue; a running one is stopped by its scheduler."""
        return self._user_change(entry_id, CANCELLED, {QUEUED, PAUSED, RUNNING})

    def pause(self, entry_id: str) -> Entry:
        """Hold an entry; a running one is stopped by its scheduler and resumed on unpause."""
        return self._user_change(entry_id, PAUSED, {QUEUED, RUNNING})

    def unpause(self, entry_id: str) -> Entry:
        """Put a paused entry back in the queue (a stopped run resumes where it stopped)."""
        return self._user_change(entry_id, QUEUED, {PAUSED})

    def _user_change(self, entry_id: str, status: str, allowed: set[str]) -> Entry:
        with self.db.transaction() as tx:
            rows = tx.query("SELECT status, spec FROM entries WHERE id = ?", (entry_id,))
            if not rows:
                raise QueueError(f"queue {self.db.describe()}: no entry {entry_id!r}")
            current = str(rows[0][0])
            if current not in allowed:
                raise QueueError(
                    f"entry {entry_id} is {current}: cannot make it {status} "
                    f"(only when {' or '.join(sorted(allowed))})"
                )
            tx.execute(
                "UPDATE entries SET status = ?, updated_at = ? WHERE id = ?",
                (status, time.time(), entry_id),
            )
            spec = parse_spec(json.loads(rows[0][1]), entry_id)
            self._record(tx, entry_id, status, None, f"was {current}", spec)
        return self.get(entry_id)

    # -- the scheduler's side ----------------------------------------------------------------

    def due(self, now: float | None = None) -> list[Entry]:
        """Entries a scheduler should start or resume now: queued ones whose time has come,
        and running ones whose lease is gone (their scheduler was killed), by priority."""
        now = time.time() if now is None else now
        rows = self.db.query(
            f"SELECT {_ENTRY_COLUMNS} FROM entries e WHERE "
            "(e.status = ? AND e.due_at <= ?) OR (e.status = ? AND NOT EXISTS "
            "(SELECT 1 FROM leases l WHERE l.entry_id = e.id AND l.expires_at > ?)) "
            "ORDER BY e.priority, e.due_at, e.id",
            (QUEUED, now, RUNNING, now),
        )
        return [Entry.from_row(r) for r in rows]

    def next_due_at(self) -> float | None:
        """When the next queued entry falls due (None: nothing queued)."""
        rows = self.db.query("SELECT MIN(due_at) FROM entries WHERE status = ?", (QUEUED,))
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def take(self, entry_id: str, holder: str, ttl_s: float) -> Entry | None:
        """Take the entry's lease and mark it running, in one transaction; None when another
        scheduler holds a live lease or the entry is no longer startable."""
        now = time.time()
        with self.db.transaction() as tx:
            rows = tx.query("SELECT status, due_at FROM entries WHERE id = ?", (entry_id,))
            if not rows or not _startable(str(rows[0][0]), float(rows[0][1]), now):
                return None
            tx.execute(
                "INSERT INTO leases (entry_id, holder, taken_at, expires_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (entry_id) DO UPDATE SET holder = excluded.holder, "
                "taken_at = excluded.taken_at, expires_at = excluded.expires_at "
                "WHERE leases.expires_at <= ?",
                (entry_id, holder, now, now + ttl_s, now),
            )
            held = tx.query("SELECT holder, taken_at FROM leases WHERE entry_id = ?", (entry_id,))
            if not held or held[0][0] != holder or float(held[0][1]) != now:
                return None  # a live lease of another scheduler (or an older one of ours)
            tx.execute(
                "UPDATE entries SET status = ?, starts = starts + 1, updated_at = ?, "
                "started_at = COALESCE(started_at, ?) WHERE id = ?",
                (RUNNING, now, now, entry_id),
            )
        return self.get(entry_id)

    def renew(self, entry_id: str, holder: str, ttl_s: float) -> bool:
        """Extend a lease this holder has; False when it is not (any longer) ours."""
        now = time.time()
        changed = self.db.execute(
            "UPDATE leases SET expires_at = ? WHERE entry_id = ? AND holder = ? AND expires_at > ?",
            (now + ttl_s, entry_id, holder, now),
        )
        return changed > 0

    def release(self, entry_id: str, holder: str) -> None:
        self.db.execute("DELETE FROM leases WHERE entry_id = ? AND holder = ?", (entry_id, holder))

    def lease_holder(self, entry_id: str) -> tuple[str, float] | None:
        rows = self.db.query(
            "SELECT holder, expires_at FROM leases WHERE entry_id = ?", (entry_id,)
        )
        return (str(rows[0][0]), float(rows[0][1])) if rows else None

    def finish(
        self, entry_id: str, holder: str, status: str, counts: dict[str, int], detail: str | None
    ) -> bool:
        """Mark a run done or failed and drop its lease, if the lease is still ours."""
        now = time.time()
        with self.db.transaction() as tx:
            if not _holds(tx, entry_id, holder):
                return False
            changed = tx.execute(
                "UPDATE entries SET status = ?, counts = ?, last_error = ?, updated_at = ?, "
                "finished_at = ? WHERE id = ? AND status = ?",
                (
                    status,
                    json.dumps(counts),
                    detail if status == FAILED else None,
                    now,
                    now,
                    entry_id,
                    RUNNING,
                ),
            )
            tx.execute("DELETE FROM leases WHERE entry_id = ?", (entry_id,))
            if not changed:  # paused or cancelled meanwhile: the user's word stands
                return False
            spec = self._spec_of(tx, entry_id)
            self._record(tx, entry_id, status, counts, detail, spec)
        return True

    def wait_until(
        self, entry_id: str, holder: str, due_at: float, counts: dict[str, int], detail: str
    ) -> bool:
        """A run that waits for its deferred recipients: queued again, due when they are
        (its lease dropped), if the lease is still ours and the user changed nothing."""
        now = time.time()
        with self.db.transaction() as tx:
            if not _holds(tx, entry_id, holder):
                return False
            changed = tx.execute(
                "UPDATE entries SET status = ?, due_at = ?, counts = ?, updated_at = ? "
                "WHERE id = ? AND status = ?",
                (QUEUED, float(due_at), json.dumps(counts), now, entry_id, RUNNING),
            )
            tx.execute("DELETE FROM leases WHERE entry_id = ?", (entry_id,))
            if not changed:  # paused or cancelled meanwhile: the user's word stands
                return False
            self._record(tx, entry_id, QUEUED, counts, detail, self._spec_of(tx, entry_id))
        return True

    def progress(self, entry_id: str, counts: dict[str, int], detail: str | None = None) -> None:
        """Record changed message counts of a running entry (a status event)."""
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE entries SET counts = ?, updated_at = ? WHERE id = ?",
                (json.dumps(counts), time.time(), entry_id),
            )
            self._record(tx, entry_id, RUNNING, counts, detail, self._spec_of(tx, entry_id))

    def note_error(self, entry_id: str, error: str) -> None:
        self.db.execute(
            "UPDATE entries SET last_error = ?, updated_at = ? WHERE id = ?",
            (error, time.time(), entry_id),
        )

    # -- status events -----------------------------------------------------------------------

    def events(self, entry_ids: list[str], after: int = 0) -> list[StatusEvent]:
        """Status events of these entries with an id above ``after``, oldest first."""
        if not entry_ids:
            return []
        marks = ", ".join("?" for _ in entry_ids)
        rows = self.db.query(
            "SELECT id, entry_id, at, status, counts, detail FROM status_events "
            f"WHERE entry_id IN ({marks}) AND id > ? ORDER BY id",
            (*entry_ids, after),
        )
        return [
            StatusEvent(
                int(r[0]), str(r[1]), float(r[2]), str(r[3]), json.loads(r[4]) if r[4] else {}, r[5]
            )
            for r in rows
        ]

    def _record(
        self,
        tx: Transaction,
        entry_id: str,
        status: str,
        counts: dict[str, int] | None,
        detail: str | None,
        spec: CampaignSpec,
    ) -> None:
        """A status event, and its webhook delivery in the outbox, in the caller's
        transaction: the change and the promise to report it commit together."""
        now = time.time()
        counts_json = None if counts is None else json.dumps(counts)
        inserted = tx.query(
            "INSERT INTO status_events (entry_id, at, status, counts, detail) "
            "VALUES (?, ?, ?, ?, ?) RETURNING id",
            (entry_id, now, status, counts_json, detail),
        )
        if spec.status_webhook is None:
            return
        event_id = int(inserted[0][0])
        event = StatusEvent(event_id, entry_id, now, status, counts or {}, detail)
        body = json.dumps({"campaign": spec.campaign, **event.as_dict()}, sort_keys=True)
        tx.execute(
            "INSERT INTO webhook_outbox (event_id, entry_id, url, body, attempts, next_at) "
            "VALUES (?, ?, ?, ?, 0, ?)",
            (event_id, entry_id, spec.status_webhook, body, now),
        )

    def _spec_of(self, tx: Transaction, entry_id: str) -> CampaignSpec:
        rows = tx.query("SELECT spec FROM entries WHERE id = ?", (entry_id,))
        return parse_spec(json.loads(rows[0][0]), f"queue entry {entry_id}")


def _startable(status: str, due_at: float, now: float) -> bool:
    return (status == QUEUED and due_at <= now) or status == RUNNING


def _holds(tx: Transaction, entry_id: str, holder: str) -> bool:
    rows = tx.query("SELECT holder FROM leases WHERE entry_id = ?", (entry_id,))
    return bool(rows) and rows[0][0] == holder


def new_group_id(campaign: str) -> str:
    """``CAMPAIGN-YYYYMMDDTHHMMSS-XXXX``: sortable, readable, unique enough to type."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{campaign}-{stamp}-{secrets.token_hex(2)}"
