"""Status webhooks: every status event of a campaign POSTed, signed, to its sender.

The event and its delivery row in ``webhook_outbox`` are written in one transaction (see
``CampaignQueue._record``), so a status change is never recorded without the promise to
report it. This sender (a thread of the scheduler) delivers the outbox: oldest first, each
POST with a timeout, a failure retried with exponential backoff up to ``max_attempts``, then
*parked* (kept, with the last error, for ``raymail queue webhooks --retry``). The drivers
never wait for it.

Each request carries ``X-Raymail-Event`` (the event id: deliveries are at least once, so a
receiver drops ids it has seen), ``X-Raymail-Timestamp`` (Unix seconds) and
``X-Raymail-Signature: sha256=HEX``, the HMAC-SHA256 of ``TIMESTAMP.BODY`` under the spec's
``status_webhook_secret``; :func:`verify_signature` is the receiver's check.

Several schedulers on one queue share the outbox: a row is claimed by moving its
``next_at`` forward in a conditional update before the POST, so only one sends it at a time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Final

from raymail.errors import RaymailError
from raymail.queue.store import CampaignQueue
from raymail.spec import exponential_backoff

log = logging.getLogger(__name__)

SIGNATURE_HEADER: Final = "X-Raymail-Signature"
TIMESTAMP_HEADER: Final = "X-Raymail-Timestamp"
EVENT_HEADER: Final = "X-Raymail-Event"


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=HEX`` of ``TIMESTAMP.BODY`` under ``secret``."""
    mac = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_signature(
    secret: str, timestamp: str, body: bytes, signature: str, *, max_age_s: float = 300.0
) -> bool:
    """A receiver's check: the signature matches and the timestamp is recent."""
    try:
        age = abs(time.time() - float(timestamp))
    except ValueError:
        return False
    return age <= max_age_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


@dataclass(frozen=True)
class WebhookSettings:
    """How hard the sender tries."""

    timeout_s: float = 10.0
    max_attempts: int = 8
    initial_backoff_s: float = 1.0
    max_backoff_s: float = 300.0
    claim_s: float = 60.0  # a claimed row is left alone this long by other senders
    batch: int = 50


class WebhookSender:
    """Delivers the outbox in a background thread (or one pass at a time: :meth:`deliver`)."""

    def __init__(
        self, queue: CampaignQueue, settings: WebhookSettings | None = None, poll_s: float = 0.5
    ) -> None:
        self.queue = queue
        self.settings = settings or WebhookSettings()
        self.poll_s = poll_s
        self.delivered = 0
        self.failed_attempts = 0
        self._secrets: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="raymail-webhooks", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.settings.timeout_s + 5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                sent = self.deliver()
            except RaymailError as exc:
                log.warning("webhook outbox unreadable for now: %s", exc)
                sent = 0
            if not sent:
                self._stop.wait(self.poll_s)

    def deliver(self) -> int:
        """One pass over the due rows; returns how many were attempted."""
        now = time.time()
        rows = self.queue.db.query(
            "SELECT id, entry_id, url, body, attempts, next_at FROM webhook_outbox "
            "WHERE delivered_at IS NULL AND parked = 0 AND next_at <= ? ORDER BY id LIMIT ?",
            (now, self.settings.batch),
        )
        attempted = 0
        for row_id, entry_id, url, body, attempts, next_at in rows:
            if self._stop.is_set():
                break
            claimed = self.queue.db.execute(
                "UPDATE webhook_outbox SET next_at = ? WHERE id = ? AND next_at = ? "
                "AND delivered_at IS NULL",
                (now + self.settings.claim_s, row_id, next_at),
            )
            if not claimed:
                continue  # another scheduler's sender has it
            attempted += 1
            error = self._post(str(url), str(entry_id), str(body).encode("utf-8"))
            self._settle(int(row_id), int(attempts) + 1, error)
        return attempted

    def _post(self, url: str, entry_id: str, body: bytes) -> str | None:
        """POST one event; None on a 2xx, else what went wrong."""
        secret = self._secret(entry_id)
        timestamp = str(int(time.time()))
        event = str(json.loads(body).get("event", ""))
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "raymail-status/1",
                EVENT_HEADER: event,
                TIMESTAMP_HEADER: timestamp,
                SIGNATURE_HEADER: sign(secret, timestamp, body),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            return f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None if 200 <= status < 300 else f"HTTP {status}"

    def _settle(self, row_id: int, attempts: int, error: str | None) -> None:
        now = time.time()
        if error is None:
            self.delivered += 1
            self.queue.db.execute(
                "UPDATE webhook_outbox SET delivered_at = ?, attempts = ?, last_error = NULL "
                "WHERE id = ?",
                (now, attempts, row_id),
            )
            return
        self.failed_attempts += 1
        s = self.settings
        backoff = exponential_backoff(attempts, s.initial_backoff_s, 2.0, s.max_backoff_s)
        parked = int(attempts >= s.max_attempts)
        self.queue.db.execute(
            "UPDATE webhook_outbox SET attempts = ?, next_at = ?, parked = ?, last_error = ? "
            "WHERE id = ?",
            (attempts, now + backoff, parked, error, row_id),
        )
        log.info("webhook %d: %s (attempt %d%s)", row_id, error, attempts, ", parked" * parked)

    def _secret(self, entry_id: str) -> str:
        if entry_id not in self._secrets:
            spec = self.queue.get(entry_id).spec()
            self._secrets[entry_id] = spec.status_webhook_secret or ""
        return self._secrets[entry_id]


def unpark(queue: CampaignQueue) -> int:
    """Give parked deliveries a fresh set of attempts; returns how many."""
    return queue.db.execute(
        "UPDATE webhook_outbox SET parked = 0, attempts = 0, next_at = ? "
        "WHERE parked = 1 AND delivered_at IS NULL",
        (time.time(),),
    )


def outbox_counts(queue: CampaignQueue) -> dict[str, int]:
    """Delivered, pending and parked deliveries."""
    rows = queue.db.query(
        "SELECT SUM(CASE WHEN delivered_at IS NOT NULL THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN delivered_at IS NULL AND parked = 0 THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN delivered_at IS NULL AND parked = 1 THEN 1 ELSE 0 END) FROM webhook_outbox"
    )
    delivered, pending, parked = (int(v or 0) for v in rows[0])
    return {"delivered": delivered, "pending": pending, "parked": parked}
