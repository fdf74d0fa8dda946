"""Held-out split 2: bounce layouts written fresh, filled with the fresh reply bank.

None of these layouts is in formats.py: providers and MTAs not covered there (Google
Workspace, Microsoft 365's 2023 report, Exchange 2010's ``#< ... #SMTP#`` lines, iCloud,
GMX, T-Online, Orange, Libero, Terra, UOL, Rambler, NetEase, Nifty, Lotus Domino 9,
CommuniGate, SmarterMail, Proofpoint, Barracuda ESS, Mimecast's HTML report, ProtonMail,
Sendmail and Postfix delay warnings, an old Exim) and layouts that hide the recipient (only
in the returned copy's X-Original-To, only in the original's VERP return path, only in
X-Failed-Recipients). Texts in German, French, Italian, Spanish, Portuguese, Russian,
Chinese and Japanese, in their usual charsets (ISO-8859-1, KOI8-R, GB2312, ISO-2022-JP).

Labels: the reply's reason (fresh_replies.py), by the layout's phase visibility; a delay
warning's hard reasons are category transient. Split name: ``heldout2``. Never tuned on.
This module is long because it is a table of renderers.
"""

from __future__ import annotations

import base64
import quopri
import random
from collections.abc import Callable
from dataclasses import dataclass
from email.header import Header
from pathlib import Path

from cases import Label, category_for
from formats import Bounce
from fresh_replies import FRESH_REPLIES, FreshReply, fresh_text

SPLIT = "heldout2"


@dataclass
class F(Bounce[FreshReply]):
    """One bounce to render (formats.B's fields; replies from the fresh bank)."""

    def line(self, i: int = 0) -> str:
        rcpt, reply = self.rcpts[i]
        return fresh_text(reply, rcpt, self.sender, self.remote)

    def status(self, i: int = 0) -> str:
        reply = self.rcpts[i][1]
        return reply.status or ("4.0.0" if reply.temporary else "5.0.0")


def _head(f: F, from_: str, subject: str, extra: str = "", ctype: str = "") -> str:
    subject_field = subject if subject.isascii() else Header(subject, "utf-8").encode()
    return (
        f"Return-Path: <>\nReceived: from {f.host} ([192.0.2.80]) by inbound.raymail.test"
        f" with ESMTP id {f.msgid}; {f.date}\nDate: {f.date}\nFrom: {from_}\n"
        f"To: <{f.sender}>\nSubject: {subject_field}\nMessage-Id: <{f.msgid}.ndr@{f.host}>\n"
        f"MIME-Version: 1.0\n{extra}"
        + (ctype or "Content-Type: text/plain; charset=utf-8\n")
        + "\n"
    )


def _copy(
    f: F,
    *,
    to: str | None = None,
    return_path: str | None = None,
    extra: str = "",
    headers_only: bool = False,
) -> str:
    """The returned message (or its headers)."""
    to_field = to if to is not None else ", ".join(f"<{r}>" for r, _ in f.rcpts)
    head = (
        f"Return-Path: <{return_path or f.sender}>\nReceived: from send1.raymail.test "
        f"(send1.raymail.test [192.0.2.10]) by {f.remote}; {f.date}\n{extra}"
        f'From: "Autumn Letter" <{f.sender}>\nTo: {to_field}\nSubject: Your autumn letter\n'
        f"Date: {f.date}\nMessage-ID: <{f.msgid}.orig@raymail.test>\nMIME-Version: 1.0\n"
        f"Content-Type: text/plain; charset=utf-8\n"
    )
    return head if headers_only else head + "\nDear reader,\nthe autumn letter is out.\n"


def _dsn(f: F, *, remote: bool = True, original: bool = True, mta: str = "") -> str:
    out = [f"Reporting-MTA: dns; {mta or f.host}", f"X-Queue-ID: {f.msgid}", ""]
    for i, (rcpt, reply) in enumerate(f.rcpts):
        if original:
            out.append(f"Original-Recipient: rfc822; {rcpt}")
        out += [
            f"Final-Recipient: rfc822; {rcpt}",
            f"Action: {'delayed' if f.delayed else 'failed'}",
            f"Status: {f.status(i)}",
        ]
        if remote and reply.phase != "LOCAL":
            out += [f"Remote-MTA: dns; {f.remote}", f"Diagnostic-Code: smtp; {f.line(i)}"]
        else:
            out.append(f"Diagnostic-Code: x-unix; {f.line(i)}")
        out += [f"Last-Attempt-Date: {f.date}", ""]
    return "\n".join(out)


def _multipart(f: F, head: str, parts: list[tuple[str, str]], subtype: str) -> str:
    """``parts``: (content-type header lines, body)."""
    boundary = f"----=_NDR_{f.rng.randrange(16**10):010x}"
    body = "".join(f"--{boundary}\n{ctype}\n\n{text}\n" for ctype, text in parts)
    body = f"This is a MIME-encapsulated message.\n\n{body}--{boundary}--\n"
    return (
        head.replace(
            "Content-Type: text/plain; charset=utf-8\n",
            f'Content-Type: multipart/{subtype}; boundary="{boundary}"\n',
        )
        + body
    )


def _report(
    f: F, head: str, text: str, dsn: str | None, copy: str, *, headers: bool = False
) -> str:
    parts = [("Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit", text)]
    if dsn is not None:
        parts.append(("Content-Type: message/delivery-status", dsn))
    kind = "text/rfc822-headers" if headers else "message/rfc822"
    parts.append((f"Content-Type: {kind}", copy))
    subtype = "report; report-type=delivery-status" if dsn is not None else "mixed"
    return _multipart(f, head, parts, subtype)


def _dsn_report(f: F, head: str, first: tuple[str, str], dsn: str) -> str:
    """A multipart/report: the given human part, the DSN, the returned message."""
    parts = [
        first,
        ("Content-Type: message/delivery-status", dsn),
        ("Content-Type: message/rfc822", _copy(f)),
    ]
    return _multipart(f, head, parts, "report; report-type=delivery-status")


def _encoded(text: str, charset: str, cte: str) -> tuple[str, str]:
    """(Content-Type/CTE header lines, body) of ``text`` in ``charset``."""
    try:
        data = text.encode(charset)
    except UnicodeEncodeError:  # a reply in a script the charset lacks: the reporter uses UTF-8
        charset, data = "utf-8", text.encode("utf-8")
    if cte == "base64":
        body = base64.encodebytes(data).decode()
    elif cte == "quoted-printable":
        body = quopri.encodestring(data).decode()
    else:
        body = data.decode("latin-1")  # 8bit: the bytes as they are (written back as latin-1)
    return f"Content-Type: text/plain; charset={charset}\nContent-Transfer-Encoding: {cte}", body


def _cmd(reply: FreshReply, rcpt: str) -> str:
    return {
        "RCPT": f"RCPT TO:<{rcpt}>",
        "DATA": "DATA",
        "MAIL": "MAIL FROM:<news@raymail.test>",
        "HELO": "EHLO send1.raymail.test",
        "CONN": "connect",
    }.get(reply.phase, "")


# ------------------------------------------------------------------------- MTA layouts


def exchange2010(f: F) -> str:
    head = _head(
        f,
        f"Microsoft Exchange <postmaster@{f.host}>",
        "Undeliverable: Your autumn letter",
        "X-MS-Exchange-Message-Is-Ndr: \nThread-Topic: Your autumn letter\n",
    )
    lines = ["Delivery has failed to these recipients or groups:", ""]
    for rcpt, _ in f.rcpts:
        lines += [
            f"{rcpt.split('@')[0].title()} ({rcpt})",
            "A problem occurred during the delivery of this message.",
            "",
        ]
    lines += [
        "",
        "Diagnostic information for administrators:",
        "",
        f"Generating server: {f.host}",
        "",
    ]
    for i, (rcpt, _) in enumerate(f.rcpts):
        lines += [rcpt, f"#< #{f.status(i)} smtp;{f.line(i)}> #SMTP#", ""]
    lines += ["Original message headers:", "", _copy(f, headers_only=True)]
    return _dsn_report(
        f, head, ("Content-Type: text/plain; charset=us-ascii", "\n".join(lines)), _dsn(f)
    )


def m365_2023(f: F) -> str:
    head = _head(
        f,
        f"Microsoft Outlook <MicrosoftExchange329e71ec88ae4615bbc36ab6ce41109e@{f.host}>",
        "Undeliverable: Your autumn letter",
        "X-MS-Exchange-Message-Is-Ndr: \nContent-Language: en-US\n",
    )
    rcpt = f.rcpt
    html = (
        f'<html><body><div style="font-family:Segoe UI">'
        f'<p>Your message to <a href="mailto:{rcpt}">{rcpt}</a> couldn\'t be delivered.</p>'
        f"<p><b>{rcpt.split('@')[1]}</b> suggests the following action:</p>"
        f"<p>Contact the recipient by some other means.</p><hr>"
        f"<p><b>More Info for Email Admins</b></p><p>Status code: {f.status()}</p>"
        f"<p>Original Message Details<br>Created Date: {f.date}<br>"
        f"Sender Address: {f.sender}<br>Recipient Address: {rcpt}<br>"
        f"Subject: Your autumn letter</p><p>Error Details<br>Error: {f.line()}<br>"
        f"Message rejected by: {f.remote}</p></div></body></html>"
    )
    alt = _multipart(
        f,
        "Content-Type: text/plain; charset=utf-8\n\n",
        [("Content-Type: text/html; charset=utf-8", html)],
        "alternative",
    ).split("\n\n", 1)
    return _dsn_report(f, head, (alt[0].strip(), alt[1]), _dsn(f, original=False))


def google_workspace(f: F) -> str:
    head = _head(
        f,
        "Mail Delivery Subsystem <mailer-daemon@googlemail.com>",
        "Delivery Status Notification (Failure)",
        "Auto-Submitted: auto-replied\n",
    )
    reason = f.reply.reason
    if reason == "hostunknown":
        top = f"** Address not found **\n\nYour message wasn't delivered to {f.rcpt} because the domain {f.rcpt.split('@')[1]} couldn't be found. Check for typos or unnecessary spaces and try again."
    elif reason in {"spamdetected", "blocked", "badreputation", "policyviolation", "virusdetected"}:
        top = f"** Message blocked **\n\nYour message to {f.rcpt} has been blocked. See technical details below for more information."
    else:
        top = f"** Message not delivered **\n\nThere was a problem delivering your message to {f.rcpt}. See the technical details below, or try resending in a few minutes."
    text = f"{top}\n\nThe response was:\n\n{f.line()}\n"
    html = f"<html><body><h3>{top.splitlines()[0]}</h3><p>{top.splitlines()[-1]}</p><p>The response was:</p><p>{f.line()}</p></body></html>"
    alt_boundary = f"alt{f.rng.randrange(10**9)}"
    alt = (
        f"--{alt_boundary}\nContent-Type: text/plain; charset=UTF-8\n\n{text}\n"
        f"--{alt_boundary}\nContent-Type: text/html; charset=UTF-8\n\n{html}\n--{alt_boundary}--"
    )
    return _dsn_report(
        f,
        head,
        (f'Content-Type: multipart/alternative; boundary="{alt_boundary}"', alt),
        _dsn(f, mta="mx.google.com"),
    )


def icloud(f: F) -> str:
    head = _head(
        f,
        "Mail Delivery System <MAILER-DAEMON@icloud.com>",
        "Delivery Status Notification (Failure)",
    )
    lines = ["Delivery to the following recipient failed permanently:", ""]
    for i, (rcpt, _) in enumerate(f.rcpts):
        lines += [f"  * {rcpt}", "", f"Technical details: {f.line(i)}", ""]
    return _report(f, head, "\n".join(lines), None, _copy(f))


def gmx(f: F) -> str:
    head = _head(
        f,
        "Mail Delivery System <mailer-daemon@gmx.net>",
        "Mail delivery failed: returning message to sender",
        "X-UI-Out-Filterresults: notjunk:1\n",
    )
    lines = [
        "This message was created automatically by mail delivery software.",
        "",
        "A message that you sent could not be delivered to one or more of",
        "its recipients. This is a permanent error. The following address(es)",
        "failed:",
        "",
    ]
    for i, (rcpt, reply) in enumerate(f.rcpts):
        if reply.phase == "LOCAL":
            lines += [f"{rcpt}:", f"{f.line(i)}", ""]
        else:
            command = {"RCPT": "RCPT TO", "DATA": "DATA", "MAIL": "MAIL FROM", "HELO": "EHLO"}.get(
                reply.phase, "connect"
            )
            lines += [
                f"{rcpt}:",
                f"SMTP error from remote server for {command} command, host: {f.remote} (192.0.2.25) reason: {f.line(i)}",
                "",
            ]
    return _report(f, head, "\n".join(lines), None, _copy(f), headers=True)


def tonline(f: F) -> str:
    head = _head(
        f,
        "Mail Delivery System <MAILER-DAEMON@mailout.t-online.de>",
        "Unzustellbar: Your autumn letter",
    )
    text = (
        "Ihre Nachricht konnte nicht zugestellt werden.\n\n"
        f"Empfänger: {f.rcpt}\nGrund: {f.line()}\n\n"
        "Bitte prüfen Sie die Adresse und versuchen Sie es erneut.\n"
    )
    ctype, body = _encoded(text, "iso-8859-1", "quoted-printable")
    return _multipart(f, head, [(ctype, body), ("Content-Type: message/rfc822", _copy(f))], "mixed")


def orange_fr(f: F) -> str:
    head = _head(f, "Service de messagerie Orange <mailer-daemon@orange.fr>", "Message non remis")
    lines = ["Votre message n'a pas pu être remis à un ou plusieurs de ses destinataires.", ""]
    for i, (rcpt, _) in enumerate(f.rcpts):
        lines += [f"Destinataire : {rcpt}", f"Motif : {f.line(i)}", ""]
    lines.append("Ceci est un message automatique, merci de ne pas y répondre.")
    ctype, body = _encoded("\n".join(lines), "iso-8859-1", "quoted-printable")
    return _multipart(f, head, [(ctype, body), ("Content-Type: message/rfc822", _copy(f))], "mixed")


def libero_it(f: F) -> str:
    head = _head(f, "Mail Delivery System <mailer-daemon@libero.it>", "Messaggio non recapitato")
    text = (
        "Il messaggio non è stato recapitato ai seguenti destinatari:\n\n"
        + "".join(f"{r}\nMotivo: {f.line(i)}\n\n" for i, (r, _) in enumerate(f.rcpts))
        + "--- Messaggio originale ---\n\n"
        + _copy(f)
    )
    ctype, body = _encoded(text, "iso-8859-1", "8bit")
    return head.replace("Content-Type: text/plain; charset=utf-8\n", ctype + "\n") + body


def terra_es(f: F) -> str:
    head = _head(f, "Sistema de correo <postmaster@terra.es>", "Mensaje no entregado")
    text = (
        "No se ha podido entregar su mensaje a los siguientes destinatarios:\n\n"
        + "".join(f"{r}: {f.line(i)}\n" for i, (r, _) in enumerate(f.rcpts))
        + "\nEste es un mensaje generado automáticamente.\n"
    )
    ctype, body = _encoded(text, "utf-8", "quoted-printable")
    return _multipart(
        f,
        head,
        [(ctype, body), ("Content-Type: text/rfc822-headers", _copy(f, headers_only=True))],
        "mixed",
    )


def uol_br(f: F) -> str:
    head = _head(f, "Sistema de entrega <mailer-daemon@uol.com.br>", "Mensagem não entregue")
    text = (
        "Não foi possível entregar sua mensagem para o seguinte destinatário:\n\n"
        f"<{f.rcpt}>\nMotivo: {f.line()}\n\nMensagem original em anexo.\n"
    )
    ctype, body = _encoded(text, "iso-8859-1", "base64")
    return _multipart(f, head, [(ctype, body), ("Content-Type: message/rfc822", _copy(f))], "mixed")


def rambler_ru(f: F) -> str:
    head = _head(f, "Mail Delivery System <mailer-daemon@rambler.ru>", "Сообщение не доставлено")
    text = (
        "Ваше сообщение не может быть доставлено следующим адресатам:\n\n"
        + "".join(f"  {r}\n  Причина: {f.line(i)}\n\n" for i, (r, _) in enumerate(f.rcpts))
        + "Это письмо создано автоматически.\n"
    )
    ctype, body = _encoded(text, "koi8-r", "8bit")
    return _multipart(f, head, [(ctype, body), ("Content-Type: message/rfc822", _copy(f))], "mixed")


def netease_cn(f: F) -> str:
    head = _head(f, "Mail Delivery Subsystem <postmaster@163.com>", "系统退信")
    text = f"您发送到{f.rcpt}的邮件被退回。\n\n退信原因：{f.line()}\n\n原邮件主题：Your autumn letter\n"
    ctype, body = _encoded(text, "gb2312", "base64")
    return _multipart(
        f,
        head,
        [(ctype, body), ("Content-Type: text/rfc822-headers", _copy(f, headers_only=True))],
        "mixed",
    )


def nifty_ja(f: F) -> str:
    head = _head(f, "Mail Delivery Subsystem <MAILER-DAEMON@nifty.com>", "メール配信エラー")
    text = f"以下のアドレスへのメール配信に失敗しました。\n\n宛先：{f.rcpt}\n原因：{f.line()}\n\n元のメッセージは添付されています。\n"
    ctype, body = _encoded(text, "iso-2022-jp", "7bit")
    if "utf-8" in ctype:
        ctype, body = _encoded(text, "utf-8", "base64")
    return _multipart(f, head, [(ctype, body), ("Content-Type: message/rfc822", _copy(f))], "mixed")


def domino9(f: F) -> str:
    head = _head(
        f,
        f"Mail Router <Mail.Router@{f.host}>",
        "DELIVERY FAILURE: Your autumn letter",
        "X-Mailer: Lotus Domino Release 9.0.1FP10\n",
    )
    text = (
        "Delivery Failure Report\n\n"
        "Your document:  Your autumn letter\n"
        f"was not delivered to:  {f.rcpt}\n"
        f"because:  {f.line()}\n"
        "What should you do?\n  * Check the recipient's address and resend.\n"
    )
    return _report(f, head, text, _dsn(f), _copy(f))


def communigate(f: F) -> str:
    head = _head(
        f,
        f"Mail Delivery Module <MAILER-DAEMON@{f.host}>",
        "Undeliverable mail: Your autumn letter",
        "X-Mailer: CommuniGate Pro MAPI Connector\n",
    )
    lines = []
    for i, (rcpt, _) in enumerate(f.rcpts):
        lines += [
            f"Failed to deliver to '{rcpt}'",
            f"SMTP module(domain {rcpt.split('@')[1]}) reports:",
            f" host {f.remote} says:",
            f" {f.line(i)}",
            "",
        ]
    return _report(f, head, "\n".join(lines), None, _copy(f))


def smartermail(f: F) -> str:
    head = _head(f, f"Mail Delivery System <postmaster@{f.host}>", "Undeliverable Message")
    lines = ["The message could not be delivered to the following recipients:", ""]
    for i, (rcpt, _) in enumerate(f.rcpts):
        lines += [f"Failed Recipient: {rcpt}", f"Reason: Remote host said: {f.line(i)}", ""]
    lines += ["   -- The header and top 20 lines of the message follows --", "", _copy(f)]
    return head + "\n".join(lines)


def proofpoint(f: F) -> str:
    head = _head(
        f,
        f"Mail Delivery Subsystem <MAILER-DAEMON@{f.host}>",
        "Undeliverable: Your autumn letter",
        "X-Proofpoint-Spam-Details: rule=notspam\n",
    )
    rcpt, reply = f.rcpts[0]
    code = reply.code or 550
    text = (
        f"The following message to <{rcpt}> was undeliverable.\n"
        f"The reason for the problem:\n{f.status()} - Permanent failure {code}-'{f.line()[4:] if reply.phase != 'LOCAL' else f.line()}'\n"
    )
    return _report(f, head, text, None, _copy(f, headers_only=True), headers=True)


def barracuda_ess(f: F) -> str:
    head = _head(
        f,
        "Barracuda Email Security Service <bounce@ess.barracudanetworks.com>",
        "Undelivered Mail: Your autumn letter",
    )
    text = (
        f"Your message to {f.rcpt} could not be delivered.\n\n"
        f"The following is the error returned by the remote server:\n\n{f.line()}\n\n"
        "This is an automatically generated message; please do not reply.\n"
    )
    return _report(f, head, text, None, _copy(f, headers_only=True), headers=True)


def mimecast_html(f: F) -> str:
    head = _head(
        f, f"Mimecast Postmaster <postmaster@{f.host}>", "Failed to deliver: Your autumn letter"
    )
    html = (
        "<html><head><style>td{padding:4px}</style></head><body>"
        "<table><tr><td><h2>Your message couldn't be delivered</h2></td></tr>"
        f"<tr><td>Recipient:</td><td>{f.rcpt}</td></tr>"
        f"<tr><td>The response from the remote server was:</td></tr><tr><td>{f.line()}</td></tr>"
        "</table></body></html>"
    )
    return _multipart(
        f,
        head,
        [
            ("Content-Type: text/html; charset=utf-8", html),
            ("Content-Type: message/rfc822", _copy(f)),
        ],
        "mixed",
    )


def protonmail(f: F) -> str:
    head = _head(f, "Mail Delivery System <MAILER-DAEMON@protonmail.ch>", "Delivery failed")
    text = f"Delivery to the recipient {f.rcpt} failed. Reason: {f.line()}\n"
    return _report(f, head, text, _dsn(f, original=False), _copy(f))


def sendmail_warning(f: F) -> str:
    """A Sendmail delay warning: the message is still queued."""
    head = _head(
        f,
        f"Mail Delivery Subsystem <MAILER-DAEMON@{f.host}>",
        "Warning: could not send message for past 4 hours",
        "Auto-Submitted: auto-generated (warning-timeout)\n",
    )
    lines = [
        f"The original message was received at {f.date}\nfrom send1.raymail.test [192.0.2.10]\n",
        "    **********************************************",
        "    **      THIS IS A WARNING MESSAGE ONLY      **",
        "    **  YOU DO NOT NEED TO RESEND YOUR MESSAGE  **",
        "    **********************************************\n",
        "   ----- Transcript of session follows -----",
    ]
    for i, (rcpt, reply) in enumerate(f.rcpts):
        if reply.phase == "LOCAL":
            lines.append(f"<{rcpt}>... Deferred: {f.line(i)}")
        else:
            lines += [
                f"... while talking to {f.remote}.:",
                f">>> {_cmd(reply, rcpt)}",
                f"<<< {f.line(i)}",
                f"<{rcpt}>... Deferred: {f.line(i)[4:]}",
            ]
    lines.append(
        "Warning: message still undelivered after 4 hours\nWill keep trying until message is 5 days old"
    )
    return _report(
        f, head, "\n".join(lines) + "\n", _dsn(f), _copy(f, headers_only=True), headers=True
    )


def postfix_delay(f: F) -> str:
    head = _head(
        f, f"MAILER-DAEMON@{f.host} (Mail Delivery System)", "Delayed Mail (still being retried)"
    )
    lines = [
        f"This is the mail system at host {f.host}.\n",
        "####################################################################",
        "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
        "####################################################################\n",
        "Your message could not be delivered for more than 4 hour(s).",
        "It will be retried until it is 5 day(s) old.\n",
    ]
    for i, (rcpt, reply) in enumerate(f.rcpts):
        if reply.phase == "LOCAL":
            lines.append(f"<{rcpt}>: {f.line(i)}\n")
        else:
            lines.append(
                f"<{rcpt}>: host {f.remote}[192.0.2.25] said: {f.line(i)} (in reply to {_cmd(reply, rcpt).split(':')[0]} command)\n"
            )
    return _report(f, head, "\n".join(lines), _dsn(f), _copy(f, headers_only=True), headers=True)


def exim_old(f: F) -> str:
    head = _head(
        f,
        f"Mail Delivery System <Mailer-Daemon@{f.host}>",
        "Mail delivery failed: returning message to sender",
        f"X-Failed-Recipients: {', '.join(r for r, _ in f.rcpts)}\nAuto-Submitted: auto-replied\n",
    )
    lines = [
        "This message was created automatically by mail delivery software.\n",
        "A message that you sent could not be delivered to one or more of its",
        "recipients. This is a permanent error. The following address(es) failed:\n",
    ]
    for i, (rcpt, reply) in enumerate(f.rcpts):
        if reply.phase == "LOCAL":
            lines.append(f"  {rcpt}\n    {f.line(i)}\n")
        else:
            lines.append(
                f"  {rcpt}\n    SMTP error from remote mail server after {_cmd(reply, rcpt)}:\n    host {f.remote} [192.0.2.25]: {f.line(i)}\n"
            )
    return (
        head
        + "\n".join(lines)
        + "\n------ This is a copy of the message's headers. ------\n\n"
        + _copy(f, headers_only=True)
    )


# ------------------------------------------------------------ recipients hidden elsewhere


def _anonymous(f: F, i: int = 0) -> str:
    rcpt = f.rcpts[i][0]
    return f.line(i).replace(rcpt, "the recipient").replace(rcpt.split("@")[0], "the user")


def quoted_original_to(f: F) -> str:
    """The recipient only in the returned copy's X-Original-To (the To is a list name)."""
    head = _head(f, f"Mail Delivery System <postmaster@{f.host}>", "Returned mail: delivery failed")
    text = f"Your message could not be delivered.\n\nThe server answered: {_anonymous(f)}\n\n--- Returned message headers ---\n\n"
    return (
        head
        + text
        + _copy(
            f,
            to="Autumn readers:;",
            extra=f"X-Original-To: {f.rcpt}\nDelivered-To: {f.rcpt}\n",
            headers_only=True,
        )
    )


def verp_return_path(f: F) -> str:
    """The recipient only in the original's VERP return path (news-local=domain@...)."""
    local, domain = f.rcpt.split("@")
    verp = f"news-{local}={domain}@bounces.raymail.test"
    head = _head(f, f"MAILER-DAEMON@{f.host}", "Undelivered Mail Returned to Sender")
    text = f"Delivery failed for one recipient.\nReason: {_anonymous(f)}\n"
    return _multipart(
        f,
        head,
        [
            ("Content-Type: text/plain; charset=us-ascii", text),
            (
                "Content-Type: text/rfc822-headers",
                _copy(f, to="undisclosed-recipients:;", return_path=verp, headers_only=True),
            ),
        ],
        "mixed",
    )


def failed_header_multi(f: F) -> str:
    """Recipients only in X-Failed-Recipients; the body names none."""
    head = _head(
        f,
        f"Mail Delivery System <MAILER-DAEMON@{f.host}>",
        "Mail delivery failed",
        f"X-Failed-Recipients: {', '.join(r for r, _ in f.rcpts)}\n",
    )
    text = f"Delivery failed permanently for the recipients listed in the headers.\nThe first answer was: {_anonymous(f)}\n"
    return head + text


RENDERERS: dict[str, Callable[[F], str]] = {
    r.__name__: r
    for r in (
        exchange2010, m365_2023, google_workspace, icloud, gmx, tonline, orange_fr, libero_it,
        terra_es, uol_br, rambler_ru, netease_cn, nifty_ja, domino9, communigate, smartermail,
        proofpoint, barracuda_ess, mimecast_html, protonmail, sendmail_warning, postfix_delay,
        exim_old, quoted_original_to, verp_return_path, failed_header_multi,
    )
}  # fmt: skip
SHOWS_PHASE = frozenset({"gmx", "sendmail_warning", "postfix_delay", "exim_old"})
DELAYED = frozenset({"sendmail_warning", "postfix_delay"})
MULTI = frozenset({"exchange2010", "icloud", "gmx", "orange_fr", "libero_it", "terra_es",
                   "rambler_ru", "communigate", "smartermail", "exim_old", "failed_header_multi",
                   "sendmail_warning", "postfix_delay"})  # fmt: skip
# A delay warning names a cause only for these; other temporary replies say just "later".
_DELAY_REASONS = frozenset(
    {"mailboxfull", "systemfull", "ratelimited", "networkerror", "badreputation", "requireptr"}
)
_DOMAINS = ("post.example", "mailhost.example", "inbox.example", "web.example", "cloud.example")
_NAMES = ("ingrid", "tomas", "yuki", "fatima", "diego", "olga", "wei", "amelie", "kofi", "sanna")
_SURNAMES = ("lind", "kowalski", "tanaka", "mensah", "ferreira", "ivanova", "zhang", "moreau")


def _pool(name: str) -> list[FreshReply]:
    shows = name in SHOWS_PHASE
    pool = [r for r in FRESH_REPLIES if r.label(shows) != "skip"]
    if name in DELAYED:
        pool = [r for r in pool if r.temporary and r.reason in _DELAY_REASONS]
    return pool


def render_fresh(out: Path, seed: int = 2, per_format: int = 24) -> list[Label]:
    """Render every fresh layout with a sample of the fresh bank; write .eml files."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    labels = []
    serial = 0
    for name, render in RENDERERS.items():
        pool = _pool(name)
        chosen = rng.sample(pool, min(per_format, len(pool)))
        for reply in chosen:
            serial += 1
            count = rng.choice((2, 3)) if name in MULTI and rng.random() < 0.25 else 1
            rcpts = []
            for _ in range(count):
                addr = f"{rng.choice(_NAMES)}.{rng.choice(_SURNAMES)}{rng.randrange(1000)}@{rng.choice(_DOMAINS)}"
                rcpts.append((addr, reply))
            f = F(
                rcpts=rcpts,
                sender="news@raymail.test",
                host=f"relay{rng.randrange(1, 30)}.{rng.choice(_DOMAINS)}",
                remote=f"in{rng.randrange(1, 9)}.mx.{rcpts[0][0].split('@')[1]}",
                date="Tue, 13 Oct 2026 08:15:00 +0200",
                msgid=f"h2x{serial:05d}",
                rng=rng,
                delayed=name in DELAYED,
            )
            text = render(f)
            if rng.random() < 0.3:
                text = text.replace("\n", "\r\n")
            file = f"{name}-{serial:05d}.eml"
            encoding = "latin-1" if name in {"libero_it", "rambler_ru"} else "utf-8"
            (out / file).write_bytes(text.encode(encoding))
            reason = reply.label(name in SHOWS_PHASE)
            labels.append(
                Label(
                    file=f"{out.name}/{file}",
                    format=f"fresh:{name}",
                    recipients=sorted(r for r, _ in rcpts),
                    reason=reason,
                    category=category_for(reason, f.delayed),
                    split=SPLIT,
                    reply=reply.key,
                    source="fresh",
                )
            )
    return labels
