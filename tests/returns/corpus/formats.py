"""Bounce formats written by hand, the way MTAs and providers lay out their reports.

This module is long because it is a table: one short renderer per format (about fifty),
each writing the layout that program or provider is known to use (headers, wording,
whether a message/delivery-status part comes along, where the returned copy goes), filled
with replies from the reply bank. A message's label is what its reply means (replies.py);
the layout decides only where the recipient and the reply can be found, which is what the
classifier must generalise over. Some formats hide the recipient: only in
X-Failed-Recipients, only in the returned copy's To, or only in the original's VERP
return path.

``HELD_OUT_FORMATS`` are never used for tuning; together with the held-out phrasings
(replies.Reply.held_out) they make the held-out split.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from cases import Label, category_for
from replies import REPLIES, Reply, reply_text

REPORTER = "mx{n}.{domain}"


R = TypeVar("R")  # the reply bank's type: Reply here, FreshReply in fresh_formats.py


@dataclass
class Bounce(Generic[R]):
    """One bounce to render, with replies of one bank."""

    rcpts: list[tuple[str, R]]
    sender: str
    host: str
    remote: str
    date: str
    msgid: str
    rng: random.Random
    delayed: bool = False

    @property
    def rcpt(self) -> str:
        return self.rcpts[0][0]

    @property
    def reply(self) -> R:
        return self.rcpts[0][1]


@dataclass
class B(Bounce[Reply]):
    """One bounce to render (replies from the tuned bank)."""

    def line(self, i: int = 0) -> str:
        rcpt, reply = self.rcpts[i]
        if reply.phase == "LOCAL":
            return reply.text.format(rcpt=rcpt, sender=self.sender, host=self.remote)
        return reply_text(reply, rcpt, self.sender)


# Conditions the reporting MTA finds itself (no remote reply): generic wordings.
LOCALS: tuple[Reply, ...] = (
    Reply(
        "local-hostunknown-0",
        "hostunknown",
        "LOCAL",
        0,
        "5.1.2",
        "Host or domain name not found. Name service error for name={host} type=MX: Host not found",
    ),
    Reply(
        "local-hostunknown-1",
        "hostunknown",
        "LOCAL",
        0,
        "5.1.2",
        "DNS Error: Domain name not found",
    ),
    Reply(
        "local-hostunknown-2",
        "hostunknown",
        "LOCAL",
        0,
        "5.4.4",
        "Unable to route: no mail hosts for domain",
    ),
    Reply(
        "local-hostunknown-3",
        "hostunknown",
        "LOCAL",
        0,
        "5.1.2",
        "The domain name in the address does not exist",
    ),
    Reply(
        "local-expired-0",
        "expired",
        "LOCAL",
        0,
        "4.4.7",
        "Delivery time expired: could not connect to {host} for 5 days",
    ),
    Reply(
        "local-expired-1",
        "expired",
        "LOCAL",
        0,
        "4.4.1",
        "connect to {host}[192.0.2.25]:25: Connection timed out",
    ),
    Reply(
        "local-expired-2", "expired", "LOCAL", 0, "4.4.7", "Message expired: retry timeout exceeded"
    ),
    Reply(
        "local-expired-3",
        "expired",
        "LOCAL",
        0,
        "4.4.7",
        "The message has been in the queue too long and has expired",
    ),
    Reply(
        "local-networkerror-0",
        "networkerror",
        "LOCAL",
        0,
        "4.4.3",
        "Name service error for name={host} type=MX: Host not found, try again",
    ),
    Reply(
        "local-networkerror-1",
        "networkerror",
        "LOCAL",
        0,
        "5.4.6",
        "Too many hops: mail loop detected",
    ),
    Reply(
        "local-networkerror-2",
        "networkerror",
        "LOCAL",
        0,
        "4.4.3",
        "DNS lookup failure: temporary failure in name resolution",
    ),
    Reply(
        "local-networkerror-3",
        "networkerror",
        "LOCAL",
        0,
        "5.4.6",
        "Routing loop detected -- too many Received headers",
    ),
)

HELD_OUT_FORMATS = frozenset(
    {
        "sendmail_old", "qmail_netqmail", "exchange2003", "gmail_old", "aol",
        "messagingserver", "mailru", "kddi", "exchange_fr", "icewarp", "verp_only",
        "barracuda", "postfix_de", "dovecot_lmtp",
    }
)  # fmt: skip


def _headers(b: B, from_: str, subject: str, extra: str = "", ctype: str = "") -> str:
    head = (
        f"Return-Path: <>\nReceived: from {b.host} by mail.raymail.test; {b.date}\n"
        f"Date: {b.date}\nFrom: {from_}\nTo: {b.sender}\nSubject: {subject}\n"
        f"Message-ID: <{b.msgid}@{b.host}>\nMIME-Version: 1.0\n{extra}"
    )
    return head + (ctype or "Content-Type: text/plain; charset=us-ascii\n") + "\n"


def _original(b: B, to_field: str | None = None, return_path: str | None = None) -> str:
    to = to_field if to_field is not None else ", ".join(r for r, _ in b.rcpts)
    rp = return_path or b.sender
    return (
        f"Return-Path: <{rp}>\nReceived: from mta.raymail.test by {b.host}; {b.date}\n"
        f"From: Spring News <{b.sender}>\nTo: {to}\nSubject: Spring offers for you\n"
        f"Date: {b.date}\nMessage-ID: <orig-{b.msgid}@raymail.test>\nMIME-Version: 1.0\n"
        f"Content-Type: text/plain; charset=utf-8\n\nHello,\nour spring offers are here.\n"
    )


def _dsn(b: B, mta: str = "", remote: bool = True, original: bool = True) -> str:
    out = [f"Reporting-MTA: dns; {mta or b.host}", f"Arrival-Date: {b.date}", ""]
    for i, (rcpt, reply) in enumerate(b.rcpts):
        status = reply.status or ("4.0.0" if reply.temporary else "5.0.0")
        out += [f"Original-Recipient: rfc822;{rcpt}"] if original else []
        out += [
            f"Final-Recipient: rfc822; {rcpt}",
            f"Action: {'delayed' if b.delayed else 'failed'}",
            f"Status: {status}",
        ]
        if remote and reply.phase != "LOCAL":
            out += [f"Remote-MTA: dns; {b.remote}", f"Diagnostic-Code: smtp; {b.line(i)}"]
        else:
            out += [f"Diagnostic-Code: X-Local; {b.line(i)}"]
        out += [f"Last-Attempt-Date: {b.date}", ""]
    return "\n".join(out)


def _report(
    b: B,
    head: str,
    text: str,
    dsn: str | None,
    original: str,
    *,
    headers_only: bool = False,
    text_type: str = "text/plain",
) -> str:
    boundary = f"==b{b.rng.randrange(10**8)}=="
    parts = [f"Content-Type: {text_type}; charset=us-ascii\n\n{text}"]
    if dsn is not None:
        parts.append(f"Content-Type: message/delivery-status\n\n{dsn}")
    if headers_only:
        parts.append(
            f"Content-Type: text/rfc822-headers\n\n{original.split(chr(10) + chr(10))[0]}\n"
        )
    else:
        parts.append(f"Content-Type: message/rfc822\n\n{original}")
    kind = "report; report-type=delivery-status" if dsn is not None else "mixed"
    body = "".join(f"--{boundary}\n{p}\n" for p in parts) + f"--{boundary}--\n"
    return (
        head.replace(
            "Content-Type: text/plain; charset=us-ascii\n",
            f'Content-Type: multipart/{kind}; boundary="{boundary}"\n',
        )
        + body
    )


def _cmd(reply: Reply, rcpt: str) -> str:
    return {
        "RCPT": f"RCPT TO:<{rcpt}>",
        "DATA": "end of DATA",
        "MAIL": "MAIL FROM:<>",
        "HELO": "EHLO",
        "CONN": "initial connection",
    }.get(reply.phase, "RCPT TO")


def _postfix_cmd(reply: Reply) -> str:
    return {"RCPT": "RCPT TO", "DATA": "end of DATA", "MAIL": "MAIL FROM", "HELO": "EHLO"}.get(
        reply.phase, ""
    )


# ----------------------------------------------------------------------------- MTA formats


def sendmail(b: B) -> str:
    head = _headers(
        b,
        f"Mail Delivery Subsystem <MAILER-DAEMON@{b.host}>",
        "Returned mail: see transcript for details",
        "Auto-Submitted: auto-generated (failure)\n",
    )
    lines = [
        f"The original message was received at {b.date}\nfrom mta.raymail.test [192.0.2.10]\n",
        "   ----- The following addresses had permanent fatal errors -----",
    ]
    for i, (rcpt, _reply) in enumerate(b.rcpts):
        lines.append(f"<{rcpt}>\n    (reason: {b.line(i)})\n")
    lines.append("   ----- Transcript of session follows -----")
    for i, (rcpt, reply) in enumerate(b.rcpts):
        if reply.phase == "LOCAL":
            lines.append(f"550 5.1.2 <{rcpt}>... {b.line(i)}")
            continue
        verb = {
            "RCPT": f">>> RCPT To:<{rcpt}>",
            "DATA": ">>> DATA",
            "MAIL": f">>> MAIL From:<{b.sender}> SIZE=512",
            "HELO": ">>> EHLO mta.raymail.test",
            "CONN": "",
        }[reply.phase]
        lines.append(f"... while talking to {b.remote}.:\n{verb}\n<<< {b.line(i)}")
        lines.append(
            f"{reply.code} {reply.status or '5.0.0'} <{rcpt}>... {'User unknown' if reply.reason == 'userunknown' else 'Service unavailable'}"
        )
    return _report(b, head, "\n".join(lines) + "\n", _dsn(b), _original(b))


def sendmail_old(b: B) -> str:
    head = _headers(
        b,
        f"Mail Delivery Subsystem <MAILER-DAEMON@{b.host}>",
        "Returned mail: User unknown"
        if b.reply.reason == "userunknown"
        else "Returned mail: Service unavailable",
    )
    out = [
        f"The original message was received at {b.date}\nfrom localhost [127.0.0.1]\n",
        "   ----- Transcript of session follows -----",
    ]
    for i, (rcpt, reply) in enumerate(b.rcpts):
        out.append(
            f"... while talking to {b.remote}.:\n>>> {'DATA' if reply.phase == 'DATA' else 'RCPT To:<' + rcpt + '>'}\n<<< {b.line(i)}\n{reply.code} {rcpt}... {b.line(i)[4:]}"
        )
    out.append("\n   ----- Unsent message follows -----")
    return head + "\n".join(out) + "\n" + _original(b)


def qmail(b: B) -> str:
    head = _headers(b, f"MAILER-DAEMON@{b.host}", "failure notice")
    out = [
        f"Hi. This is the qmail-send program at {b.host}.\nI'm afraid I wasn't able to deliver your message to the following addresses.\nThis is a permanent error; I've given up. Sorry it didn't work out.\n"
    ]
    for i, (rcpt, reply) in enumerate(b.rcpts):
        if reply.phase == "LOCAL":
            out.append(f"<{rcpt}>:\n{b.line(i)}\n")
        elif reply.phase == "MAIL":
            out.append(
                f"<{rcpt}>:\nConnected to 192.0.2.25 but sender was rejected.\nRemote host said: {b.line(i)}\n"
            )
        elif reply.phase in {"HELO", "CONN"}:
            out.append(
                f"<{rcpt}>:\nConnected to 192.0.2.25 but greeting failed.\nRemote host said: {b.line(i)}\n"
            )
        elif reply.phase == "DATA":
            out.append(
                f"<{rcpt}>:\n192.0.2.25 failed after I sent the message.\nRemote host said: {b.line(i)}\n"
            )
        else:
            out.append(
                f"<{rcpt}>:\n192.0.2.25 does not like recipient.\nRemote host said: {b.line(i)}\nGiving up on 192.0.2.25.\n"
            )
    return (
        head + "\n".join(out) + "--- Below this line is a copy of the message.\n\n" + _original(b)
    )


def qmail_netqmail(b: B) -> str:
    head = _headers(b, f"MAILER-DAEMON@{b.host}", "failure notice")
    out = [
        f"Hi. This is the qmail-send program at {b.host}.\nI'm afraid I wasn't able to deliver your message to the following addresses.\nThis is a permanent error; I've given up. Sorry it didn't work out.\n"
    ]
    for i, (rcpt, reply) in enumerate(b.rcpts):
        text = b.line(i)
        if reply.phase == "MAIL":
            out.append(
                f"<{rcpt}>:\nConnected to 192.0.2.25 but sender was rejected.\nRemote host said: {text}\n"
            )
        elif reply.phase in {"HELO", "CONN"}:
            out.append(
                f"<{rcpt}>:\nConnected to 192.0.2.25 but my name was rejected.\nRemote host said: {text}\n"
            )
        else:
            out.append(f"<{rcpt}>:\n{text}\n")
    return (
        head
        + "\n".join(out)
        + "--- Enclosed are the original headers of the message.\n\n"
        + _original(b).split("\n\n")[0]
        + "\n"
    )


def courier(b: B) -> str:
    head = _headers(b, f"Courier mail server at {b.host} <@>", "NOTICE: mail delivery status.")
    out = [
        f"This is a delivery status notification from {b.host},\nrunning the Courier mail server, version 1.0.16.\n\nThe original message was received on {b.date}\nfrom mta.raymail.test (192.0.2.10)\n\n---------------------------------------------------------------------------\n\n                           UNDELIVERABLE MAIL\n\nYour message to the following recipients cannot be delivered:\n"
    ]
    for i, (rcpt, reply) in enumerate(b.rcpts):
        cmd = {"RCPT": f"RCPT TO:<{rcpt}>", "DATA": "DATA", "MAIL": f"MAIL FROM:<{b.sender}>"}.get(
            reply.phase, "EHLO mta.raymail.test"
        )
        out.append(f"<{rcpt}>:\n    {b.remote} [192.0.2.25]:\n>>> {cmd}\n<<< {b.line(i)}\n")
    out.append(
        "---------------------------------------------------------------------------\n\nIf your message was also sent to additional recipients, their delivery\nstatus is not included in this report."
    )
    return _report(b, head, "\n".join(out) + "\n", _dsn(b), _original(b))


def opensmtpd(b: B) -> str:
    head = _headers(
        b, f"Mailer Daemon <MAILER-DAEMON@{b.host}>", "Delivery status notification: error"
    )
    out = [
        "Hi!\n\nThis is the MAILER-DAEMON, please DO NOT REPLY to this email.\n\nAn error has occurred while attempting to deliver a message for\nthe following list of recipients:\n"
    ]
    for i, (rcpt, _) in enumerate(b.rcpts):
        out.append(f"{rcpt}: {b.line(i)}")
    out.append("\nBelow is a copy of the original message:\n")
    return _report(b, head, "\n".join(out) + "\n", _dsn(b, remote=False), _original(b))


def exim_written(b: B) -> str:
    subject = (
        "Warning: message delayed"
        if b.delayed
        else "Mail delivery failed: returning message to sender"
    )
    extra = (
        f"X-Failed-Recipients: {', '.join(r for r, _ in b.rcpts)}\nAuto-Submitted: auto-replied\n"
    )
    head = _headers(b, f"Mail Delivery System <Mailer-Daemon@{b.host}>", subject, extra)
    out = [
        "This message was created automatically by mail delivery software.\n\nA message that you sent could not be delivered to one or more of its\nrecipients. This is a permanent error. The following address(es) failed:\n"
    ]
    for i, (rcpt, reply) in enumerate(b.rcpts):
        if reply.phase == "LOCAL":
            out.append(f"  {rcpt}\n    {b.line(i)}\n")
        else:
            out.append(
                f"  {rcpt}\n    host {b.remote} [192.0.2.25]\n    SMTP error from remote mail server after {_cmd(reply, rcpt)}:\n    {b.line(i)}\n"
            )
    return (
        head
        + "\n".join(out)
        + "\n------ This is a copy of the message, including all the headers. ------\n\n"
        + _original(b)
    )


def postfix_written(b: B, lang: str = "en") -> str:
    intro = {
        "en": f"This is the mail system at host {b.host}.\n\nI'm sorry to have to inform you that your message could not\nbe delivered to one or more recipients. It's attached below.\n\nFor further assistance, please send mail to postmaster.\n\nIf you do so, please include this problem report. You can\ndelete your own text from the attached returned message.\n\n                   The mail system\n",
        "de": f"Dies ist das Mailsystem auf dem Rechner {b.host}.\n\nLeider konnte Ihre Nachricht an einen oder mehrere Empfänger nicht\nzugestellt werden. Sie ist unten angehängt.\n\n                   Das Mailsystem\n",
    }[lang]
    head = _headers(
        b,
        f"MAILER-DAEMON@{b.host} (Mail Delivery System)",
        "Undelivered Mail Returned to Sender" if lang == "en" else "Unzustellbare Nachricht",
    )
    out = [intro]
    for i, (rcpt, reply) in enumerate(b.rcpts):
        if reply.phase == "LOCAL":
            out.append(f"<{rcpt}>: {b.line(i)}\n")
        else:
            cmd = _postfix_cmd(reply)
            tail = f" (in reply to {cmd} command)" if cmd else ""
            out.append(f"<{rcpt}>: host {b.remote}[192.0.2.25] said: {b.line(i)}{tail}\n")
    return _report(b, head, "\n".join(out), _dsn(b), _original(b))


def postfix_de(b: B) -> str:
    return postfix_written(b, "de")


def dovecot_lmtp(b: B) -> str:
    head = _headers(
        b, f"Mail Delivery System <MAILER-DAEMON@{b.host}>", "Undelivered Mail Returned to Sender"
    )
    out = [
        f"This is the mail system at host {b.host}.\n\nI'm sorry to have to inform you that your message could not\nbe delivered to one or more recipients.\n"
    ]
    for i, (rcpt, _) in enumerate(b.rcpts):
        out.append(
            f"<{rcpt}>: host {b.host}[private/dovecot-lmtp] said: {b.line(i)} (in reply to RCPT TO command)\n"
        )
    return _report(b, head, "\n".join(out), _dsn(b, mta=b.host), _original(b), headers_only=True)


def haraka(b: B) -> str:
    head = _headers(b, f"Mail Delivery Subsystem <MAILER-DAEMON@{b.host}>", "Mail Delivery Failure")
    out = [
        "Probably an error happened while delivering your mail.\n\nHaraka could not deliver the message to the following recipient(s):\n"
    ]
    for i, (rcpt, _) in enumerate(b.rcpts):
        out.append(f"Recipient: {rcpt}\nError: {b.line(i)}\n")
    return _report(b, head, "\n".join(out), _dsn(b), _original(b))


def mdaemon(b: B) -> str:
    head = _headers(
        b,
        f"MDaemon at {b.host} <MDaemon@{b.host}>",
        "Permanent Delivery Failure",
        "X-MDaemon-Deliver-To: " + b.sender + "\n",
    )
    out = [
        "The attached message had PERMANENT fatal delivery errors!\n\nAfter one or more unsuccessful delivery attempts the attached message has\nbeen removed from the mail queue on this server.  The number and frequency\nof delivery attempts are determined by local configuration parameters.\n\nYOU DO NOT NEED TO RESEND YOUR MESSAGE.\n"
    ]
    for i, (rcpt, _) in enumerate(b.rcpts):
        out.append(
            f"--- Session Transcript ---\n Attempting SMTP connection to [{b.remote}]\n Waiting for protocol to start...\n RCPT TO: <{rcpt}>\n {b.line(i)}\n--- End Transcript ---\n"
        )
    return _report(b, head, "\n".join(out), None, _original(b))


def iis_smtp(b: B) -> str:
    head = _headers(b, f"postmaster@{b.host}", "Delivery Status Notification (Failure)")
    out = [
        "This is an automatically generated Delivery Status Notification.\n\nDelivery to the following recipients failed.\n"
    ]
    for rcpt, _ in b.rcpts:
        out.append(f"       {rcpt}\n")
    return _report(b, head, "\n".join(out), _dsn(b), _original(b))


def messagingserver(b: B) -> str:
    head = _headers(
        b,
        f"Internet Mail Delivery <postmaster@{b.host}>",
        "Delivery Notification: Delivery has failed",
    )
    out = [
        f"This report relates to a message you sent with the following header fields:\n\n  Message-id: <orig-{b.msgid}@raymail.test>\n  Date: {b.date}\n  From: Spring News <{b.sender}>\n  Subject: Spring offers for you\n\nYour message cannot be delivered to the following recipients:\n"
    ]
    for i, (rcpt, _) in enumerate(b.rcpts):
        out.append(
            f"  Recipient address: {rcpt}\n  Original address: {rcpt}\n  Reason: Remote SMTP server has rejected address\n  Diagnostic code: smtp;{b.line(i)}\n  Remote system: dns;{b.remote} (TCP|192.0.2.10|49152|192.0.2.25|25)\n"
        )
    return _report(b, head, "\n".join(out), _dsn(b), _original(b))


def mailmarshal(b: B) -> str:
    head = _headers(
        b, f"MailMarshal <postmaster@{b.host}>", 'Undeliverable Mail: "Spring offers for you"'
    )
    rcpts = "\n".join(f"  {r}" for r, _ in b.rcpts)
    text = f"Your message:\n   From:    Spring News <{b.sender}>\n   Subject: Spring offers for you\n\nCould not be delivered because of\n\n{b.line()}\n\nThe following recipients were affected:\n{rcpts}\n\nAdditional Information\n======================\nOriginal Sender:    <{b.sender}>\nSender-MTA:         <192.0.2.10>\nRemote-MTA:         <{b.remote}>\n"
    return _report(b, head, text, None, _original(b))


def interscan(b: B) -> str:
    head = _headers(b, f'"InterScan MSS" <postmaster@{b.host}>', "Mail could not be delivered")
    text = f"****** Message from InterScan Messaging Security Suite ******\n\nSent <<< RCPT TO:<{b.rcpt}>\nReceived >>> {b.line()}\n\nUnable to deliver message to <{b.rcpt}>.\n\n************************ End of message **********************\n"
    return _report(b, head, text, None, _original(b))


def barracuda(b: B) -> str:
    head = _headers(b, f"Barracuda <postmaster@{b.host}>", "Message delivery failure")
    text = f"Your message to: {b.rcpt}\nwas not delivered by the Barracuda Email Security Gateway.\n\nReason: {b.line()}\n\nThe following is a copy of your original message headers:\n"
    return _report(b, head, text, None, _original(b), headers_only=True)


def mimecast(b: B) -> str:
    head = _headers(b, f"Mimecast <postmaster@{b.host}>", "Undeliverable: Spring offers for you")
    text = f"Your message couldn't be delivered to the recipients shown below.\n\nRecipient: {b.rcpt}\nReason: {b.line()}\nServer: {b.remote}\n\nThe message has been returned to the sender.\n"
    return _report(b, head, text, _dsn(b), _original(b))


def amazonses(b: B) -> str:
    head = _headers(
        b,
        "MAILER-DAEMON@amazonses.com",
        "Delivery Status Notification (Failure)",
        "X-SES-Outgoing: 2026.06.01-54.240.0.1\n",
    )
    text = f"An error occurred while trying to deliver the mail to the following recipients:\n{b.rcpt}\n"
    return _report(b, head, text, _dsn(b, mta="a1-23.smtp-out.amazonses.com"), _original(b))


def kerio(b: B) -> str:
    head = _headers(b, f"Kerio Connect <postmaster@{b.host}>", "Undeliverable message")
    text = f"Your message did not reach some or all of the intended recipients.\n\n   Subject:\tSpring offers for you\n   Sent:\t{b.date}\n\nThe following recipient(s) could not be reached:\n\n{b.rcpt}\n   Error Type: SMTP\n   Remote server ({b.remote}) issued an error.\n   hop count: 1\n   {b.line()}\n"
    return _report(b, head, text, None, _original(b))


def icewarp(b: B) -> str:
    head = _headers(b, f"IceWarp Server <postmaster@{b.host}>", "Undeliverable message")
    text = f"Delivery to the following recipients failed:\n\n  Recipient: {b.rcpt}\n  Reason: The remote server answered {b.line()}\n\nThe message could not be delivered and was returned.\n"
    return _report(b, head, text, None, _original(b))


def axigen(b: B) -> str:
    head = _headers(b, f"Axigen Mail Server <MAILER-DAEMON@{b.host}>", "Undelivered message")
    text = f"Your message was not delivered to the following recipients:\n\n<{b.rcpt}>\n  Reason: Permanent failure\n  Remote server reply: {b.line()}\n"
    return _report(b, head, text, _dsn(b), _original(b))


def zimbra_style(b: B) -> str:
    head = _headers(
        b, f"Mail Delivery System <MAILER-DAEMON@{b.host}>", "Undelivered Mail Returned to Sender"
    )
    text = f"This is the mail system at host {b.host}.\n\nYour message could not be delivered to one or more recipients.\n\n<{b.rcpt}>: {b.line()}\n"
    return _report(b, head, text, _dsn(b, original=False), _original(b), headers_only=True)


def generic_dsn(b: B) -> str:
    head = _headers(b, f"postmaster@{b.host}", "Delivery Status Notification")
    return _report(b, head, "This is a delivery status notification.\n", _dsn(b), _original(b))


def dsn_no_text(b: B) -> str:
    """A DSN whose human part says nothing and whose Diagnostic-Code carries it all."""
    head = _headers(b, f"MAILER-DAEMON@{b.host}", "Returned mail")
    return _report(b, head, "\n", _dsn(b, original=False), _original(b), headers_only=True)


# ---------------------------------------------------------------------------- providers


def exchange2007(b: B, lang: str = "en") -> str:
    words = {
        "en": (
            "Undeliverable: Spring offers for you",
            "Delivery has failed to these recipients or groups:",
            "Diagnostic information for administrators:",
            "Generating server:",
        ),
        "fr": (
            "Non remis : Spring offers for you",
            "La remise a échoué pour les destinataires ou groupes suivants :",
            "Informations de diagnostic pour les administrateurs :",
            "Serveur de génération :",
        ),
        "de": (
            "Unzustellbar: Spring offers for you",
            "Fehler bei der Zustellung an diese Empfänger oder Gruppen:",
            "Diagnoseinformationen für Administratoren:",
            "Generierender Server:",
        ),
        "es": (
            "No se puede entregar: Spring offers for you",
            "Error en la entrega a estos destinatarios o grupos:",
            "Información de diagnóstico para administradores:",
            "Servidor de generación:",
        ),
    }[lang]
    head = _headers(
        b,
        f"Microsoft Exchange <MAILER-DAEMON@{b.host}>",
        words[0],
        "X-MS-Exchange-Message-Is-Ndr:\nContent-Language: " + lang + "\n",
    )
    lines = [words[1], ""]
    for rcpt, _ in b.rcpts:
        lines += [
            f"{rcpt}",
            "The e-mail system had a problem processing this message. Microsoft Exchange will not try to redeliver this message for you.",
            "",
        ]
    lines += ["", "", words[2], "", f"{words[3]} {b.host}", ""]
    for i, (rcpt, _) in enumerate(b.rcpts):
        lines += [f"{rcpt}", f"{b.remote} #{b.line(i)} ##", ""]
    lines += ["Original message headers:", ""]
    return _report(b, head, "\n".join(lines) + "\n", _dsn(b), _original(b))


def exchange_fr(b: B) -> str:
    return exchange2007(b, "fr")


def exchange_de(b: B) -> str:
    return exchange2007(b, "de")


def exchange_es(b: B) -> str:
    return exchange2007(b, "es")


def exchange2003(b: B) -> str:
    head = _headers(
        b, f"System Administrator <postmaster@{b.host}>", "Undeliverable: Spring offers for you"
    )
    lines = [
        "Your message did not reach some or all of the intended recipients.",
        "",
        "      Subject:\tSpring offers for you",
        f"      Sent:\t{b.date}",
        "",
        "The following recipient(s) could not be reached:",
        "",
    ]
    for i, (rcpt, _) in enumerate(b.rcpts):
        lines += [f"      {rcpt} on {b.date}", f"            {b.line(i)}", ""]
    return _report(b, head, "\n".join(lines) + "\n", _dsn(b), _original(b))


def office365(b: B) -> str:
    head = _headers(
        b,
        f"Microsoft Outlook <postmaster@{b.host}>",
        "Undeliverable: Spring offers for you",
        "X-MS-Exchange-Message-Is-Ndr:\n",
    )
    rcpt = b.rcpt
    text = (
        f"Your message to {rcpt} couldn't be delivered.\n\n"
        f"{rcpt.split('@')[0]} wasn't found at {rcpt.split('@')[1]}.\n"
        if b.reply.reason == "userunknown"
        else f"Your message to {rcpt} couldn't be delivered.\n\n"
    )
    text += f"\nSpring News   Office 365   {rcpt.split('@')[0]}\nAction Required\n\nHow to Fix It\nContact the recipient by some other means.\n\nMore Info for Email Admins\nStatus code: {b.reply.status or b.reply.code}\n\nOriginal Message Details\nCreated Date: {b.date}\nSender Address: {b.sender}\nRecipient Address: {rcpt}\nSubject: Spring offers for you\n\nError Details\nReported error: {b.line()}\nDSN generated by: {b.host}\nRemote server: {b.remote}\n"
    return _report(b, head, text, _dsn(b), _original(b))


def gmail(b: B) -> str:
    head = _headers(
        b,
        "Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
        "Delivery Status Notification (Failure)",
        "X-Failed-Recipients: " + b.rcpt + "\nAuto-Submitted: auto-replied\n",
    )
    if b.reply.reason == "userunknown":
        top = f"** Address not found **\n\nYour message wasn't delivered to {b.rcpt} because the address couldn't be found, or is unable to receive mail.\n"
    else:
        top = f"** Message not delivered **\n\nThere was a problem delivering your message to {b.rcpt}. See the technical details below.\n"
    text = top + f"\nThe response from the remote server was:\n{b.line()}\n"
    return _report(b, head, text, _dsn(b, mta="mx.google.com"), _original(b))


def gmail_old(b: B) -> str:
    head = _headers(
        b,
        "Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
        "Delivery Status Notification (Failure)",
        "X-Failed-Recipients: " + b.rcpt + "\n",
    )
    text = f"Delivery to the following recipient failed permanently:\n\n     {b.rcpt}\n\nTechnical details of permanent failure:\nGoogle tried to deliver your message, but it was rejected by the server for the recipient domain {b.rcpt.split('@')[1]} by {b.remote}. [192.0.2.25].\n\nThe error that the other server returned was:\n{b.line()}\n\n----- Original message -----\n"
    return head + text + "\n" + _original(b)


def yahoo(b: B) -> str:
    head = _headers(b, "MAILER-DAEMON@yahoo.com", "Failure Notice")
    out = ["Sorry, we were unable to deliver your message to the following address.\n"]
    for i, (rcpt, reply) in enumerate(b.rcpts):
        tag = {"RCPT": " [RCPT_TO]", "DATA": " [BODY]", "MAIL": " [MAIL_FROM]"}.get(reply.phase, "")
        out.append(f"<{rcpt}>:\nRemote host said: {b.line(i)}{tag}\n")
    return (
        head + "\n".join(out) + "--- Below this line is a copy of the message.\n\n" + _original(b)
    )


def aol(b: B) -> str:
    head = _headers(
        b,
        "Mail Delivery Subsystem <MAILER-DAEMON@aol.com>",
        "Returned mail: Delivery problems encountered",
    )
    text = f"This Message was undeliverable due to the following reason:\n\nYour message was not delivered because the destination computer was\nnot reachable or the recipient refused it.\n\n<{b.rcpt}>\n    {b.line()}\n\nPlease reply to Postmaster@aol.com\nif you feel this message to be in error.\n"
    return _report(b, head, text, _dsn(b), _original(b))


def domino(b: B) -> str:
    head = _headers(
        b,
        f"Mail Router <postmaster@{b.host}>",
        "DELIVERY FAILURE: "
        + (
            "User " + b.rcpt.split("@")[0] + " not listed in Domino Directory"
            if b.reply.reason == "userunknown"
            else "Error transferring to " + b.remote
        ),
    )
    text = f"Your message\n\n  Subject: Spring offers for you\n\nwas not delivered to:\n\n  {b.rcpt}\n\nbecause:\n\n  {b.line()}\n"
    return _report(b, head, text, _dsn(b), _original(b))


def groupwise(b: B) -> str:
    head = _headers(
        b, f"Mail Delivery System <postmaster@{b.host}>", "Message status - undeliverable"
    )
    text = f"The message that you sent was undeliverable to the following:\n\t{b.rcpt} ({b.line()})\n\nPossibly truncated original message follows:\n"
    return head + text + "\n" + _original(b)


def mailru(b: B) -> str:
    head = _headers(
        b,
        "Mail Delivery System <mailer-daemon@corp.mail.ru>",
        "=?UTF-8?B?" + base64.b64encode("Недоставленное сообщение".encode()).decode() + "?=",
        ctype="Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n",
    )
    text = f"Это письмо создано автоматически сервером Mail.Ru,\nотвечать на него не нужно.\n\nК сожалению, Ваше письмо не может быть доставлено одному или нескольким\nполучателям:\n\n{b.rcpt}\nSMTP error from remote mail server after RCPT TO:<{b.rcpt}>:\nhost {b.remote} [192.0.2.25]: {b.line()}\n\n--- Below this line is a copy of the message.\n\n"
    return head + text + _original(b)


def yandex(b: B) -> str:
    head = _headers(b, "mailer-daemon@yandex.ru", "Delivery Status Notification (Failure)")
    text = f"This is the mail system at host {b.host}.\n\nYour message could not be delivered to one or more recipients.\n\nСообщение не удалось доставить одному или нескольким получателям.\n\n<{b.rcpt}>: host {b.remote}[192.0.2.25] said: {b.line()}\n"
    return _report(b, head, text, _dsn(b), _original(b))


def qq(b: B) -> str:
    head = _headers(
        b,
        '"QQ Mail" <postmaster@qq.com>',
        "=?UTF-8?B?" + base64.b64encode("系统退信".encode()).decode() + "?=",
        ctype="Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n",
    )
    text = f"很抱歉您的邮件没有发送成功。\n\n收件人: {b.rcpt}\n退信原因: {b.line()}\n\n原邮件信息:\n主题: Spring offers for you\n"
    body = base64.encodebytes(text.encode()).decode()
    return head + body


def kddi(b: B) -> str:
    head = _headers(b, f"postmaster@{b.host}", "Mail System Error - Returned Mail")
    text = (
        f"Your mail sent on: {b.date}\n     Could not be delivered to: <{b.rcpt}>\n     As their mailbox is full.\n"
        if b.reply.reason == "mailboxfull"
        else f"Your mail sent on: {b.date}\n     Could not be delivered to: <{b.rcpt}>\n     Reason: {b.line()}\n"
    )
    return head + text + "\n" + _original(b)


def docomo_ja(b: B) -> str:
    head = _headers(
        b,
        f"Mail Delivery Subsystem <MAILER-DAEMON@{b.host}>",
        "=?ISO-2022-JP?B?GyRCJUElJCVrJE5Bdz8uJCw8OkdUJDckXiQ3JD8bKEI=?=",
        ctype="Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n",
    )
    text = f"次のあて先へのメール送信に失敗しました。\n\n<{b.rcpt}>\n理由: {b.line()}\n\n----- 元のメッセージ -----\n"
    return head + text + _original(b)


def web_de(b: B) -> str:
    head = _headers(
        b,
        f"Mail Delivery System <mailer-daemon@{b.host}>",
        "Mail delivery failed: returning message to sender",
        ctype="Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n",
    )
    text = f"Diese Nachricht wurde automatisch vom Mailsystem erzeugt.\n\nIhre Nachricht konnte nicht an alle Empfänger zugestellt werden.\nDie folgenden Adressen sind fehlgeschlagen:\n\n  {b.rcpt}\n    {b.line()}\n\n--- Die ursprüngliche Nachricht folgt ---\n"
    import quopri

    return head + quopri.encodestring(text.encode()).decode() + _original(b)


def zoho(b: B) -> str:
    head = _headers(b, "mailer-daemon@mail.zoho.com", "Undelivered Mail Returned to Sender")
    text = f"This message was created automatically by mail delivery software.\nA message that you sent could not be delivered to one or more of its recipients. This is a permanent error.\n\n{b.rcpt}, ERROR CODE :{b.reply.code} - {b.line()[4:]}\n"
    return head + text + "\n" + _original(b)


def fastmail_style(b: B) -> str:
    head = _headers(
        b, f"Mail Delivery System <MAILER-DAEMON@{b.host}>", "Undelivered Mail Returned to Sender"
    )
    text = f"This is the mail system at host {b.host}.\n\nI'm sorry to have to inform you that your message could not\nbe delivered to one or more recipients. It's attached below.\n\n<{b.rcpt}>: host {b.remote}[192.0.2.25] said: {b.line()}\n"
    return _report(b, head, text, _dsn(b), _original(b), text_type="text/plain")


def html_ndr(b: B) -> str:
    """A provider whose human part is HTML only."""
    head = _headers(b, f"Mail Delivery Service <noreply-ndr@{b.host}>", "Message delivery failed")
    text = f"<html><body><h2>Your message could not be delivered</h2><p>We couldn't deliver your message to <b>{b.rcpt}</b>.</p><table><tr><td>Remote server said:</td><td>{b.line()}</td></tr></table></body></html>"
    return _report(b, head, text, None, _original(b), text_type="text/html")


# ------------------------------------------------------------ recipients hidden elsewhere


def x_failed_only(b: B) -> str:
    head = _headers(
        b,
        f"Mail Delivery System <MAILER-DAEMON@{b.host}>",
        "Mail delivery failed",
        f"X-Failed-Recipients: {b.rcpt}\n",
    )
    return (
        head
        + f"Delivery failed permanently.\nThe remote server said: {b.line().replace(b.rcpt, 'the recipient')}\n\n------ This is a copy of the message's headers. ------\n\n"
        + _original(b, to_field="Undisclosed recipients:;").split("\n\n")[0]
        + "\n"
    )


def to_only(b: B) -> str:
    head = _headers(b, f"postmaster@{b.host}", "Undeliverable mail")
    return (
        head
        + f"Your message could not be delivered.\nReason: {b.line().replace(b.rcpt, 'the recipient')}\n\n--- Original message follows ---\n\n"
        + _original(b)
    )


def verp_only(b: B) -> str:
    local, domain = b.rcpt.split("@")
    verp = f"bounces+{local}={domain}@raymail.test"
    head = _headers(b, f"MAILER-DAEMON@{b.host}", "failure notice").replace(
        f"To: {b.sender}", f"To: {verp}"
    )
    return (
        head
        + f"Delivery to the recipient failed.\nRemote host said: {b.line().replace(b.rcpt, 'the recipient')}\n\n--- Below this line is a copy of the message headers.\n\n"
        + _original(b, to_field="Customers:;", return_path=verp).split("\n\n")[0]
        + "\n"
    )


FORMATS: dict[str, Callable[[B], str]] = {
    f.__name__: f
    for f in (
        sendmail, sendmail_old, qmail, qmail_netqmail, courier, opensmtpd, exim_written,
        postfix_written, postfix_de, dovecot_lmtp, haraka, mdaemon, iis_smtp, messagingserver,
        mailmarshal, interscan, barracuda, mimecast, amazonses, kerio, icewarp, axigen,
        zimbra_style, generic_dsn, dsn_no_text, exchange2007, exchange_fr, exchange_de,
        exchange_es, exchange2003, office365, gmail, gmail_old, yahoo, aol, domino, groupwise,
        mailru, yandex, qq, kddi, docomo_ja, web_de, zoho, fastmail_style, html_ndr,
        x_failed_only, to_only, verp_only,
    )
}  # fmt: skip
# Formats that say which SMTP command the reply answered (so DATA-time is visible).
SHOWS_PHASE = frozenset(
    {
        "sendmail",
        "sendmail_old",
        "qmail",
        "courier",
        "exim_written",
        "postfix_written",
        "postfix_de",
        "yahoo",
        "mailru",
        "qmail_netqmail",
    }
)
# Replies that say "user unknown" and are ``filtered`` only because they answered DATA.
_DATA_USERUNKNOWN = frozenset({"filtered-0", "filtered-4"})
MULTI = frozenset(
    {
        "sendmail",
        "qmail",
        "courier",
        "opensmtpd",
        "exim_written",
        "postfix_written",
        "exchange2007",
        "exchange2003",
        "yahoo",
        "qmail_netqmail",
        "messagingserver",
    }
)
_DOMAINS = (
    "example.com",
    "example.net",
    "example.org",
    "mail.example",
    "corp.example",
    "isp.example",
)
_FIRST = (
    "anna",
    "li",
    "omar",
    "sofia",
    "kenji",
    "maria",
    "john",
    "eva",
    "lars",
    "amara",
    "chen",
    "pierre",
    "nina",
    "raj",
)
_LAST = ("berg", "wei", "haddad", "rossi", "sato", "garcia", "smith", "novak", "olsen", "okafor")


def render_all(out: Path, seed: int = 1, per_format: int = 30) -> list[Label]:
    """Render every format with a sample of the bank (and local conditions); write labels."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    labels = []
    pool = list(REPLIES) + list(LOCALS)
    serial = 0
    for name, render in FORMATS.items():
        chosen = rng.sample(pool, per_format)
        for reply in chosen:
            serial += 1
            count = rng.choice((2, 3)) if name in MULTI and rng.random() < 0.2 else 1
            rcpts = []
            for _ in range(count):
                domain = rng.choice(_DOMAINS)
                addr = f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}{rng.randrange(100)}@{domain}"
                rcpts.append((addr, reply))
            b = B(
                rcpts=rcpts,
                sender="news@raymail.test",
                host=REPORTER.format(n=rng.randrange(1, 9), domain=rng.choice(_DOMAINS)),
                remote=f"mx{rng.randrange(1, 5)}.{rcpts[0][0].split('@')[1]}",
                date="Mon, 01 Jun 2026 10:00:00 +0000",
                msgid=f"w{serial}",
                rng=rng,
            )
            raw = render(b).replace("\n", "\r\n") if rng.random() < 0.3 else render(b)
            file = f"{name}-{serial:05d}.eml"
            (out / file).write_bytes(raw.encode("utf-8"))
            held = name in HELD_OUT_FORMATS or reply.held_out
            reason = reply.reason
            if reply.key in _DATA_USERUNKNOWN and name not in SHOWS_PHASE:
                reason = "userunknown"  # the layout hides the phase: only the words remain
            labels.append(
                Label(
                    file=f"{out.name}/{file}",
                    format=name,
                    recipients=sorted(r for r, _ in rcpts),
                    reason=reason,
                    category=category_for(reason),
                    split="heldout" if held else "tuned",
                    reply=reply.key,
                    source="written",
                )
            )
    return labels
