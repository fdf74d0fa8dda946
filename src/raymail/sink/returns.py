"""Returns the sink writes itself: RFC 3464 bounces, RFC 3834 auto-replies, human replies.

A sink rule can accept a message (250) and then *return* it, as a receiving MTA does when it
finds out later that the mailbox is gone or full, or as a person or a vacation program
does. These builders make those messages with the ``email`` package, from the accepted
message's bytes, so returns processing is tested against the same shapes real MTAs send:

- ``bounce_hard``: multipart/report, Action ``failed``, the rule's 5xx reply as
  Diagnostic-Code (default 5.1.1 user unknown), the original headers attached;
- ``bounce_soft``: the same with a temporary reply (default 4.2.2 mailbox full) returned
  as failed, which is what Postfix sends when the queue lifetime runs out;
- ``auto_reply``: an out-of-office answer with ``Auto-Submitted: auto-replied``;
- ``human_reply``: a person's answer (``Re:``, quoted text, no automation headers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.parser import BytesHeaderParser
from email.utils import format_datetime, make_msgid
from typing import Final

from raymail.sink.config import Behaviour

_HEAD_LIMIT: Final = 64 * 1024
_REPLY_RE: Final = re.compile(r"^([245]\d\d)(?:[ -]+([245]\.\d{1,3}\.\d{1,3}))?\s*(.*)$", re.S)


@dataclass(frozen=True, slots=True)
class Original:
    """What a return needs from the accepted message."""

    headers: str  # the header block as text
    subject: str
    message_id: str | None

    @classmethod
    def parse(cls, raw: bytes) -> Original:
        end = raw.find(b"\r\n\r\n", 0, _HEAD_LIMIT)
        if end < 0:
            end = raw.find(b"\n\n", 0, _HEAD_LIMIT)
        block = raw[: end if end >= 0 else min(len(raw), _HEAD_LIMIT)]
        parsed = BytesHeaderParser(policy=policy.default).parsebytes(block + b"\r\n\r\n")
        text = block.decode("utf-8", "replace").replace("\r\n", "\n")
        subject = str(parsed.get("Subject", "") or "")
        message_id = parsed.get("Message-ID")
        return cls(text + "\n", subject, str(message_id).strip() if message_id else None)


def split_reply(reply: str) -> tuple[int, str | None, str]:
    """(SMTP code, enhanced status or None, text) of one reply line."""
    match = _REPLY_RE.match(reply.strip())
    if match is None:
        return 550, None, reply
    return int(match.group(1)), match.group(2), match.group(3)


def _headers(msg: Message, sender: str, to: str, subject: str, domain: str) -> None:
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime.now(UTC))
    msg["Message-ID"] = make_msgid(domain=domain)


def delivery_status_notification(
    original: Original,
    *,
    envelope_sender: str,
    recipient: str,
    reply: str,
    reporting_mta: str,
    arrived: datetime,
) -> bytes:
    """An RFC 3464 DSN: explanation, message/delivery-status, text/rfc822-headers."""
    code, status, text = split_reply(reply)
    status = status or f"{str(code)[0]}.0.0"
    report = MIMEMultipart("report", report_type="delivery-status")
    _headers(
        report,
        f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        envelope_sender,
        "Undelivered Mail Returned to Sender",
        reporting_mta,
    )
    report["Auto-Submitted"] = "auto-replied"
    explanation = (
        f"This is the mail system at host {reporting_mta}.\n\n"
        "I'm sorry to have to inform you that your message could not\n"
        "be delivered to one or more recipients.\n\n"
        f"<{recipient}>: host {reporting_mta} said: {reply}\n"
    )
    report.attach(MIMEText(explanation, "plain", "us-ascii"))
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {reporting_mta}"
    per_message["Arrival-Date"] = format_datetime(arrived)
    per_recipient = Message()
    per_recipient["Final-Recipient"] = f"rfc822; {recipient}"
    per_recipient["Original-Recipient"] = f"rfc822; {recipient}"
    per_recipient["Action"] = "failed"
    per_recipient["Status"] = status
    per_recipient["Remote-MTA"] = f"dns; {reporting_mta}"
    per_recipient["Diagnostic-Code"] = f"smtp; {code} {status} {text}".strip()
    per_recipient["Last-Attempt-Date"] = format_datetime(datetime.now(UTC))
    status_part = Message()
    status_part["Content-Type"] = "message/delivery-status"
    status_part.set_payload([per_message, per_recipient])
    report.attach(status_part)
    charset = "us-ascii" if original.headers.isascii() else "utf-8"
    report.attach(MIMEText(original.headers, "rfc822-headers", charset))
    return report.as_bytes(policy=policy.SMTP)


def auto_reply(original: Original, *, envelope_sender: str, recipient: str) -> bytes:
    """An RFC 3834 out-of-office answer from ``recipient``."""
    msg = MIMEText(
        "Thank you for your message. I am out of the office until Monday with limited\n"
        "access to email. Your message will not be forwarded.\n",
        "plain",
        "us-ascii",
    )
    _headers(
        msg,
        recipient,
        envelope_sender,
        f"Out of Office: {original.subject}".strip(),
        recipient.rpartition("@")[2] or "sink",
    )
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Autoreply"] = "yes"
    _threading(msg, original)
    return msg.as_bytes(policy=policy.SMTP)


def human_reply(original: Original, *, envelope_sender: str, recipient: str) -> bytes:
    """A person's answer: a question for customer service, the campaign quoted below."""
    quoted = "\n".join(f"> {line}" for line in original.subject.splitlines() or [""])
    text = (
        "Hello,\n\nI bought the blue one last week and it has not arrived yet. Could\n"
        "somebody from your team call me about the delivery?\n\nThanks,\nA customer\n\n"
        f"On the campaign you wrote:\n{quoted}\n"
    )
    msg = MIMEText(text, "plain", "us-ascii" if text.isascii() else "utf-8")
    subject = original.subject
    _headers(
        msg,
        recipient,
        envelope_sender,
        subject if subject.lower().startswith("re:") else f"Re: {subject}",
        recipient.rpartition("@")[2] or "sink",
    )
    _threading(msg, original)
    return msg.as_bytes(policy=policy.SMTP)


def _threading(msg: Message, original: Original) -> None:
    if original.message_id:
        msg["In-Reply-To"] = original.message_id
        msg["References"] = original.message_id


def build_return(
    kind: Behaviour,
    raw: bytes,
    *,
    envelope_sender: str,
    recipient: str,
    reply: str,
    reporting_mta: str,
    arrived: datetime,
) -> tuple[str, bytes]:
    """(envelope sender to use, message) for one generated return.

    Bounces and auto-replies go out with the null sender ``<>`` (RFC 3464, RFC 3834), so
    they can never cause a return themselves; a person's reply comes from the person.
    """
    original = Original.parse(raw)
    if kind is Behaviour.AUTO_REPLY:
        return "", auto_reply(original, envelope_sender=envelope_sender, recipient=recipient)
    if kind is Behaviour.HUMAN_REPLY:
        message = human_reply(original, envelope_sender=envelope_sender, recipient=recipient)
        return recipient, message
    message = delivery_status_notification(
        original,
        envelope_sender=envelope_sender,
        recipient=recipient,
        reply=reply,
        reporting_mta=reporting_mta,
        arrived=arrived,
    )
    return "", message
