"""More tuned-split phrasings, for the pairs of reasons that are easy to confuse.

Added after held-out split 2 was written and scored once (its baseline), to develop the
rules on: every reply here is in the tuned split, rendered through the tuned layouts of
formats.py (never the held-out ones), and none is a phrasing of either held-out split.
Kept apart from replies.py so that the existing splits stay exactly as they were (the
reply bank's positions decide held-out 1). Labels follow the documented definitions; the
comment on each group says which definition decides.
"""

from __future__ import annotations

import random
from pathlib import Path

import formats
from cases import Label, category_for
from replies import REPLIES, Reply

# (reason, phase, code, status, text)
_EXTRA: tuple[tuple[str, str, int, str, str], ...] = (
    # mailboxfull (the recipient's storage) against systemfull (the server's)
    ("mailboxfull", "RCPT", 452, "4.2.2", "User {rcpt} has no storage space left in the mailbox"),
    ("mailboxfull", "RCPT", 552, "", "Recipient's mailbox has exceeded its allotted space"),
    ("mailboxfull", "DATA", 452, "", "Not enough space in the inbox of this user"),
    ("mailboxfull", "RCPT", 552, "5.2.2", "Почтовый ящик получателя полон"),
    ("mailboxfull", "RCPT", 552, "5.2.2", "收件人信箱空间不足"),
    ("mailboxfull", "RCPT", 552, "", "メールボックスの容量を超えています"),
    ("mailboxfull", "RCPT", 552, "5.2.2", "La casilla del destinatario está llena"),
    ("mailboxfull", "RCPT", 552, "5.2.2", "Boîte de réception saturée"),
    ("mailboxfull", "RCPT", 452, "4.2.2", "Insufficient storage space in the mailbox of this user"),
    ("systemfull", "DATA", 452, "4.3.1", "Spool directory full, please retry"),
    ("systemfull", "DATA", 452, "", "Insufficient disk space on the mail server; try again later"),
    ("systemfull", "RCPT", 452, "4.3.1", "Server storage exhausted"),
    ("systemfull", "DATA", 452, "", "Error writing message: file system is out of space"),
    # policyviolation (the message breaks a policy) against securityerror / blocked
    ("policyviolation", "DATA", 554, "5.7.1", "Attachments of type .js are blocked by company policy"),
    ("policyviolation", "DATA", 550, "5.7.1", "This message violates our security policy and was not delivered"),
    ("policyviolation", "DATA", 550, "", "Message content is not permitted by the domain's mail policy"),
    ("policyviolation", "DATA", 552, "5.7.0", "Rejected: forbidden file extension in attachment"),
    ("policyviolation", "DATA", 554, "5.7.1", "Blocked by data loss prevention policy"),
    ("policyviolation", "DATA", 550, "5.7.1", "Die Nachricht verstößt gegen unsere Sicherheitsrichtlinie"),
    ("securityerror", "MAIL", 535, "5.7.8", "Authentication failed: invalid user name or password"),
    ("securityerror", "MAIL", 530, "5.7.57", "Client not authenticated to send mail"),
    ("securityerror", "MAIL", 550, "5.7.1", "You are not permitted to send as this user"),
    # userunknown (local part) against hostunknown (domain)
    ("userunknown", "RCPT", 550, "5.1.1", "No mailbox by that name is known at this domain"),
    ("userunknown", "RCPT", 550, "", "Unrouteable address: {rcpt}"),
    ("userunknown", "RCPT", 550, "5.1.1", "Адресат не существует"),
    ("userunknown", "RCPT", 550, "", "ユーザーが存在しません"),
    ("userunknown", "RCPT", 550, "5.1.1", "Destinatário inválido"),
    ("hostunknown", "LOCAL", 0, "5.1.2", "Domain {host} does not exist in DNS"),
    ("hostunknown", "LOCAL", 0, "5.1.2", "lookup of MX for {host} returned NXDOMAIN"),
    ("hostunknown", "LOCAL", 0, "5.1.2", "the MX records of the domain point to hosts that do not exist"),
    ("hostunknown", "LOCAL", 0, "5.1.2", "Le domaine {host} n'existe pas"),
    ("hostunknown", "LOCAL", 0, "5.1.2", "no A or MX record for the recipient domain"),
    # networkerror (DNS / routing failed) against expired (the time ran out)
    ("networkerror", "LOCAL", 0, "4.4.3", "DNS server returned SERVFAIL for {host}"),
    ("networkerror", "LOCAL", 0, "4.4.3", "Temporary DNS error while resolving {host}"),
    ("networkerror", "LOCAL", 0, "5.4.6", "Possible mail loop: too many Received header lines"),
    ("networkerror", "LOCAL", 0, "4.4.1", "Network is unreachable while connecting to {host}"),
    ("networkerror", "LOCAL", 0, "4.4.3", "Resolver timeout for MX of {host}"),
    ("expired", "LOCAL", 0, "4.4.7", "Gave up after repeated failures over 5 days"),
    ("expired", "LOCAL", 0, "4.4.7", "Retry period exceeded: message was not deliverable within 72 hours"),
    ("expired", "LOCAL", 0, "4.4.7", "Host {host} has been failing for a long time; giving up"),
    ("expired", "RCPT", 451, "4.4.3", "Try again later (remote server busy)"),
    # rejected (the envelope sender) against blocked (our IP / host)
    ("rejected", "MAIL", 550, "5.7.1", "Mail from address {sender} is on the sender blocklist"),
    ("rejected", "MAIL", 553, "", "Sender domain is unknown"),
    ("rejected", "MAIL", 550, "", "Absender unzulässig"),
    ("rejected", "MAIL", 550, "", "Remitente rechazado"),
    ("rejected", "MAIL", 550, "5.7.1", "Envelope sender is not accepted by this server"),
    ("blocked", "CONN", 554, "5.7.1", "Connection from [192.0.2.10] refused by policy"),
    ("blocked", "RCPT", 550, "5.7.1", "Client IP 192.0.2.10 is on our local deny list"),
    ("blocked", "CONN", 554, "", "Sie haben keine Berechtigung: Ihre IP-Adresse wird abgelehnt"),
    ("blocked", "RCPT", 550, "5.7.1", "Votre serveur est inscrit sur une liste noire"),
    # badreputation (the IP's reputation) against blocked (a list)
    ("badreputation", "CONN", 554, "5.7.1", "Service refused: the reputation of your sending IP is too low"),
    ("badreputation", "RCPT", 550, "", "Rejected: your IP has a bad sender reputation"),
    # rejected against undefined: answers to MAIL FROM that name no cause
    ("rejected", "MAIL", 550, "5.0.0", "Command rejected"),
    ("rejected", "MAIL", 553, "5.0.0", "Not acceptable"),
    # filtered (the recipient's choice) against notaccept (a host that takes no mail)
    ("filtered", "RCPT", 550, "5.2.1", "This recipient does not accept messages from your address"),
    ("filtered", "DATA", 550, "", "Message rejected by the recipient's mailbox rules"),
    ("notaccept", "LOCAL", 0, "5.1.10", "Recipient domain publishes a null MX record"),
    # spamdetected against blocked
    ("spamdetected", "DATA", 550, "5.7.1", "Message identified as junk mail and refused"),
    ("spamdetected", "DATA", 554, "5.7.1", "Rejected by the content filter: spam score too high"),
    ("notcompliantrfc", "DATA", 550, "5.7.1", "Missing the required Date header field"),
    ("notcompliantrfc", "DATA", 554, "5.6.0", "Duplicate Message-ID header fields are not allowed"),
    ("systemerror", "DATA", 451, "4.3.0", "Internal delivery error, please retry later"),
)  # fmt: skip

EXTRA_REPLIES = tuple(
    Reply(f"x-{reason}-{i}", reason, phase, code, status, text)
    for i, (reason, phase, code, status, text) in enumerate(_EXTRA)
)
# Tuned layouts only (held-out 1's formats never render these).
_TUNED_FORMATS = [n for n in formats.FORMATS if n not in formats.HELD_OUT_FORMATS]


def render_extra(out: Path, seed: int = 3, per_reply: int = 6) -> list[Label]:
    """Each extra reply through ``per_reply`` tuned layouts; labels (split tuned)."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    labels = []
    serial = 0
    for reply in EXTRA_REPLIES:
        for name in rng.sample(_TUNED_FORMATS, per_reply):
            serial += 1
            domain = rng.choice(("tuned.example", "extra.example", "dev.example"))
            rcpt = f"{rng.choice(formats._FIRST)}.{rng.choice(formats._LAST)}{serial}@{domain}"
            b = formats.B(
                rcpts=[(rcpt, reply)],
                sender="news@raymail.test",
                host=f"mx{rng.randrange(1, 9)}.{domain}",
                remote=f"in.{domain}",
                date="Mon, 01 Jun 2026 10:00:00 +0000",
                msgid=f"x{serial}",
                rng=rng,
            )
            file = f"{name}-x{serial:05d}.eml"
            (out / file).write_bytes(formats.FORMATS[name](b).encode("utf-8"))
            reason = reply.reason
            hidden_phase = reply.phase in {"MAIL", "DATA"} and name not in formats.SHOWS_PHASE
            if hidden_phase and reply.text in {"Command rejected", "Not acceptable"}:
                continue  # without the phase nothing says what these mean
            labels.append(
                Label(
                    file=f"{out.name}/{file}",
                    format=name,
                    recipients=[rcpt],
                    reason=reason,
                    category=category_for(reason),
                    split="tuned",
                    reply=reply.key,
                    source="written",
                )
            )
    return labels


# ------------------------------------------- tuned layouts that hide the recipient elsewhere


def _bare(b: formats.B) -> str:
    return b.line().replace(b.rcpt, "the recipient")


def envelope_header_only(b: formats.B) -> str:
    """Recipient only in the returned copy's Delivered-To (its To is a list name)."""
    head = formats._headers(b, f"postmaster@{b.host}", "Delivery failure")
    original = formats._original(b, to_field="Readers:;").replace(
        "To: Readers:;\n", f"To: Readers:;\nDelivered-To: {b.rcpt}\n"
    )
    return (
        head
        + f"Delivery failed.\nReason: {_bare(b)}\n\n--- Original message follows ---\n\n"
        + original
    )


def verp_plus_path(b: formats.B) -> str:
    """Recipient only in the returned copy's VERP Return-Path (bounce-local=domain@...)."""
    local, domain = b.rcpt.split("@")
    head = formats._headers(b, f"MAILER-DAEMON@{b.host}", "Returned mail")
    original = formats._original(
        b, to_field="list:;", return_path=f"bounce-{local}={domain}@raymail.test"
    )
    return (
        head
        + f"Your mail could not be delivered: {_bare(b)}\n\n--- Original message follows ---\n\n"
        + original
    )


def labelled_line(b: formats.B) -> str:
    """A label line in the reporter's language (full-width colon in CJK)."""
    label = b.rng.choice(("Empfänger: ", "Destinataire : ", "收件人：", "宛先：", "Получатель: "))
    head = formats._headers(
        b,
        f"MAILER-DAEMON@{b.host}",
        "Undeliverable",
        ctype="Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n",
    )
    return (
        head
        + f"{label}{b.rcpt}\n{_bare(b)}\n\n--- Original message follows ---\n\n"
        + formats._original(b, to_field="list:;")
    )


HIDDEN_LAYOUTS = {f.__name__: f for f in (envelope_header_only, verp_plus_path, labelled_line)}


def render_hidden(out: Path, seed: int = 4, per_layout: int = 20) -> list[Label]:
    """Tuned replies (never held-out ones) through the hidden-recipient layouts."""
    rng = random.Random(seed)
    tuned = [r for r in REPLIES if not r.held_out and r.phase in {"RCPT", "CONN"}]
    labels = []
    for name, render in HIDDEN_LAYOUTS.items():
        for n, reply in enumerate(rng.sample(tuned, per_layout)):
            rcpt = f"{rng.choice(formats._FIRST)}-{rng.choice(formats._LAST)}{n}@hidden.example"
            b = formats.B(
                [(rcpt, reply)],
                "news@raymail.test",
                "mx.hidden.example",
                "in.hidden.example",
                "Mon, 01 Jun 2026 10:00:00 +0000",
                f"h{name}{n}",
                rng,
            )
            file = f"{name}-{n:03d}.eml"
            (out / file).write_bytes(render(b).encode("utf-8"))
            labels.append(
                Label(
                    f"{out.name}/{file}",
                    name,
                    [rcpt],
                    reply.reason,
                    category_for(reply.reason),
                    "tuned",
                    reply.key,
                    "written",
                )
            )
    return labels
