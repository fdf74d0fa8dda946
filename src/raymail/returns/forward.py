"""Forwarding to customer service: a persisted outbox, retried with backoff, never dropped.

Human replies and challenge-response requests need a person. Each is written to the outbox
(``<id>.eml`` then ``<id>.json``, both fsync'd) before anything is sent, and leaves it only
when the customer-service server has answered 250 to the end of DATA; that is appended to
``forwarded.jsonl``. A failure schedules the next try with exponential backoff; after
``forward_retry.max_attempts`` an item is *parked*: it stays in the outbox, is listed by
``raymail returns forward``, and that command retries it. The message goes out unchanged,
with headers in front naming the recipient and campaign it answers.

An item's id comes from its archive reference, so processing the same archived message
twice (a crash between forwarding and writing the event) never forwards it twice.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import aiosmtplib

from raymail._io import flocked, fsync_path, write_bytes_atomic
from raymail.hostport import split_host_port
from raymail.spec import ReturnsSettings

FORWARDED_LOG: Final = "forwarded.jsonl"
_TIMEOUT_S: Final = 30.0


@dataclass(slots=True)
class OutboxItem:
    """One message waiting for customer service (its ``.json`` file)."""

    id: str
    archive_ref: str
    recipient: str | None
    campaign: str | None
    category: str
    created_at: float
    attempts: int = 0
    next_at: float = 0.0
    last_error: str = ""
    parked: bool = False


@dataclass(slots=True)
class ForwardResult:
    """What one pass over the outbox did."""

    sent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    parked: list[str] = field(default_factory=list)
    waiting: int = 0  # still in the outbox after this pass
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _item_id(archive_ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", archive_ref)


class Outbox:
    """The outbox folder: one ``.eml`` and one ``.json`` per waiting message."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._log = folder / FORWARDED_LOG
        self._forwarded = self._read_log()

    def _read_log(self) -> set[str]:
        if not self._log.exists():
            return set()
        done: set[str] = set()
        for line in self._log.read_text(encoding="utf-8").splitlines():
            try:
                done.add(str(json.loads(line)["id"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line: that forward is still in the outbox
        return done

    def enqueue(
        self, raw: bytes, *, archive_ref: str, recipient: str | None, campaign: str | None,
        category: str,
    ) -> bool:  # fmt: skip
        """Persist one message to forward; False when it is queued or forwarded already."""
        item_id = _item_id(archive_ref)
        meta = self.folder / f"{item_id}.json"
        if item_id in self._forwarded or meta.exists():
            return False
        write_bytes_atomic(self.folder / f"{item_id}.eml", raw)
        item = OutboxItem(item_id, archive_ref, recipient, campaign, category, time.time())
        self.save(item)
        fsync_path(self.folder)
        return True

    def save(self, item: OutboxItem) -> None:
        write_bytes_atomic(
            self.folder / f"{item.id}.json", json.dumps(asdict(item)).encode("utf-8")
        )

    def items(self) -> list[OutboxItem]:
        """Everything waiting, oldest first."""
        found: list[OutboxItem] = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                found.append(OutboxItem(**json.loads(path.read_text(encoding="utf-8"))))
            except (ValueError, TypeError) as exc:  # shown, parked, never deleted
                problem = f"{path}: unreadable outbox entry ({exc}); left in place"
                item = OutboxItem(path.stem, "", None, None, "unknown", 0.0, last_error=problem)
                item.parked = True
                found.append(item)
        return sorted(found, key=lambda i: i.created_at)

    def raw(self, item: OutboxItem) -> bytes:
        return (self.folder / f"{item.id}.eml").read_bytes()

    def done(self, item: OutboxItem, reply: str) -> None:
        """Record the delivery (log line fsync'd), then remove the item's files."""
        line = {"id": item.id, "archive_ref": item.archive_ref, "at": time.time(), "reply": reply}
        with self._log.open("ab") as fh:
            fh.write(json.dumps(line).encode("utf-8") + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._forwarded.add(item.id)
        (self.folder / f"{item.id}.json").unlink(missing_ok=True)
        (self.folder / f"{item.id}.eml").unlink(missing_ok=True)


def forwarded_message(raw: bytes, item: OutboxItem) -> bytes:
    """The message as received, with X-Raymail-* headers in front."""
    headers = [
        f"X-Raymail-Forwarded: {item.category}; archive={item.archive_ref}",
        f"X-Raymail-Recipient: {item.recipient or 'unknown'}",
        f"X-Raymail-Campaign: {item.campaign or 'unknown'}",
    ]
    clean = [re.sub(r"[\r\n]+", " ", h) for h in headers]
    return "".join(f"{h}\r\n" for h in clean).encode("utf-8") + raw


async def _deliver(host: str, port: int, sender: str, to: str, message: bytes) -> str:
    """One SMTP transaction; the reply to DATA. (aiosmtplib.send refuses the null sender.)"""
    client = aiosmtplib.SMTP(
        hostname=host,
        port=port,
        timeout=_TIMEOUT_S,
        start_tls=None,  # STARTTLS when offered, as MTAs do
        validate_certs=False,
    )
    async with client:
        _errors, reply = await client.sendmail(sender, [to], message)
    return reply


class Forwarder:
    """Delivers due outbox items to the customer-service server."""

    def __init__(
        self,
        outbox: Outbox,
        settings: ReturnsSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.outbox = outbox
        self.settings = settings
        self.clock = clock

    async def run_due(self, *, include_parked: bool = False) -> ForwardResult:
        """One pass: try every due item once (parked ones too when asked).

        Passes of different processes (the server, the CLI) take turns through an flock,
        so no item is sent by both.
        """
        with flocked(self.outbox.folder / ".lock", wait=False) as mine:
            if not mine:
                return ForwardResult(
                    waiting=len(self.outbox.items()), note="another process is forwarding"
                )
            return await self._pass(include_parked)

    async def _pass(self, include_parked: bool) -> ForwardResult:
        result = ForwardResult()
        target = self.settings.customer_service
        to = self.settings.customer_service_address
        items = self.outbox.items()
        if target is None or to is None:
            result.waiting = len(items)
            result.note = "no customer_service configured: messages wait in the outbox"
            return result
        host, port = split_host_port(target)
        now = self.clock()
        for item in items:
            if not item.archive_ref or (item.parked and not include_parked):
                continue
            if item.next_at > now and not include_parked:
                continue
            try:
                message = forwarded_message(self.outbox.raw(item), item)
                reply = await _deliver(host, port, self.settings.forward_sender, to, message)
            except (aiosmtplib.SMTPException, OSError) as exc:
                self._failed(item, exc, result)
                continue
            self.outbox.done(item, reply)
            result.sent.append(item.id)
        result.waiting = len(self.outbox.items())
        return result

    def _failed(self, item: OutboxItem, exc: BaseException, result: ForwardResult) -> None:
        retry = self.settings.forward_retry
        item.attempts += 1
        item.last_error = f"{type(exc).__name__}: {exc}"[:300]
        item.next_at = self.clock() + retry.delay(item.attempts)
        item.parked = item.attempts >= retry.max_attempts
        self.outbox.save(item)
        (result.parked if item.parked else result.failed).append(item.id)
