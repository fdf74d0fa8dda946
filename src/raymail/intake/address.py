"""One email address: normalise it, or say exactly why it is not usable.

Shared by the recipient loader (for the rare rows its vectorised check cannot settle) and by
the message builder (sender, reply-to and return addresses). Pure Python and light to
import: delivery servers load it without pulling in Arrow.

Rules: RFC 5321 dot-atom local part (1-64 ASCII characters; quoted local parts and SMTPUTF8
are refused on purpose: almost no bulk list has them legitimately and many receivers refuse
them), a domain of LDH labels with at least one dot, at most 253 characters, lower-cased,
non-ASCII domains mapped to their A-labels (IDNA 2008 with UTS 46 mapping), and at most
254 characters in all.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

import idna

__all__ = ["ATEXT", "MAX_ADDRESS", "MAX_DOMAIN", "MAX_LOCAL", "AddressCheck", "check_address"]

MAX_LOCAL: Final = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN: Final = 253  # RFC 1035 2.3.4, without the trailing root dot
MAX_LABEL: Final = 63
MAX_ADDRESS: Final = 254  # RFC 5321 path limit (256) minus the angle brackets
ATEXT: Final = "A-Za-z0-9!#$%&'*+/=?^_`{|}~-"  # RFC 5322 atext, as a regex class body

_ATEXT_CHAR: Final = re.compile(rf"[{ATEXT}]")
_LDH_CHAR: Final = re.compile(r"[a-z0-9-]")
_SPACE_OR_CONTROL: Final = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")


class AddressCheck(NamedTuple):
    """The result of checking one address: the normalised form, or why it was rejected."""

    email: str | None
    domain: str | None
    reason: str | None


def _bad(reason: str) -> AddressCheck:
    return AddressCheck(None, None, reason)


def check_address(value: str | None) -> AddressCheck:
    """Normalise one address or give the specific reason it is invalid.

    The slow, exact path: whatever the vectorised fast check accepts, this accepts too,
    with the same result. Quoted local parts and non-ASCII local parts (SMTPUTF8) are
    rejected on purpose: almost no bulk list has them legitimately, and many receiving
    servers refuse them anyway.
    """
    address = (value or "").strip()
    if not address:
        return _bad("empty address")
    if address.startswith('"'):
        return _bad("quoted local part not supported")
    if _SPACE_OR_CONTROL.search(address):
        return _bad("whitespace or control character in address")
    ats = address.count("@")
    if ats == 0:
        return _bad("missing @")
    if ats > 1:
        return _bad("more than one @")
    local, domain = address.split("@")
    reason = _local_problem(local)
    if reason:
        return _bad(reason)
    if not domain:
        return _bad("empty domain")
    ascii_domain = _ascii_domain(domain)
    if ascii_domain.reason:
        return _bad(ascii_domain.reason)
    domain = ascii_domain.domain
    reason = _domain_problem(domain)
    if reason:
        return _bad(reason)
    normalised = f"{local}@{domain}"
    if len(normalised) > MAX_ADDRESS:
        return _bad(f"address longer than {MAX_ADDRESS} characters")
    return AddressCheck(normalised, domain, None)


def _local_problem(local: str) -> str | None:
    if not local:
        return "empty local part"
    if not local.isascii():
        return "non-ASCII local part (SMTPUTF8 not supported)"
    if len(local) > MAX_LOCAL:
        return f"local part longer than {MAX_LOCAL} characters"
    if local.startswith(".") or local.endswith("."):
        return "local part starts or ends with a dot"
    if ".." in local:
        return "consecutive dots in local part"
    for char in local:
        if char != "." and not _ATEXT_CHAR.match(char):
            return f"invalid character {char!r} in local part"
    return None


class _Domain(NamedTuple):
    domain: str
    reason: str | None


def _ascii_domain(domain: str) -> _Domain:
    """Lower-case an ASCII domain; map a non-ASCII one (UTS 46) to its A-labels."""
    if domain.isascii():
        return _Domain(domain.lower(), None)
    try:
        mapped = idna.uts46_remap(domain, std3_rules=False, transitional=False)
    except idna.IDNAError as exc:
        return _Domain(domain, f"invalid international domain: {exc}")
    labels = []
    for label in mapped.split("."):
        if label.isascii():
            labels.append(label)
            continue
        try:
            labels.append(idna.alabel(label).decode("ascii"))
        except (idna.IDNAError, UnicodeError) as exc:
            return _Domain(domain, f"invalid international domain label {label!r}: {exc}")
    return _Domain(".".join(labels), None)


def _domain_problem(domain: str) -> str | None:
    if domain.startswith("."):
        return "domain starts with a dot"
    if domain.endswith("."):
        return "domain ends with a dot"
    if "." not in domain:
        return "domain has no dot"
    if len(domain) > MAX_DOMAIN:
        return f"domain longer than {MAX_DOMAIN} characters"
    for label in domain.split("."):
        if not label:
            return "empty label in domain"
        if len(label) > MAX_LABEL:
            return "domain label too long"
        for char in label:
            if not _LDH_CHAR.match(char):
                return f"invalid character {char!r} in domain"
        if label.startswith("-") or label.endswith("-"):
            return "domain label starts or ends with a hyphen"
    return None
