"""The raw archive: every returned message, byte for byte, durable before the server says 250.

Messages are appended to segment files (``segments/seg-<time>-<pid>-<tag>.rma``), each
record a header line, a JSON line of envelope metadata and the raw bytes::

    RMA1 <meta length> <raw length>\\n<meta JSON>\\n<raw bytes>\\n

A record is fsync'd before :meth:`Archive.append` returns, so the SMTP reply that follows
promises nothing the disk does not hold (concurrent appends share one fsync). Segments
keep the file count low at scale (one file per ~256 MB, not one per message); each writer
process owns its own segment and holds an ``flock`` on it while open, so the server and an
import can write side by side. When a segment is closed its index is written as Parquet
(``index/<segment>.parquet``); the segment of a writer that died is scanned, its torn tail
(a record never answered 250) cut off, and indexed by the next reader. A reference
``<segment>:<offset>`` names one message.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Final

import polars as pl
import pyarrow as pa

from raymail._io import fsync_path
from raymail.errors import ReturnsError
from raymail.returns.parts import write_table_atomic

MAGIC: Final = b"RMA1"
SEGMENT_GLOB: Final = "seg-*.rma"
SEGMENT_BYTES: Final = 256 * 1024 * 1024
_HEADER_MAX: Final = 64
_META_MAX: Final = 1024 * 1024

INDEX_SCHEMA: Final = pa.schema(
    [
        pa.field("ref", pa.string()),
        pa.field("segment", pa.string()),
        pa.field("offset", pa.int64()),
        pa.field("size", pa.int64()),
        pa.field("sha256", pa.string()),
        pa.field("received_at", pa.timestamp("us", tz="UTC")),
        pa.field("mail_from", pa.string()),
        pa.field("rcpt_tos", pa.list_(pa.string())),
        pa.field("source", pa.string()),
        pa.field("label", pa.string()),
    ]
)


@dataclass(frozen=True, slots=True)
class ArchivedMessage:
    """Where one stored message is and how it arrived."""

    ref: str
    sha256: str
    size: int
    received_at: datetime
    mail_from: str
    rcpt_tos: tuple[str, ...]
    source: str  # "smtp" (the returns server) or "import"
    label: str  # the client for smtp, the file (and mailbox key) for an import

    @property
    def segment(self) -> str:
        return self.ref.rpartition(":")[0]

    @property
    def offset(self) -> int:
        return int(self.ref.rpartition(":")[2])

    def index_row(self) -> dict[str, object]:
        return {
            "ref": self.ref,
            "segment": self.segment,
            "offset": self.offset,
            "size": self.size,
            "sha256": self.sha256,
            "received_at": self.received_at,
            "mail_from": self.mail_from,
            "rcpt_tos": list(self.rcpt_tos),
            "source": self.source,
            "label": self.label,
        }


def _encode(raw: bytes, meta: dict[str, object]) -> bytes:
    meta_bytes = json.dumps(meta, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    header = b"%s %d %d\n" % (MAGIC, len(meta_bytes), len(raw))
    return b"".join((header, meta_bytes, b"\n", raw, b"\n"))


def _message(segment: str, offset: int, meta: dict[str, object], size: int) -> ArchivedMessage:
    rcpts = meta.get("rcpt_tos") or []
    return ArchivedMessage(
        ref=f"{segment}:{offset}",
        sha256=str(meta.get("sha256", "")),
        size=size,
        received_at=datetime.fromisoformat(str(meta["received_at"])),
        mail_from=str(meta.get("mail_from", "")),
        rcpt_tos=tuple(str(r) for r in rcpts) if isinstance(rcpts, list) else (),
        source=str(meta.get("source", "")),
        label=str(meta.get("label", "")),
    )


def _read_record(fh: BinaryIO, segment: str, offset: int) -> tuple[ArchivedMessage, int] | None:
    """The record at ``offset`` and where its raw bytes start; None when torn or absent."""
    fh.seek(offset)
    header = fh.readline(_HEADER_MAX)
    parts = header.split()
    if len(parts) != 3 or parts[0] != MAGIC or not header.endswith(b"\n"):
        return None
    try:
        meta_len, raw_len = int(parts[1]), int(parts[2])
    except ValueError:
        return None
    if not 0 < meta_len <= _META_MAX or raw_len < 0:
        return None
    meta_bytes = fh.read(meta_len + 1)
    if len(meta_bytes) != meta_len + 1 or not meta_bytes.endswith(b"\n"):
        return None
    try:
        meta = json.loads(meta_bytes)
    except ValueError:
        return None
    raw_start = offset + len(header) + meta_len + 1
    fh.seek(raw_start + raw_len)
    if fh.read(1) != b"\n":
        return None
    return _message(segment, offset, meta, raw_len), raw_start


def scan_segment(path: Path) -> tuple[list[ArchivedMessage], int]:
    """Every whole record of a segment, and the offset where the whole records end."""
    found: list[ArchivedMessage] = []
    offset = 0
    size = path.stat().st_size
    with path.open("rb") as fh:
        while offset < size:  # each round moves past one record or stops
            record = _read_record(fh, path.stem, offset)
            if record is None:
                break
            message, raw_start = record
            found.append(message)
            offset = raw_start + message.size + 1
    return found, offset


def _index_table(messages: Sequence[ArchivedMessage]) -> pa.Table:
    return pa.Table.from_pylist([m.index_row() for m in messages], schema=INDEX_SCHEMA)


@dataclass(slots=True)
class _Segment:
    """The segment a writer appends to: its file and how much of it is written / synced."""

    fh: BinaryIO
    name: str
    size: int = 0  # bytes written and flushed to the OS
    synced: int = 0  # bytes known to be on disk (fsync'd)
    written: list[ArchivedMessage] = field(default_factory=list)


class Archive:
    """Append-only store of raw returned messages (thread-safe appends, group commit).

    Appends are written under one lock; the fsync is outside it, and one fsync covers every
    record flushed before it began, so concurrent SMTP sessions share disk syncs instead of
    queueing one per message. No append returns before its own record is synced.
    """

    def __init__(self, folder: Path, *, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.folder = folder
        self.segments = folder / "segments"
        self.index_dir = folder / "index"
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()  # order: _lock, then _sync_lock (never the reverse)
        self._sync_lock = threading.Lock()
        self._segment: _Segment | None = None

    # -- writing -----------------------------------------------------------------------

    def append(
        self,
        raw: bytes,
        *,
        mail_from: str,
        rcpt_tos: Sequence[str],
        source: str,
        label: str,
        received_at: datetime | None = None,
    ) -> ArchivedMessage:
        """Store one message and fsync it; only then may the caller acknowledge it."""
        at = received_at or datetime.now(UTC)
        meta: dict[str, object] = {
            "received_at": at.isoformat(),
            "mail_from": mail_from,
            "rcpt_tos": list(rcpt_tos),
            "source": source,
            "label": label,
            "sha256": hashlib.sha256(raw).hexdigest(),
        }
        record = _encode(raw, meta)
        with self._lock:
            segment = self._active()
            offset = segment.size
            try:
                segment.fh.write(record)
                segment.fh.flush()
            except OSError as exc:
                self._cut(segment, offset)
                raise ReturnsError(f"archive {self.segments}: cannot store message: {exc}") from exc
            segment.size += len(record)
            end = segment.size
            message = _message(segment.name, offset, meta, len(raw))
            segment.written.append(message)
            if segment.size >= self.segment_bytes:
                self._seal()  # syncs everything written to it
        self._sync(segment, end)
        return message

    def _cut(self, segment: _Segment, offset: int) -> None:
        """Never leave a torn record in the middle of a segment (called with the lock)."""
        try:
            segment.fh.truncate(offset)
            segment.fh.seek(offset)
        except OSError:
            self._segment = None  # unusable: the next append starts a new segment

    def _sync(self, segment: _Segment, end: int) -> None:
        """Return once the segment is on disk up to ``end`` (one fsync serves many)."""
        with self._sync_lock:
            if segment.synced >= end:
                return  # an fsync that began after our flush covered us
            target = segment.size  # flushed before this fsync starts: covered by it
            try:
                os.fsync(segment.fh.fileno())
            except (OSError, ValueError) as exc:
                raise ReturnsError(f"archive {self.segments}: cannot sync: {exc}") from exc
            segment.synced = max(segment.synced, target)

    def _active(self) -> _Segment:
        if self._segment is not None:
            return self._segment
        self.segments.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        name = f"seg-{stamp}-{os.getpid()}-{secrets.token_hex(3)}"
        path = self.segments / f"{name}.rma"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        fh = os.fdopen(fd, "wb")
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # "a live writer owns this segment"
        fsync_path(self.segments)  # the new file's name is durable too
        self._segment = _Segment(fh, name)
        return self._segment

    def _seal(self) -> None:
        """Sync, index and release the active segment (called with ``_lock`` held)."""
        segment = self._segment
        if segment is None:
            return
        with self._sync_lock:
            os.fsync(segment.fh.fileno())
            segment.synced = segment.size
            if segment.written:
                write_table_atomic(
                    _index_table(segment.written), self.index_dir / f"{segment.name}.parquet"
                )
            fcntl.flock(segment.fh.fileno(), fcntl.LOCK_UN)
            segment.fh.close()
        if not segment.written:
            (self.segments / f"{segment.name}.rma").unlink(missing_ok=True)
        self._segment = None

    def close(self) -> None:
        """Seal the active segment (its index becomes Parquet)."""
        with self._lock:
            self._seal()

    # -- reading -----------------------------------------------------------------------

    def index(self) -> pl.DataFrame:
        """One row per stored message (see INDEX_SCHEMA), sealing orphaned segments."""
        tables: list[pa.Table] = []
        for path in sorted(self.segments.glob(SEGMENT_GLOB)):
            index_path = self.index_dir / f"{path.stem}.parquet"
            if index_path.exists():
                tables.append(pl.read_parquet(index_path).to_arrow().cast(INDEX_SCHEMA))
                continue
            tables.append(_index_table(self._scan_or_seal(path)))
        frame = pl.from_arrow(pa.concat_tables(tables) if tables else INDEX_SCHEMA.empty_table())
        assert isinstance(frame, pl.DataFrame)
        return frame

    def _scan_or_seal(self, path: Path) -> list[ArchivedMessage]:
        """A live writer's segment is only scanned; a dead writer's is repaired and indexed."""
        with path.open("r+b") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return scan_segment(path)[0]
            try:
                messages, end = scan_segment(path)
                if end < path.stat().st_size:
                    fh.truncate(end)  # a torn record: it was never acknowledged
                    os.fsync(fh.fileno())
                if messages:
                    write_table_atomic(
                        _index_table(messages), self.index_dir / f"{path.stem}.parquet"
                    )
                else:
                    path.unlink()  # nothing was ever acknowledged from it
                return messages
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def read(self, ref: str) -> tuple[ArchivedMessage, bytes]:
        """One message by reference; ReturnsError naming the reference when absent."""
        segment, _, offset = ref.rpartition(":")
        path = self.segments / f"{segment}.rma"
        if not segment or not offset.isdigit() or not path.exists():
            raise ReturnsError(f"archive: no message {ref!r}")
        with path.open("rb") as fh:
            record = _read_record(fh, segment, int(offset))
            if record is None:
                raise ReturnsError(f"archive: no whole record at {ref!r}")
            message, raw_start = record
            fh.seek(raw_start)
            return message, fh.read(message.size)

    def iter_raw(
        self, refs: Sequence[str] | None = None
    ) -> Iterator[tuple[ArchivedMessage, bytes]]:
        """Stored messages with their bytes (all of them, or ``refs``), segment by segment."""
        wanted = self.index()["ref"].to_list() if refs is None else list(refs)
        by_segment: dict[str, list[int]] = {}
        for ref in wanted:
            segment, _, offset = ref.rpartition(":")
            by_segment.setdefault(segment, []).append(int(offset))
        for segment in sorted(by_segment):
            path = self.segments / f"{segment}.rma"
            with path.open("rb") as fh:
                for offset in sorted(by_segment[segment]):
                    record = _read_record(fh, segment, offset)
                    if record is None:
                        continue
                    message, raw_start = record
                    fh.seek(raw_start)
                    yield message, fh.read(message.size)
