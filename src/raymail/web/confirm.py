"""Signed, expiring subscribe confirmations (double opt-in).

The token carries what the confirmation must add (list id, address, merge fields) and
when it expires, so confirming needs no pending-subscription state anywhere: the web
service verifies the MAC and the time and appends a ``confirm`` change. The MAC is keyed
BLAKE2b like the VERP tokens (:mod:`raymail.compose.verp`), with its own personalisation,
so no other token can pass for a confirmation.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["Confirmation", "ConfirmationError", "make_confirmation", "read_confirmation"]

_PERSON: Final = b"raymail-confirm"
_MAC_BYTES: Final = 16
MAX_TOKEN_CHARS: Final = 4096


class ConfirmationError(ValueError):
    """Why a confirmation token is refused: ``expired`` tells a stale link from a bad one."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


@dataclass(frozen=True, slots=True)
class Confirmation:
    list_id: str
    email: str
    fields: dict[str, str]
    expires: float


def _mac(secret: str, data: bytes) -> bytes:
    key = hashlib.sha256(secret.encode("utf-8")).digest()
    return hashlib.blake2b(data, digest_size=_MAC_BYTES, key=key, person=_PERSON).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_confirmation(
    secret: str, list_id: str, email: str, fields: Mapping[str, str], ttl_s: float
) -> str:
    """The token of one subscribe request, valid for ``ttl_s`` seconds."""
    payload = {
        "l": list_id,
        "e": email,
        "f": dict(fields),
        "x": int(time.time() + ttl_s),
        "n": secrets.token_hex(4),
    }
    data = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return f"{_b64(data)}.{_b64(_mac(secret, data))}"


def read_confirmation(secret: str, token: str, now: float | None = None) -> Confirmation:
    """Verify a token; raises ConfirmationError (malformed, forged or expired)."""
    if len(token) > MAX_TOKEN_CHARS:
        raise ConfirmationError("confirmation token too long")
    body, dot, mac = token.partition(".")
    try:
        data, sent_mac = _unb64(body), _unb64(mac)
    except ValueError:
        raise ConfirmationError("confirmation token is not URL-safe base64") from None
    if not dot or not hmac.compare_digest(sent_mac, _mac(secret, data)):
        raise ConfirmationError("confirmation token does not verify (altered or forged)")
    try:
        payload = json.loads(data)
        confirmation = Confirmation(
            str(payload["l"]),
            str(payload["e"]),
            {str(k): str(v) for k, v in dict(payload["f"]).items()},
            float(payload["x"]),
        )
    except (ValueError, KeyError, TypeError):
        raise ConfirmationError("confirmation token payload is malformed") from None
    if (time.time() if now is None else now) > confirmation.expires:
        raise ConfirmationError("confirmation link has expired", expired=True)
    return confirmation
