"""From a stored message to events, suppressions and forwards (the C server's work).

The server, ``raymail returns import`` and re-classification all go through
:class:`ReturnsProcessor`, so a message is judged the same way however it arrived:

1. the classifier reads the message with the envelope recipient shown as ``X-Original-To``
   (as a mail delivery agent would add it), so the VERP token in it is evidence, decoded by
   the campaign registry into campaign and recipient;
2. mail to a List-Unsubscribe address is a removal request, whatever it says;
3. a reply without a token is tied to its campaign and recipient through our Message-ID in
   In-Reply-To / References;
4. events are buffered, human replies and challenges go to the outbox, and each flush
   writes the events and applies the suppression rules to them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import Final

import polars as pl

from raymail.compose.verp import TokenKind
from raymail.returns.archive import ArchivedMessage
from raymail.returns.classify import classify_message
from raymail.returns.events import events_for
from raymail.returns.reasons import (
    AUTO_REPLY,
    CHALLENGE_RESPONSE,
    HUMAN_REPLY,
    REMOVE_REQUEST,
    UNKNOWN,
)
from raymail.returns.registry import CampaignRegistry, Decoded
from raymail.returns.rules import decide, history_for, relevant_categories
from raymail.returns.store import ReturnsStore
from raymail.returns.verdict import Classification

log = logging.getLogger(__name__)

FORWARDED: Final = frozenset({HUMAN_REPLY, CHALLENGE_RESPONSE})
_REPLIES: Final = frozenset({HUMAN_REPLY, AUTO_REPLY, CHALLENGE_RESPONSE, REMOVE_REQUEST, UNKNOWN})
_ENVELOPE_HEADERS: Final = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To")
_HEAD_BYTES: Final = 64 * 1024


@dataclass(slots=True)
class FlushResult:
    """What one flush wrote."""

    events: int = 0
    suppressed: list[str] = dataclasses.field(default_factory=list)


def envelope_hints(raw: bytes) -> list[str]:
    """Envelope recipients an MDA recorded in the headers (for imported messages)."""
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:_HEAD_BYTES])
    except Exception:
        return []
    found: list[str] = []
    for name in _ENVELOPE_HEADERS:
        for value in headers.get_all(name) or []:
            address = str(value).strip().strip("<>").strip()
            if "@" in address and address not in found:
                found.append(address)
    return found


def _reply_headers(raw: bytes) -> str:
    try:
        headers = BytesHeaderParser(policy=compat32).parsebytes(raw[:_HEAD_BYTES])
    except Exception:
        return ""
    return " ".join(str(headers.get(n, "")) for n in ("In-Reply-To", "References"))


class ReturnsProcessor:
    """Classifies stored messages and records what follows from them."""

    def __init__(self, store: ReturnsStore, registry: CampaignRegistry | None = None) -> None:
        self.store = store
        self.registry = registry
        self.processed = 0

    # -- one message -------------------------------------------------------------------

    def _token(self, rcpt_tos: tuple[str, ...]) -> tuple[str | None, Decoded | None]:
        if self.registry is None:
            return None, None
        for rcpt in rcpt_tos:
            decoded = self.registry.decode(rcpt)
            if decoded is not None:
                return rcpt, decoded
        return None, None

    def classify(self, message: ArchivedMessage, raw: bytes) -> tuple[Classification, str | None]:
        """(verdict, campaign) for one stored message; never raises."""
        rcpt, decoded = self._token(message.rcpt_tos)
        shown = raw
        if rcpt is not None:
            shown = b"X-Original-To: " + rcpt.encode("ascii", "replace") + b"\r\n" + raw
        decoder = self.registry.verp_decoder if self.registry is not None else None
        verdict = classify_message(shown, path=message.ref, verp_decoder=decoder)
        campaign = verdict.campaign or (decoded.campaign if decoded else None)
        if decoded is not None and decoded.kind is TokenKind.UNSUBSCRIBE:
            return self._unsubscribe(verdict, decoded), decoded.campaign
        if self.registry is not None and verdict.category in _REPLIES and decoded is None:
            found = self.registry.from_message_id(_reply_headers(raw))
            if found is not None:
                campaign = campaign or found[0]
                if found[1] is not None:
                    verdict = dataclasses.replace(verdict, recipients=[found[1]])
        return verdict, campaign

    def _unsubscribe(self, verdict: Classification, decoded: Decoded) -> Classification:
        """Mail to a List-Unsubscribe mailto address (RFC 2369) asks for removal."""
        if verdict.category == AUTO_REPLY:
            return verdict
        assert self.registry is not None
        email = self.registry.recipient(decoded.campaign, decoded.recipient_tag)
        return dataclasses.replace(
            verdict,
            category=REMOVE_REQUEST,
            reason="unsubscribe",
            recipients=[email] if email else verdict.recipients,
            campaign=decoded.campaign,
            source="list-unsubscribe",
            why="mail to the List-Unsubscribe address",
            per_recipient=[],
        )

    def process(self, message: ArchivedMessage, raw: bytes) -> list[dict[str, object]]:
        """Classify one stored message, buffer its events, queue a forward if a person must."""
        verdict, campaign = self.classify(message, raw)
        rows = events_for(verdict, message, campaign=campaign)
        self.store.events.add(rows)
        if verdict.category in FORWARDED:
            recipient = rows[0]["recipient"]
            self.store.outbox.enqueue(
                raw,
                archive_ref=message.ref,
                recipient=str(recipient) if recipient else None,
                campaign=campaign,
                category=verdict.category,
            )
        self.processed += 1
        return rows

    # -- batches -----------------------------------------------------------------------

    def flush(self) -> FlushResult:
        """Write buffered events, then suppress the addresses the rules now catch."""
        self.store.flush_rejects()
        written = self.store.events.flush()
        if written is None:
            return FlushResult()
        result = FlushResult(written.height, self.apply_rules(written))
        self.store.events.compact()
        return result

    def apply_rules(self, written: pl.DataFrame) -> list[str]:
        """Suppress addresses that the events just written (and their history) condemn."""
        rules = self.store.settings.rules
        relevant = written.filter(
            pl.col("recipient").is_not_null() & pl.col("category").is_in(relevant_categories(rules))
        )
        if relevant.height == 0:
            return []
        recipients = relevant["recipient"].unique().to_list()
        history = history_for(self.store.events.folder, recipients)
        changes = decide(relevant, history, self.store.suppression.read(), rules)
        self.store.suppression.upsert(changes)
        return [str(e) for e in changes["email"].to_list()]

    def recover(self) -> int:
        """Classify archived messages that have no events (stored, then the process died)."""
        index = self.store.archive.index()
        if index.height == 0:
            return 0
        seen = self.store.events.read(current=False)["archive_ref"].drop_nulls().unique()
        missing = index.filter(~pl.col("ref").is_in(seen.to_list()))["ref"].to_list()
        for message, raw in self.store.archive.iter_raw(missing):
            self.process(message, raw)
        if missing:
            log.info("returns: classified %d archived message(s) that had no events", len(missing))
            self.flush()
        return len(missing)
