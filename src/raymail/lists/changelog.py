"""The change log: every accepted web request, durable before its 2xx (the seed's D buffer).

A folder of append-only *segments*, one per writing process (each Serve replica has its
own, so writers never interleave and need no lock)::

    <home>/web/changes/seg-<time_ns>-<pid>-<random>.log

A line is ``<crc32 hex> <json>\\n``. :meth:`SegmentWriter.append` returns only after the line
is written and ``fdatasync``'d; concurrent appends share one sync (group commit: while one
sync runs, the next requests gather and go in the following one), so durability costs one
sync per batch, not per request. A process killed mid-write leaves at most a torn last line,
which was never acknowledged: readers skip a last line without its newline or with a bad
checksum, and a new process starts a new segment rather than appending after it. A bad
line anywhere else is reported (it would mean the disk lost data), never silently dropped.

The applier (:mod:`raymail.lists.apply`) reads segments from the byte offsets it recorded
and applies what it reads in bulk; the log stays the truth (events can be rebuilt from it).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from raymail._io import fsync_path

__all__ = ["Change", "ChangeLog", "LogDamage", "SegmentWriter", "changes_dir"]

SEGMENT_GLOB: Final = "seg-*.log"
ROTATE_BYTES: Final = 64 * 1024 * 1024
DAMAGED: Final = "_damaged"


def changes_dir(home: Path) -> Path:
    """The change log's folder under a web home."""
    return home / "web" / "changes"


def encode_line(record: Mapping[str, Any]) -> bytes:
    body = json.dumps(record, separators=(",", ":"), sort_keys=True, default=str).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


class SegmentWriter:
    """Appends to this process's current segment; thread- and asyncio-safe."""

    def __init__(self, folder: Path, rotate_bytes: int = ROTATE_BYTES) -> None:
        self.folder = folder
        self._rotate = rotate_bytes
        self._fd: int | None = None
        self._size = 0
        self._lock = threading.Lock()  # one write+sync at a time (threads of to_thread)
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._committing = False
        self.syncs = 0  # how many fdatasync calls: group commit makes this << appends

    def _open(self) -> int:
        if self._fd is None or self._size >= self._rotate:
            if self._fd is not None:
                os.close(self._fd)
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"seg-{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}.log"
            self._fd = os.open(self.folder / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            fsync_path(self.folder)  # the new file's name must survive a crash too
            self._size = 0
        return self._fd

    def write_sync(self, data: bytes) -> None:
        """Write whole lines and sync them: after this returns they survive a crash."""
        with self._lock:
            fd = self._open()
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fdatasync(fd)
            self._size += len(data)
            self.syncs += 1

    def append_many(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Durably append records from synchronous code (CLI, tests, the ingest of a batch)."""
        if records:
            self.write_sync(b"".join(encode_line(r) for r in records))

    async def append(self, record: Mapping[str, Any]) -> None:
        """Durably append one record; returns once it is synced (group commit)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((encode_line(record), future))
        if not self._committing:
            self._committing = True
            asyncio.create_task(self._commit())  # noqa: RUF006 (the futures hold the result)
        await future

    async def _commit(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await asyncio.to_thread(self.write_sync, b"".join(line for line, _ in batch))
                except Exception as exc:  # a failed sync fails every request of the batch
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
        finally:
            self._committing = False

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


@dataclass(frozen=True, slots=True)
class Change:
    """One record read back, with where it ends (the applier's next offset)."""

    segment: str
    end: int
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class LogDamage:
    """A line that is neither whole nor a torn tail: reported, kept out of the apply."""

    segment: str
    offset: int
    reason: str


class ChangeLog:
    """Reads the segments of a change log folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def segments(self) -> list[Path]:
        return sorted(self.folder.glob(SEGMENT_GLOB)) if self.folder.exists() else []

    def pending_bytes(self, offsets: Mapping[str, int]) -> int:
        """Bytes not yet applied (cheap: one stat per segment)."""
        total = 0
        for path in self.segments():
            try:
                total += max(0, path.stat().st_size - offsets.get(path.name, 0))
            except OSError:
                continue
        return total

    def read(
        self, offsets: Mapping[str, int], limit: int | None = None
    ) -> tuple[list[Change], list[LogDamage]]:
        """Records after ``offsets`` (segment name -> byte offset), oldest segment first."""
        changes: list[Change] = []
        damage: list[LogDamage] = []
        for path in self.segments():
            start = offsets.get(path.name, 0)
            with path.open("rb") as handle:
                handle.seek(start)
                data = handle.read()
            position = start
            for line in data.splitlines(keepends=True):
                if limit is not None and len(changes) >= limit:
                    return changes, damage
                if not line.endswith(b"\n"):
                    break  # a torn or still-growing tail: never acknowledged (yet)
                end = position + len(line)
                record = _decode(line)
                if record is None:  # a whole line that is wrong: the disk lost something
                    damage.append(LogDamage(path.name, position, "bad checksum or JSON"))
                    record = {"kind": DAMAGED}  # moves the offset past it
                changes.append(Change(path.name, end, record))
                position = end
        return changes, damage


def _decode(line: bytes) -> dict[str, Any] | None:
    """The record of a whole line, or None (torn, or damaged)."""
    if len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        record = json.loads(body)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
