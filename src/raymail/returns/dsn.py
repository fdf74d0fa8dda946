"""RFC 3464 delivery status notifications: the per-recipient fields of a bounce.

A DSN is the most trustworthy evidence a return carries: the reporting MTA names each
recipient (Final-Recipient), what happened (Action), the enhanced code (Status, RFC 3463)
and the remote server's own words (Diagnostic-Code). Real DSNs bend the format, so this
reader also accepts fields that are not split into blocks, fields written inline in a
text part, folded values and missing types.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from raymail.returns.reasons import find_smtp_code, find_status

_FIELD_RE: Final = re.compile(r"^([A-Za-z][A-Za-z0-9-]{1,60})[ \t]*:[ \t]*(.*)$")
_RECIPIENT_FIELDS: Final = frozenset(
    {"final-recipient", "original-recipient", "x-actual-recipient"}
)
_PER_RECIPIENT: Final = frozenset(
    {
        "final-recipient",
        "original-recipient",
        "x-actual-recipient",
        "action",
        "status",
        "remote-mta",
        "diagnostic-code",
        "last-attempt-date",
        "will-retry-until",
        "final-log-id",
        "x-supplementary-info",
        "x-display-name",
    }
)
_INLINE_START_RE: Final = re.compile(
    r"^(?:Reporting-MTA|Final-Recipient|Original-Recipient)[ \t]*:", re.I | re.M
)
ADDRESS_RE: Final = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]{1,128}@(?:\[[0-9.:a-fA-F]+\]|[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}"
    r"[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?)*)"
)
_LOCAL_TAIL_RE: Final = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]{1,128}\Z")
_DOMAIN_HEAD_RE: Final = re.compile(ADDRESS_RE.pattern.split("@", 1)[1])
_XTEXT_RE: Final = re.compile(r"\+([0-9A-Fa-f]{2})")


@dataclass(frozen=True, slots=True)
class RecipientReport:
    """One per-recipient block of a DSN."""

    recipient: str  # Original-Recipient when present (what the sender used), else Final
    original_recipient: str
    final_recipient: str
    action: str
    status: str | None
    smtp_code: int | None
    diagnostic: str
    diagnostic_type: str
    remote_mta: str
    reporting_mta: str


def find_addresses(text: str, limit: int = 200) -> list[str]:
    """Addresses in ``text``, found from each '@' outwards (far faster than a scan)."""
    out: list[str] = []
    at = text.find("@")
    while at != -1 and len(out) < limit:
        local = _LOCAL_TAIL_RE.search(text, max(0, at - 128), at)
        domain = _DOMAIN_HEAD_RE.match(text, at + 1)
        if local and domain:
            out.append(f"{local.group(0)}@{domain.group(0)}".strip("."))
        at = text.find("@", at + 1)
    return out


def _unfold_lines(text: str) -> list[str]:
    """Join continuation lines; keep blank lines as block separators."""
    out: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line[:1] in {" ", "\t"} and line.strip() and out and out[-1]:
            out[-1] = out[-1] + " " + line.strip()
        else:
            out.append(line.rstrip())
    return out


def _typed_value(value: str) -> tuple[str, str]:
    """'rfc822; user@example.com' -> ('rfc822', 'user@example.com')."""
    kind, sep, rest = value.partition(";")
    if sep and re.fullmatch(r"[ \t]*[A-Za-z0-9][A-Za-z0-9.\-]{0,30}[ \t]*", kind):
        return kind.strip().lower(), rest.strip()
    return "", value.strip()


def address_of(value: str, *, xtext: bool = False) -> str:
    """The bare address in a recipient field value ('' when there is none)."""
    _, rest = _typed_value(value)
    if xtext:
        rest = _XTEXT_RE.sub(lambda m: chr(int(m.group(1), 16)), rest)
    rest = rest.strip().strip("<>\"' ")
    found = find_addresses(rest, limit=1)
    if found:
        return found[0]
    return rest if rest and " " not in rest and len(rest) < 256 else ""


def parse_fields(text: str) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Per-message fields and the list of per-recipient field dicts (names lower-cased)."""
    message_fields: dict[str, str] = {}
    records: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in _unfold_lines(text):
        if not line.strip():
            if current:
                records.append(current)
            current = None
            continue
        match = _FIELD_RE.match(line)
        if not match:
            continue
        name, value = match.group(1).lower(), match.group(2).strip()
        if name in _RECIPIENT_FIELDS and current is not None and name in current:
            records.append(current)  # a new recipient without a blank line between
            current = None
        if name in _PER_RECIPIENT:
            if current is None:
                current = {}
            current.setdefault(name, value)
        elif current is None:
            message_fields.setdefault(name, value)
        else:
            current.setdefault(name, value)
    if current:
        records.append(current)
    return message_fields, records


def reports_from_fields(text: str) -> list[RecipientReport]:
    """Per-recipient reports from the text of a message/delivery-status part."""
    message_fields, records = parse_fields(text)
    reporting = _typed_value(message_fields.get("reporting-mta", ""))[1]
    out: list[RecipientReport] = []
    for record in records:
        final = address_of(record.get("final-recipient", ""))
        original = address_of(record.get("original-recipient", ""), xtext=True)
        actual = address_of(record.get("x-actual-recipient", ""))
        # The original recipient is the address we sent to; the final one may be an alias.
        recipient = original or final or actual
        if not recipient and "status" not in record and "action" not in record:
            continue
        dtype, diagnostic = _typed_value(record.get("diagnostic-code", ""))
        status_field = record.get("status", "")
        status = find_status(status_field)
        if status is None or status.endswith(".0.0"):
            # Many MTAs write 5.0.0 and put the real code in the reply text.
            better = find_status(diagnostic, prose=True)
            if better is not None and (status is None or better[0] == status[0]):
                status = better
        code = find_smtp_code(diagnostic) or find_smtp_code(status_field)
        out.append(
            RecipientReport(
                recipient=recipient,
                original_recipient=original,
                final_recipient=final,
                action=record.get("action", "").strip().lower().split(" ")[0],
                status=status,
                smtp_code=code,
                diagnostic=" ".join(diagnostic.split()),
                diagnostic_type=dtype,
                remote_mta=_typed_value(record.get("remote-mta", ""))[1],
                reporting_mta=reporting,
            )
        )
    return out


def inline_fields(text: str) -> str:
    """DSN fields written into a text part (no delivery-status part), or ''."""
    match = _INLINE_START_RE.search(text)
    if not match:
        return ""
    return text[match.start() : match.start() + 20000]
