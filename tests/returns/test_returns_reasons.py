"""Reason decisions from enhanced codes and reply text (RFC 3463 plus common server wording)."""

from __future__ import annotations

import pytest

from raymail.returns.reasons import (
    CATEGORIES,
    REASON_CATEGORY,
    category_of,
    decide,
    find_smtp_code,
    find_status,
    status_reason,
)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("550 5.1.1 <a@b.example>: Recipient address rejected: User unknown", "userunknown"),
        ("550 No such user here", "userunknown"),
        ("550 Requested action not taken: mailbox unavailable", "userunknown"),
        ("553 5.1.3 Invalid recipient address syntax", "userunknown"),
        ("Sorry, no mailbox here by that name. (#5.1.1)", "userunknown"),
        ("554 delivery error: dd This user doesn't have a yahoo.com account", "userunknown"),
        ("Host or domain name not found. Name service error for name=x.example", "hostunknown"),
        ("Sorry, I couldn't find any host named nowhere.example. (#5.1.2)", "hostunknown"),
        ("552 5.2.2 Mailbox full", "mailboxfull"),
        ("452 4.2.2 The email account that you tried to reach is over quota", "mailboxfull"),
        ("Sorry, the user's maildir has overdrawn his diskspace quota", "mailboxfull"),
        ("550 5.2.1 The email account that you tried to reach is disabled", "suspend"),
        ("550 Client host [192.0.2.1] blocked using zen.spamhaus.org", "blocked"),
        (
            "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using "
            "b.barracudacentral.org",
            "blocked",
        ),
        ("421 4.7.0 [192.0.2.1] rate limited due to IP reputation", "badreputation"),
        ("450 4.7.1 Client host rejected: cannot find your reverse hostname", "requireptr"),
        ("554 5.7.1 Relay access denied", "norelaying"),
        (
            "550 5.7.1 Our system has detected that this message is likely unsolicited mail",
            "spamdetected",
        ),
        ("554 5.7.1 Message rejected: spam content detected", "spamdetected"),
        ("554 5.7.0 Rejected: virus found in attachment", "virusdetected"),
        ("552 5.3.4 Message size exceeds fixed limit", "mesgtoobig"),
        (
            "550 5.7.26 This message does not have authentication information or fails to pass "
            "authentication checks (SPF or DKIM)",
            "authfailure",
        ),
        (
            "550 5.7.1 Unauthenticated email from x.example is not accepted due to "
            "domain's DMARC policy",
            "authfailure",
        ),
        ("530 5.7.0 Must issue a STARTTLS command first", "failedstarttls"),
        ("421 4.7.0 Too many concurrent SMTP connections from this IP", "ratelimited"),
        (
            "450 4.2.1 The user you are trying to contact is receiving mail at a rate "
            "that prevents additional messages from being delivered",
            "speeding",
        ),
        ("retry timeout exceeded", "expired"),
        ("connect to mx.example[192.0.2.1]:25: Connection timed out", "networkerror"),
        ("550 5.7.1 Message violates our content policy", "policyviolation"),
        ("550 5.7.1 This message is not RFC 5322 compliant", "notcompliantrfc"),
        ("553 5.1.8 Sender address rejected: Domain not found", "rejected"),
        ("556 5.1.10 Recipient address has null MX", "notaccept"),
        ("451 4.3.0 Mail server temporarily rejected message", "systemerror"),
        ("452 4.3.1 Insufficient system storage", "systemfull"),
        ("Command died with status 1: /usr/bin/procmail", "mailererror"),
        ("Die E-Mail-Adresse wurde im E-Mail-System des Empfängers nicht gefunden", "userunknown"),
        ("L'adresse de messagerie que vous avez entrée est introuvable", "userunknown"),
        ("El buzón del destinatario está lleno", "mailboxfull"),
        ("Postfach voll", "mailboxfull"),
        ("553 sorry, that domain isn't in my list of allowed rcpthosts (#5.7.1)", "norelaying"),
        ("550 5.4.1 Recipient address rejected: Access denied. AS(201806281)", "userunknown"),
        ("554 5.7.1 <a@b.example>: Recipient address rejected: Access denied", "filtered"),
        ("550 5.7.1 Command rejected", "blocked"),
    ],
)
def test_reply_text(reply: str, reason: str) -> None:
    status, code = find_status(reply), find_smtp_code(reply)
    action = "delayed" if (status or "").startswith("4") or str(code).startswith("4") else "failed"
    got, _ = decide(status=status, smtp_code=code, text=reply, action=action)
    assert got == reason


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        ("5.1.1", "userunknown"),
        ("5.1.2", "hostunknown"),
        ("5.2.2", "mailboxfull"),
        ("4.2.2", "mailboxfull"),
        ("5.3.4", "mesgtoobig"),
        ("5.4.7", "expired"),
        ("5.7.1", "blocked"),
        ("5.7.25", "requireptr"),
        ("2.0.0", "delivered"),
    ],
)
def test_status_alone(status: str, reason: str) -> None:
    got, _ = decide(status=status, smtp_code=None, text="", action="failed")
    assert got == reason


def test_text_refines_a_generic_code() -> None:
    assert status_reason("5.7.1") == ("blocked", False)
    got, _ = decide(status="5.7.1", smtp_code=550, text="550 5.7.1 spam detected", action="failed")
    assert got == "spamdetected"


def test_failed_after_temporary_errors_is_expired() -> None:
    got, _ = decide(status="4.4.1", smtp_code=None, text="Connection timed out", action="failed")
    assert got == "expired"


def test_code_extraction() -> None:
    assert find_status("550-5.1.1 The email account") == "5.1.1"
    assert find_status("#550 5.1.10 RESOLVER.ADR.RecipientNotFound") == "5.1.10"
    assert find_status("version 1.2.3.4 and 10.5.1.1") is None
    assert find_smtp_code("host said: 552 5.2.2 full") == 552
    assert find_smtp_code("no code here 12345") is None


def test_taxonomy_is_closed() -> None:
    assert set(REASON_CATEGORY.values()) <= set(CATEGORIES)
    assert category_of("no-such-reason") == "unknown"
    assert len(CATEGORIES) == 12


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("bounces+anna.berg=example.com@raymail.test", "anna.berg@example.com"),
        ("news-mary-ann=mail.example.org@bounces.example", "mary-ann@mail.example.org"),
        ("news@raymail.test", None),
        ("bounces+token123@raymail.test", None),
    ],
)
def test_generic_verp_paths(address: str, expected: str | None) -> None:
    from raymail.returns.hidden import verp_recipient

    assert verp_recipient(address) == expected
