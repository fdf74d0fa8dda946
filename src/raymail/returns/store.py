"""Where returns processing keeps its state, under the settings' ``home``::

    HOME/
      suppression.parquet          the suppression list (or settings.suppression_path)
      returns/
        archive/segments/*.rma     raw returned messages (append-only segments)
        archive/index/*.parquet    one index per sealed segment
        events/part-*.parquet      classified returns, one row per (message, recipient)
        rejects/part-*.parquet     items that could not be taken in, with the reason
        outbox/                    messages waiting for customer service

Several processes may use one home at once (the server, an import, the CLI).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

import pyarrow as pa

from raymail.returns.archive import Archive
from raymail.returns.events import EventStore
from raymail.returns.forward import Outbox
from raymail.returns.parts import PartWriter, read_parts
from raymail.returns.suppression import SuppressionList
from raymail.spec import ReturnsSettings

REJECT_SCHEMA: Final = pa.schema(
    [
        pa.field("item", pa.string()),  # file, mailbox key, or run directory row
        pa.field("reason", pa.string()),
        pa.field("source", pa.string()),  # import, ledger, smtp
        pa.field("at", pa.timestamp("us", tz="UTC")),
    ]
)


class ReturnsStore:
    """The archive, events, rejects, outbox and suppression list of one home."""

    def __init__(self, settings: ReturnsSettings) -> None:
        self.settings = settings
        root = settings.returns_dir
        self.root = root
        self.archive = Archive(root / "archive")
        self.events = EventStore(root / "events")
        self.outbox = Outbox(root / "outbox")
        self.suppression = SuppressionList(settings.suppression_file)
        self._rejects = PartWriter(root / "rejects", REJECT_SCHEMA)

    def reject(self, item: str, reason: str, source: str) -> None:
        """Record an item that could not be taken in (written at the next flush)."""
        self._rejects.add(
            [{"item": item, "reason": reason, "source": source, "at": datetime.now(UTC)}]
        )

    def rejects(self) -> list[dict[str, object]]:
        """Every recorded reject."""
        return read_parts(self.root / "rejects", REJECT_SCHEMA).to_dicts()

    def flush_rejects(self) -> None:
        self._rejects.flush()

    def close(self) -> None:
        """Seal the archive's segment and write buffered rejects."""
        self._rejects.flush()
        self.archive.close()
