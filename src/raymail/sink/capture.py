"""Capture: every accepted transaction appended as one JSON line, and ways to read them back.

One file per sink process (``capture-<pid>-<token>.jsonl``), opened for append and flushed
after each record, so a killed sink loses at most the record being written; a reader skips
that last partial line. Records hold the raw message base64-encoded; the Message-ID is found
by a bytes search of the header block, never by MIME parsing.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from raymail.errors import SinkError

if TYPE_CHECKING:
    import polars as pl

CAPTURE_GLOB = "capture-*.jsonl"
_MAX_HEADER_BYTES = 256 * 1024  # a Message-ID further in than this is not looked for


def find_message_id(data: bytes) -> str | None:
    """The Message-ID header's value (unfolded, stripped, angle brackets kept), or None."""
    end = data.find(b"\r\n\r\n", 0, _MAX_HEADER_BYTES)
    if end < 0:
        end = data.find(b"\n\n", 0, _MAX_HEADER_BYTES)
    header = data[: end if end >= 0 else min(len(data), _MAX_HEADER_BYTES)]
    lowered = b"\n" + header.lower()
    pos = lowered.find(b"\nmessage-id:")
    if pos < 0:
        return None
    start = pos + len(b"\nmessage-id:") - 1  # index into header (lowered has one extra byte)
    stop = start
    # The value runs to the first line break not followed by folding whitespace.
    for _ in range(64):  # bounded: a Message-ID folded over more lines is not plausible
        nl = header.find(b"\n", stop)
        if nl < 0 or nl + 1 >= len(header) or header[nl + 1] not in b" \t":
            stop = len(header) if nl < 0 else nl
            break
        stop = nl + 1
    value = b" ".join(header[start:stop].split())
    return value.decode("utf-8", "replace") or None


class CaptureWriter:
    """Appends records to this process's capture file; used from the sink's event loop."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"capture-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        self._file: BinaryIO | None = self.path.open("ab")

    def write(self, *, mail_from: str, rcpt_tos: Sequence[str], data: bytes, peer: str) -> None:
        """Append one accepted transaction and flush it to the OS (no fsync: cheap)."""
        if self._file is None:
            raise SinkError(f"{self.path}: capture is closed")
        record = {
            "mail_from": mail_from,
            "rcpt_tos": list(rcpt_tos),
            "message_id": find_message_id(data),
            "size": len(data),
            "received_at": datetime.now(UTC).isoformat(),
            "peer": peer,
            "data_b64": base64.b64encode(data).decode("ascii"),
        }
        self._file.write(json.dumps(record, separators=(",", ":")).encode("utf-8") + b"\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass(frozen=True, slots=True)
class CapturedMessage:
    """One accepted transaction as recorded; ``raw`` decodes the message bytes on demand."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message_id: str | None
    size: int
    received_at: datetime
    peer: str
    data_b64: str
    file: str
    line: int

    @property
    def raw(self) -> bytes:
        return base64.b64decode(self.data_b64)


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) of one file; a final line without newline is a torn write."""
    with path.open("rb") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.endswith(b"\n"):
                return  # the sink died while writing this record: it was never accepted
            try:
                yield number, json.loads(line)
            except ValueError as exc:
                raise SinkError(f"{path}:{number}: capture record is not JSON: {exc}") from None


def capture_files(capture_dir: str | Path) -> list[Path]:
    """The capture files in a directory, in a stable order."""
    return sorted(Path(capture_dir).glob(CAPTURE_GLOB))


def iter_capture(capture_dir: str | Path) -> Iterator[CapturedMessage]:
    """Every captured transaction, file by file, in the order each sink accepted them."""
    for path in capture_files(capture_dir):
        for number, rec in _records(path):
            yield CapturedMessage(
                mail_from=rec["mail_from"],
                rcpt_tos=tuple(rec["rcpt_tos"]),
                message_id=rec.get("message_id"),
                size=int(rec["size"]),
                received_at=datetime.fromisoformat(rec["received_at"]),
                peer=rec["peer"],
                data_b64=rec["data_b64"],
                file=path.name,
                line=number,
            )


def read_capture(capture_dir: str | Path, *, with_data: bool = False) -> pl.DataFrame:
    """One row per (recipient, message) delivery the sink accepted.

    Columns: rcpt_to, message_id, mail_from, size, received_at (UTC), peer, file, line,
    and ``data`` (raw bytes) when ``with_data``. Count deliveries per recipient with
    ``df.group_by("rcpt_to").len()``.
    """
    import polars as pl

    cols: dict[str, list[Any]] = {
        k: [] for k in ("rcpt_to", "message_id", "mail_from", "size", "received_at", "peer", "file")
    }
    cols["line"] = []
    data: list[bytes] = []
    for msg in iter_capture(capture_dir):
        raw = msg.raw if with_data else b""
        for rcpt in msg.rcpt_tos:
            cols["rcpt_to"].append(rcpt)
            cols["message_id"].append(msg.message_id)
            cols["mail_from"].append(msg.mail_from)
            cols["size"].append(msg.size)
            cols["received_at"].append(msg.received_at)
            cols["peer"].append(msg.peer)
            cols["file"].append(msg.file)
            cols["line"].append(msg.line)
            if with_data:
                data.append(raw)
    schema: dict[str, Any] = {
        "rcpt_to": pl.String,
        "message_id": pl.String,
        "mail_from": pl.String,
        "size": pl.Int64,
        "received_at": pl.Datetime("us", "UTC"),
        "peer": pl.String,
        "file": pl.String,
        "line": pl.Int64,
    }
    frame = pl.DataFrame(cols, schema=schema)
    if with_data:
        frame = frame.with_columns(pl.Series("data", data, dtype=pl.Binary))
    return frame


def raw_message(capture_dir: str | Path, message_id: str) -> bytes:
    """The raw bytes of the first captured message with this Message-ID (brackets as sent)."""
    for msg in iter_capture(capture_dir):
        if msg.message_id == message_id:
            return msg.raw
    raise KeyError(f"no captured message with Message-ID {message_id!r} in {capture_dir}")
