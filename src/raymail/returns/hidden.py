"""Recipients a bounce does not name in its report: in the returned copy, or in a VERP path.

Used only when the DSN fields and the reporter's text name nobody. In order:

1. the returned copy's single ``To`` address (bulk mail goes to one recipient at a time);
2. the returned copy's envelope headers (``X-Original-To``, ``Delivered-To``,
   ``Envelope-To``, ...), which receiving systems add with the address they delivered to;
3. a VERP return path (``prefix+local=domain@bounces.example``, or with ``-``): of the
   returned copy (its ``Return-Path`` is our envelope sender), else of the bounce itself
   (it is addressed to that path). This is the generic encoding many senders use; a
   campaign's own signed token is decoded by the injected decoder instead (classify.py).
"""

from __future__ import annotations

import re
from typing import Final

from raymail.returns.dsn import find_addresses
from raymail.returns.parse import ParsedMessage, header_text

_ENVELOPE_HEADERS: Final = (
    "X-Original-To",
    "Delivered-To",
    "Envelope-To",
    "X-Envelope-To",
    "X-Rcpt-To",
    "X-Failed-Recipients",
)
_PATH_HEADERS: Final = ("To", "X-Original-To", "Delivered-To", "Envelope-To")
# local part = prefix, a '+' or '-', the recipient's local part, '=', its domain.
_VERP_RE: Final = re.compile(
    r"^[A-Za-z0-9._]+?[+\-]([A-Za-z0-9!#$%&'*/?^_`{|}~.+\-]+)=([A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*"
    r"\.[A-Za-z]{2,24})@"
)


def _lower(text: str) -> list[str]:
    return [a.lower() for a in find_addresses(text)]


def verp_recipient(address: str) -> str | None:
    """``news+anna=example.com@bounces.example`` -> ``anna@example.com`` (else None)."""
    match = _VERP_RE.match(address)
    if match is None:
        return None
    return f"{match.group(1)}@{match.group(2)}".lower()


def hidden_recipients(parsed: ParsedMessage, exclude: set[str]) -> tuple[list[str], str]:
    """(recipients, where they were found) from the returned copy or a VERP path."""
    for headers in parsed.original_headers:
        found = [a for a in _lower(header_text(headers, "To")) if a not in exclude]
        if len(found) == 1:
            return found, "returned copy's To"
    for headers in parsed.original_headers:
        for name in _ENVELOPE_HEADERS:
            found = [a for a in _lower(header_text(headers, name)) if a not in exclude]
            if found:
                return list(dict.fromkeys(found)), f"returned copy's {name}"
    paths = [header_text(h, "Return-Path") for h in parsed.original_headers]
    for name in _PATH_HEADERS:
        paths.extend(parsed.headers(name))
    for value in paths:
        for address in find_addresses(value):
            decoded = verp_recipient(address)
            if decoded is not None:
                return [decoded], "VERP return path"
    return [], ""
