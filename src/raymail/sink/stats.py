"""The sink's counters: what it answered, readable live and written as JSON on shutdown."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(slots=True)
class SinkStats:
    """Counters since the sink started; ``stats()`` hands out copies of these."""

    connections: int = 0  # TCP connections accepted (a STARTTLS upgrade is not a new one)
    transactions: int = 0  # messages answered 250 at the end of DATA
    accepted: int = 0  # recipients in those messages
    tempfailed: int = 0  # RCPT TO answered 4xx by a rule
    permfailed: int = 0  # RCPT TO answered 5xx by a rule
    dropped: int = 0  # transactions whose connection closed before the DATA reply
    dropped_recipients: int = 0  # accepted recipients in those transactions
    bytes: int = 0  # message bytes in accepted transactions
    hung: int = 0  # transactions whose end of DATA was left unanswered (a "hang" rule)
    returns_sent: int = 0  # generated bounces and replies the returns server accepted
    returns_failed: int = 0  # generated returns that could not be delivered
    returns_skipped: int = 0  # returns not generated: the message's sender was null
    connections_refused: int = 0  # connections answered 421 over max_connections_per_client
    throttled: int = 0  # RCPT TO answered 4xx for exceeding a rule's max_sessions
    peak_connections: int = 0  # most connections open at once
    peak_in_data: int = 0  # most transactions at once between end of DATA and its reply

    def copy(self) -> SinkStats:
        return dataclasses.replace(self)

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SinkStats:
        """Read counters back, ignoring unknown keys so newer sinks stay readable."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: int(v) for k, v in data.items() if k in names})

    def write_json(self, path: Path) -> None:
        """Write atomically (temp file + rename) so a reader never sees half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(path)
