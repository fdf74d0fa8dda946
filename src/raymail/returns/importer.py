"""``raymail returns import``: mail that reached another mailbox, taken in like the server's.

Files, Maildirs and mbox files go into the same archive and events as mail the returns
server received; the envelope recipient comes from the Delivered-To / X-Original-To headers
the delivering MTA added. A message already in the archive (same SHA-256) is skipped, so
importing a mailbox twice changes nothing. An item that cannot be read, or is larger than
``max_message_bytes``, is recorded in the rejects with the reason; nothing raises midway.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from raymail.errors import ReturnsError
from raymail.returns.process import ReturnsProcessor, envelope_hints
from raymail.returns.sources import iter_messages

_FLUSH_EVERY = 5000  # messages between flushes of a large import


@dataclass(slots=True)
class ImportResult:
    """Counts of one import."""

    messages: int = 0
    duplicates: int = 0
    rejected: int = 0
    events: int = 0
    suppressed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_messages(paths: Iterable[Path], processor: ReturnsProcessor) -> ImportResult:
    """Archive, classify and record every message under ``paths``."""
    paths = list(paths)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ReturnsError(f"no such file or directory: {', '.join(missing)}")
    store = processor.store
    limit = store.settings.max_message_bytes
    known = set(store.archive.index()["sha256"].to_list())
    result = ImportResult()
    for label, raw in iter_messages(paths):
        if not raw.strip():
            store.reject(label, "unreadable or empty", "import")
            result.rejected += 1
            continue
        if len(raw) > limit:
            store.reject(
                label, f"{len(raw)} bytes: larger than max_message_bytes {limit}", "import"
            )
            result.rejected += 1
            continue
        digest = hashlib.sha256(raw).hexdigest()
        if digest in known:
            result.duplicates += 1
            continue
        known.add(digest)
        message = store.archive.append(
            raw,
            mail_from="",
            rcpt_tos=envelope_hints(raw),
            source="import",
            label=label,
        )
        processor.process(message, raw)
        result.messages += 1
        if result.messages % _FLUSH_EVERY == 0:
            _flush(processor, result)
    _flush(processor, result)
    store.archive.close()
    return result


def _flush(processor: ReturnsProcessor, result: ImportResult) -> None:
    flushed = processor.flush()
    result.events += flushed.events
    result.suppressed += len(flushed.suppressed)
