"""RFC 5965 Abuse Reporting Format: complaints ("this is spam") from feedback loops.

An ARF report is multipart/report; report-type=feedback-report with a machine-readable
message/feedback-report part (Feedback-Type, Original-Rcpt-To, ...) and the complained-about
message or its headers. Some providers send the same content with a broken structure, so the
fields are also looked for in text parts, and a few well-known non-ARF loops are recognised.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from raymail.returns.dsn import find_addresses, parse_fields
from raymail.returns.parse import ParsedMessage, header_text

_FEEDBACK_INLINE_RE: Final = re.compile(r"^Feedback-Type[ \t]*:[ \t]*([\w.\-]+)", re.I | re.M)
# Complaint loops that do not use ARF, recognised by their own headers or phrases.
_NON_ARF_HEADERS: Final = ("X-HmXmrOriginalRecipient", "X-AOL-Feedback-Report")
_NON_ARF_TEXT_RE: Final = re.compile(
    r"this is an? (?:e-?mail )?(?:abuse|complaint|spam) report"
    r"|(?:email|message) (?:was )?(?:reported|marked) as (?:spam|junk|abuse)"
    r"|(?:complaint|abuse) (?:about|regarding|from) (?:a |one of )?(?:message|email|mail)"
    r"|feedback loop",
    re.I,
)


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    """The fields of one complaint report."""

    feedback_type: str
    recipients: list[str]  # complained-about recipients (Original-Rcpt-To, else original To)
    original_mail_from: str
    user_agent: str
    source_ip: str
    arrival_date: str


def _addresses(value: str) -> list[str]:
    """Addresses in a field value, in order."""
    return find_addresses(value)


def detect_feedback(parsed: ParsedMessage) -> FeedbackReport | None:
    """The complaint report in ``parsed``, or None when it is not a complaint."""
    texts = list(parsed.feedback_texts)
    if not texts:
        for text in parsed.narrative:
            if _FEEDBACK_INLINE_RE.search(text):
                texts.append(text)
                break
    fields: dict[str, str] = {}
    rcpts: list[str] = []
    for text in texts:
        message_fields, records = parse_fields(text)
        for record in [message_fields, *records]:
            for name, value in record.items():
                fields.setdefault(name, value)
        for line in re.findall(
            r"^(?:Original-Rcpt-To|Removal-Recipient)[ \t]*:(.*)$", text, re.I | re.M
        ):
            rcpts.extend(_addresses(line))
    is_arf = parsed.report_type == "feedback-report" or "feedback-type" in fields
    if not is_arf:
        extra = _non_arf(parsed)
        if extra is None:
            return None
        rcpts.extend(extra)
        fields.setdefault("feedback-type", "abuse")
    if not rcpts:
        for headers in parsed.original_headers:
            for name in ("To", "Delivered-To", "X-Original-To"):
                rcpts.extend(_addresses(header_text(headers, name)))
            if rcpts:
                break
    feedback_type = (fields.get("feedback-type") or "abuse").strip().lower() or "abuse"
    return FeedbackReport(
        feedback_type=feedback_type,
        recipients=list(dict.fromkeys(r.lower() for r in rcpts)),
        original_mail_from=fields.get("original-mail-from", "").strip("<> "),
        user_agent=fields.get("user-agent", ""),
        source_ip=fields.get("source-ip", ""),
        arrival_date=fields.get("arrival-date", "") or fields.get("received-date", ""),
    )


def _non_arf(parsed: ParsedMessage) -> list[str] | None:
    """Recipients of a non-ARF complaint (Hotmail JMRP style), or None if not one."""
    for name in _NON_ARF_HEADERS:
        for headers in [parsed.message, *parsed.original_headers]:
            if headers is None:
                continue
            value = header_text(headers, name)
            if value:
                return _addresses(value)
    subject = parsed.subject.lower()
    if ("complaint" in subject or "abuse report" in subject) and _NON_ARF_TEXT_RE.search(
        parsed.text[:4000]
    ):
        return []
    return None
