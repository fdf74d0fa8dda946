"""The tracking events dataset: every feedback hit of every campaign, as partitioned Parquet.

Seed 000 asks for campaign feedback kept as *data*, for analytics nobody predefined, so the
events are one flat table with a fixed Arrow schema (:data:`TRACKING_SCHEMA`) laid out as a
hive-partitioned dataset that DuckDB, polars and pyarrow read as they are::

    $RAYMAIL_HOME/events/
      campaign=spring-sale/
        date=2025-03-14/
          part-20250314T101500-4242-a1b2c3-000000.parquet

Each file holds every column (``campaign`` included), so a part stays meaningful when it is
copied alone (to the archive, say). Writers buffer rows (:meth:`EventWriter.add`) and write
one part per (campaign, date) at each :meth:`EventWriter.flush`: few files, never one per
hit. A part is written to a temporary name, fsync'd and renamed, so a reader never sees half
a file and a crash loses at most the unflushed buffer. Part names carry the process id and a
random tag, so several processes (Serve replicas, the returns sync) append safely at once.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pyarrow as pa

from raymail.errors import EventRowError
from raymail.returns.parts import write_table_atomic
from raymail.spec import raymail_home

EVENT_KINDS: Final = frozenset(
    {
        "open",
        "click",
        "unsubscribe",
        "reply",
        "forward",
        "complaint",
        "bounce",
        "delete",
        "subscribe",
        "confirm",
        "delivered",  # from the ledger: the denominator of every rate
    }
)
EVENT_SOURCES: Final = frozenset({"web", "returns", "ingest", "ledger"})

# The same pattern as CampaignSpec.campaign: a campaign id is safe as a directory name.
CAMPAIGN_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_CAMPAIGN_RE: Final = re.compile(CAMPAIGN_PATTERN)
# Writers' parts (part-*) and the parts derived from returns and ledgers (sync-*).
PART_GLOB: Final = "campaign=*/date=*/*.parquet"

TRACKING_SCHEMA: Final = pa.schema(
    [
        pa.field("campaign", pa.string(), nullable=False),
        pa.field("at", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("recipient", pa.string(), nullable=False),  # lower-cased address
        pa.field("row", pa.int64()),  # the recipient's row in the campaign's list
        pa.field("link", pa.string()),  # the link's name in the campaign's link table
        pa.field("url", pa.string()),  # where a click went
        pa.field("source", pa.string(), nullable=False),
        pa.field("user_agent", pa.string()),
        pa.field("ip", pa.string()),
        pa.field("bot", pa.bool_(), nullable=False),  # flagged at write time (bots.flag_hit)
        pa.field("bot_reason", pa.string()),
        pa.field("message_id", pa.string()),
        pa.field("detail", pa.string()),  # JSON text: whatever else the source reported
    ]
)
_KEYS: Final = frozenset(TRACKING_SCHEMA.names)
_REQUIRED: Final = ("campaign", "at", "kind", "recipient", "source")
_OPTIONAL_TEXT: Final = ("link", "url", "user_agent", "ip", "bot_reason", "message_id")
DEFAULT_MAX_BUFFERED: Final = 50_000


def events_root(home: Path | None = None) -> Path:
    """The dataset's folder: ``<home>/events``, home defaulting to $RAYMAIL_HOME."""
    return (home if home is not None else raymail_home()) / "events"


def _text(key: str, value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise EventRowError(f"{where}: key '{key}' must be a non-empty string, got {value!r}")
    return value


def _optional_text(key: str, value: object, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise EventRowError(f"{where}: key '{key}' must be a string or None, got {value!r}")
    return value


def _timestamp(value: object, where: str) -> datetime:
    if not isinstance(value, datetime):
        raise EventRowError(f"{where}: key 'at' must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise EventRowError(f"{where}: key 'at' must be timezone-aware (UTC), got {value!r}")
    return value.astimezone(UTC)


def _detail(value: object, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return json.dumps(dict(value), sort_keys=True, default=str)
    if not isinstance(value, str):
        raise EventRowError(f"{where}: key 'detail' must be JSON text or None, got {value!r}")
    try:
        json.loads(value)
    except ValueError as exc:
        raise EventRowError(f"{where}: key 'detail' is not valid JSON ({exc})") from None
    return value


def validate_row(row: Mapping[str, Any], where: str = "event") -> dict[str, Any]:
    """One event row in the schema's shape; EventRowError naming the bad key."""
    if not isinstance(row, Mapping):
        raise EventRowError(f"{where}: an event row must be a mapping, got {type(row).__name__}")
    unknown = sorted(set(row) - _KEYS)
    if unknown:
        raise EventRowError(f"{where}: unknown key '{unknown[0]}' (known: {sorted(_KEYS)})")
    for key in _REQUIRED:
        if key not in row:
            raise EventRowError(f"{where}: missing required key '{key}'")
    campaign = _text("campaign", row["campaign"], where)
    if not _CAMPAIGN_RE.match(campaign):
        raise EventRowError(f"{where}: key 'campaign' is not a campaign id: {campaign!r}")
    kind = _text("kind", row["kind"], where)
    if kind not in EVENT_KINDS:
        raise EventRowError(f"{where}: key 'kind' must be one of {sorted(EVENT_KINDS)}: {kind!r}")
    source = _text("source", row["source"], where)
    if source not in EVENT_SOURCES:
        raise EventRowError(
            f"{where}: key 'source' must be one of {sorted(EVENT_SOURCES)}: {source!r}"
        )
    number = row.get("row")
    if number is not None and (not isinstance(number, int) or isinstance(number, bool)):
        raise EventRowError(f"{where}: key 'row' must be an integer or None, got {number!r}")
    bot = row.get("bot", False)
    if not isinstance(bot, bool):
        raise EventRowError(f"{where}: key 'bot' must be true or false, got {bot!r}")
    clean: dict[str, Any] = {
        "campaign": campaign,
        "at": _timestamp(row["at"], where),
        "kind": kind,
        "recipient": _text("recipient", row["recipient"], where).strip().lower(),
        "row": number,
        "source": source,
        "bot": bot,
        "detail": _detail(row.get("detail"), where),
    }
    for key in _OPTIONAL_TEXT:
        clean[key] = _optional_text(key, row.get(key), where)
    return clean


def part_name(tag: str, count: int) -> str:
    """A part's file name: time, writer tag (pid + random), sequence number."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"part-{stamp}-{tag}-{count:06d}.parquet"


class EventWriter:
    """Buffers validated event rows; ``flush`` writes one part per (campaign, date).

    Thread-safe (a Serve replica may add from its handlers and flush from a timer). Rows
    are validated in :meth:`add`, so a bad row is refused at once, with nothing of its batch
    buffered, and never reaches the dataset. ``max_buffered`` bounds memory: an ``add`` that
    fills the buffer past it flushes.
    """

    def __init__(self, root: Path, *, max_buffered: int = DEFAULT_MAX_BUFFERED) -> None:
        self.root = Path(root)
        self.max_buffered = max_buffered
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # guards the buffer
        self._flushing = threading.Lock()  # one flush at a time (part numbers, order)
        self._tag = f"{os.getpid()}-{secrets.token_hex(3)}"
        self._count = 0
        self._closed = False

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def buffered(self) -> int:
        return len(self._rows)

    def add(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Validate and buffer rows (all or none); flush when the buffer is full."""
        clean = [validate_row(row, f"event {n}") for n, row in enumerate(rows)]
        with self._lock:
            if self._closed:
                raise EventRowError("EventWriter is closed; no more rows can be added")
            self._rows.extend(clean)
            full = len(self._rows) >= self.max_buffered
        if full:
            self.flush()

    def flush(self) -> int:
        """Write the buffer (one part per campaign and day); return the rows written.

        Rows are taken from the buffer under a short lock and written outside it, so an
        ``add`` never waits for the disk; flushes take turns.
        """
        with self._flushing:
            with self._lock:
                rows, self._rows = self._rows, []
            if not rows:
                return 0
            pending = _partitions(rows)
            try:
                while pending:
                    (campaign, day), group = pending[0]
                    table = pa.Table.from_pylist(group, schema=TRACKING_SCHEMA)
                    folder = self.root / f"campaign={campaign}" / f"date={day}"
                    write_table_atomic(table, folder / part_name(self._tag, self._count))
                    self._count += 1
                    pending.pop(0)
            except BaseException:
                # Parts written are whole; the groups not yet written go back to the buffer.
                with self._lock:
                    self._rows = [row for _, group in pending for row in group] + self._rows
                raise
            return len(rows)

    def close(self) -> None:
        """Refuse later adds, then flush what is left (nothing slips in between)."""
        with self._lock:
            self._closed = True
        self.flush()


def _partitions(rows: list[dict[str, Any]]) -> list[tuple[tuple[str, str], list[dict[str, Any]]]]:
    """Rows grouped by (campaign, UTC day), in key order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        key = (row["campaign"], row["at"].date().isoformat())
        groups.setdefault(key, []).append(row)
    return sorted(groups.items())


def event_parts(root: Path, campaign: str | None = None) -> list[Path]:
    """The dataset's part files (of one campaign, or all), in name order."""
    if not root.is_dir():
        return []
    pattern = f"campaign={campaign}/date=*/*.parquet" if campaign else PART_GLOB
    return sorted(root.glob(pattern))
