"""Signed tokens that tie a returned message or an unsubscribe back to campaign and recipient.

A token is 38 lower-case hex characters (19 bytes), so it is safe in an address's local
part (``bounces+TOKEN@bounce.example`` stays within 64 characters), survives mail systems
that change the case of local parts, and needs no escaping in a URL::

    byte 0       version (high nibble) and kind (low nibble)
    bytes 1-4    campaign tag: keyed hash of the campaign id
    bytes 5-12   recipient tag: keyed hash of the lower-cased address (zero: campaign only)
    bytes 13-18  MAC over bytes 0-12

Click tokens (:meth:`TokenSigner.link_token`) carry two more bytes before the MAC, the
link's index in the campaign's link table (42 hex characters), or, for a target rendered
per recipient, the index 0xFFFF and the URL after a dot (URL-safe base64, inside the MAC).

The address itself is not in the token: a reversible encoding does not fit 64 characters
for long addresses, and two schemes (reversible when short, hashed when long) would mean
two code paths for every consumer. The C servers (returns processing) resolve a recipient
tag through the ledger with :func:`recipient_tag`, and a campaign tag by passing the
candidate campaign ids to :func:`decode_token`.

Hashes and MACs are keyed BLAKE2b (RFC 7693), a MAC by construction and about twice as fast
as HMAC-SHA256 here; this runs three times per message on the delivery hot path. The key is
SHA-256 of the campaign's ``verp_secret``; a different personalisation string separates each
use, so one kind of token can never be passed off as another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = [
    "TOKEN_LENGTH",
    "LinkToken",
    "TokenKind",
    "TokenSigner",
    "VerpToken",
    "campaign_tag",
    "decode_link_token",
    "decode_token",
    "decode_verp",
    "recipient_tag",
]

_VERSION: Final = 1
_CAMPAIGN_BYTES: Final = 4
_RECIPIENT_BYTES: Final = 8
_MAC_BYTES: Final = 6
_PAYLOAD_BYTES: Final = 1 + _CAMPAIGN_BYTES + _RECIPIENT_BYTES
TOKEN_LENGTH: Final = 2 * (_PAYLOAD_BYTES + _MAC_BYTES)
_NO_RECIPIENT: Final = bytes(_RECIPIENT_BYTES)
_HEX: Final = frozenset("0123456789abcdef")
_B64: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_URL_IN_TOKEN: Final = 0xFFFF  # link index meaning: the target URL is in the token
_LINK_TOKEN_LENGTH: Final = 2 * (_PAYLOAD_BYTES + 2 + _MAC_BYTES)


class TokenKind(StrEnum):
    """What a token may be used for; part of the signed payload."""

    BOUNCE = "bounce"  # the VERP envelope sender (Return-Path)
    UNSUBSCRIBE = "unsubscribe"  # List-Unsubscribe mailto and one-click URL
    OPEN = "open"  # the open pixel's URL
    CLICK = "click"  # a click redirect (with a link index: see link_token)


_KIND_CODE: Final = {
    TokenKind.BOUNCE: 1,
    TokenKind.UNSUBSCRIBE: 2,
    TokenKind.OPEN: 3,
    TokenKind.CLICK: 4,
}
_CODE_KIND: Final = {code: kind for kind, code in _KIND_CODE.items()}


@dataclass(frozen=True, slots=True)
class VerpToken:
    """A verified token. ``recipient_tag`` is None for a campaign-only (shared) token."""

    kind: TokenKind
    campaign_tag: str
    recipient_tag: str | None
    campaign: str | None = None  # set when decode was given the candidate campaign ids


def _key(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def _hash(key: bytes, person: bytes, data: bytes, size: int) -> bytes:
    return hashlib.blake2b(data, digest_size=size, key=key, person=person).digest()


def _campaign_tag(key: bytes, campaign: str) -> bytes:
    return _hash(key, b"raymail-campaign", campaign.encode("utf-8"), _CAMPAIGN_BYTES)


def _recipient_tag(key: bytes, email: str) -> bytes:
    return _hash(key, b"raymail-rcpt", email.lower().encode("utf-8"), _RECIPIENT_BYTES)


def _mac(key: bytes, payload: bytes) -> bytes:
    return _hash(key, b"raymail-mac", payload, _MAC_BYTES)


def campaign_tag(campaign: str, secret: str) -> str:
    """The campaign tag (hex) a token carries for ``campaign``."""
    return _campaign_tag(_key(secret), campaign).hex()


def recipient_tag(email: str, secret: str) -> str:
    """The recipient tag (hex) for an address: how the ledger resolves a token's recipient."""
    return _recipient_tag(_key(secret), email).hex()


class TokenSigner:
    """Makes one campaign's tokens; keyed once, then a few microseconds per token.

    Keeps the last address's recipient tag: the delivery server asks for the message, its
    Message-ID and its envelope sender of one recipient in a row.
    """

    __slots__ = ("_campaign_tag", "_key", "_last_email", "_last_tag", "campaign", "campaign_tag")

    def __init__(self, campaign: str, secret: str) -> None:
        self.campaign = campaign
        self._key = _key(secret)
        self._campaign_tag = _campaign_tag(self._key, campaign)
        self.campaign_tag = self._campaign_tag.hex()
        self._last_email: str | None = None
        self._last_tag = _NO_RECIPIENT

    def recipient_tag(self, email: str) -> bytes:
        if email != self._last_email:
            self._last_tag = _recipient_tag(self._key, email)
            self._last_email = email
        return self._last_tag

    def token(self, kind: TokenKind, email: str | None) -> str:
        """A token for one recipient, or campaign-only when ``email`` is None."""
        tag = _NO_RECIPIENT if email is None else self.recipient_tag(email)
        payload = bytes((_VERSION << 4 | _KIND_CODE[kind],)) + self._campaign_tag + tag
        return (payload + _mac(self._key, payload)).hex()

    def link_token(self, email: str, link: int, url: str | None = None) -> str:
        """A click token: link ``link`` of the campaign's link table, or ``url`` itself.

        ``url`` (for a link whose target differs per recipient) rides after a dot as
        URL-safe base64 and is covered by the MAC, so the redirect target is always signed.
        """
        if not 0 <= link < _URL_IN_TOKEN:
            raise ValueError(f"link index {link} out of range")
        index = _URL_IN_TOKEN if url is not None else link
        payload = (
            bytes((_VERSION << 4 | _KIND_CODE[TokenKind.CLICK],))
            + self._campaign_tag
            + self.recipient_tag(email)
            + index.to_bytes(2, "big")
        )
        extra = b"" if url is None else url.encode("utf-8")
        token = (payload + _mac(self._key, payload + extra)).hex()
        return token if url is None else f"{token}.{_b64(extra)}"

    def digest(self, person: bytes, data: bytes, size: int) -> bytes:
        """A keyed hash for other deterministic ids (e.g. a shared message's Message-ID)."""
        return _hash(self._key, person, data, size)


def decode_token(
    token: str, secret: str, campaigns: Iterable[str] | None = None
) -> VerpToken | None:
    """Verify a token; None when it is malformed, forged, or (given ``campaigns``) unknown."""
    token = token.strip().lower()
    if len(token) != TOKEN_LENGTH or not _HEX.issuperset(token):
        return None
    raw = bytes.fromhex(token)
    payload, mac = raw[:_PAYLOAD_BYTES], raw[_PAYLOAD_BYTES:]
    key = _key(secret)
    if not hmac.compare_digest(mac, _mac(key, payload)):
        return None
    kind = _CODE_KIND.get(payload[0] & 0x0F)
    if payload[0] >> 4 != _VERSION or kind is None:
        return None
    tag = payload[1 : 1 + _CAMPAIGN_BYTES]
    rcpt = payload[1 + _CAMPAIGN_BYTES :]
    name = None
    if campaigns is not None:
        name = next((c for c in campaigns if _campaign_tag(key, c) == tag), None)
        if name is None:
            return None
    return VerpToken(kind, tag.hex(), None if rcpt == _NO_RECIPIENT else rcpt.hex(), name)


@dataclass(frozen=True, slots=True)
class LinkToken:
    """A verified click token: the link's index in the table, or the signed URL."""

    token: VerpToken
    link: int | None
    url: str | None


def decode_link_token(token: str, secret: str) -> LinkToken | None:
    """Verify a click token; None when malformed or forged."""
    head, dot, tail = token.strip().partition(".")
    head = head.lower()
    if len(head) != _LINK_TOKEN_LENGTH or not _HEX.issuperset(head):
        return None
    try:
        extra = _unb64(tail) if dot else b""
        url = extra.decode("utf-8") if dot else None
    except ValueError:
        return None
    raw = bytes.fromhex(head)
    payload, mac = raw[: _PAYLOAD_BYTES + 2], raw[_PAYLOAD_BYTES + 2 :]
    if not hmac.compare_digest(mac, _mac(_key(secret), payload + extra)):
        return None
    if payload[0] != (_VERSION << 4 | _KIND_CODE[TokenKind.CLICK]):
        return None
    index = int.from_bytes(payload[_PAYLOAD_BYTES:], "big")
    if (index == _URL_IN_TOKEN) != (url is not None):
        return None
    rcpt = payload[1 + _CAMPAIGN_BYTES : _PAYLOAD_BYTES]
    verified = VerpToken(
        TokenKind.CLICK,
        payload[1 : 1 + _CAMPAIGN_BYTES].hex(),
        None if rcpt == _NO_RECIPIENT else rcpt.hex(),
    )
    return LinkToken(verified, None if url is not None else index, url)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    if not text or not _B64.issuperset(text):
        raise ValueError("not URL-safe base64")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode_verp(
    address: str, secret: str, campaigns: Iterable[str] | None = None
) -> VerpToken | None:
    """Verify the token in ``prefix+TOKEN@domain`` (angle brackets allowed); None if none."""
    local = address.strip().strip("<>").rpartition("@")[0]
    prefix, plus, token = local.rpartition("+")
    if not plus or not prefix:
        return None
    return decode_token(token, secret, campaigns)
