"""Which addresses a returned message is about, read from its headers.

The VERP token in our return path names the recipient (and maybe the campaign) most surely;
the bounce's own From/To and the original's sender are ours or the reporter's, never a
failed recipient, so the text scanners are told to skip them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from raymail.returns.dsn import find_addresses
from raymail.returns.parse import ParsedMessage, header_text

# Given an address our return path may appear as ("bounces+TOKEN@return.example"), return
# the recipient it was sent to, or None when it carries no valid token. A result of the form
# "campaign:recipient@example.org" also names the campaign. Injected, so this package does
# not depend on the token codec or the ledger that resolves a token's recipient tag.
VerpDecoder = Callable[[str], str | None]

# Our own return path shows up here; the VERP token lives in its local part.
_VERP_HEADERS: Final = (
    "X-Original-To",
    "Delivered-To",
    "Envelope-To",
    "X-Envelope-To",
    "X-Delivered-To",
    "To",
    "X-Rcpt-To",
)
_CAMPAIGN_HEADERS: Final = ("X-Raymail-Campaign", "X-Campaign-Id", "X-Campaign")
_EXCLUDE_HEADERS: Final = ("From", "Sender", "Reply-To", "Return-Path", "To", "Cc")
_SOFT_EXCLUDE_HEADERS: Final = ("Delivered-To", "X-Original-To", "Envelope-To")


def addresses(text: str) -> list[str]:
    """Lower-cased addresses in a header value."""
    return [a.lower() for a in find_addresses(text)]


def find_verp(
    parsed: ParsedMessage, decoder: VerpDecoder | None, notes: list[str]
) -> tuple[str | None, str | None]:
    """(recipient, campaign) from the VERP token in the headers our return path shows in."""
    campaign = None
    for headers in parsed.original_headers:
        for name in _CAMPAIGN_HEADERS:
            value = header_text(headers, name).strip()
            if value:
                campaign = value
                break
        if campaign:
            break
    if decoder is None:
        return None, campaign
    candidates: list[str] = []
    for name in _VERP_HEADERS:
        for value in parsed.headers(name):
            candidates.extend(addresses(value))
    for headers in parsed.original_headers:
        candidates.extend(addresses(header_text(headers, "Return-Path")))
    for candidate in dict.fromkeys(candidates):
        try:
            decoded = decoder(candidate)
        except Exception as exc:  # a codec bug must not lose the message
            notes.append(f"verp decoder failed: {type(exc).__name__}")
            continue
        if not decoded:
            continue
        match = re.fullmatch(r"([^@:\s]+):(\S+@\S+)", decoded.strip())
        if match:
            return match.group(2).lower(), match.group(1)
        return decoded.strip().lower(), campaign
    return None, campaign


def exclusions(parsed: ParsedMessage) -> tuple[set[str], set[str]]:
    """Addresses that are not failed recipients: (ours and the reporter's, the sender's)."""
    hard: set[str] = set()
    for name in _EXCLUDE_HEADERS:
        for value in parsed.headers(name):
            hard.update(addresses(value))
    soft: set[str] = set()
    for name in _SOFT_EXCLUDE_HEADERS:
        for value in parsed.headers(name):
            soft.update(addresses(value))
    for headers in parsed.original_headers[:3]:
        for name in ("From", "Sender", "Return-Path", "Reply-To", "Errors-To"):
            soft.update(addresses(header_text(headers, name)))
    return hard, soft - hard
