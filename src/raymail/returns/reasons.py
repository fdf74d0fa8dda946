"""The returns taxonomy: reason names, their categories, and how evidence maps to them.

Reason names follow the bounce reasons Sisimai documents (``userunknown``, ``mailboxfull``,
...), so results can be compared with other tools; categories are what raymail acts on
(suppress the address, suppress the domain, retry later, escalate a block, ...).

Evidence comes in three strengths, and :func:`decide` weighs them in this order:

1. explicit text in an SMTP reply or a bounce ("user unknown", "over quota", "spamhaus");
2. a specific enhanced status code (RFC 3463: 5.1.1, 5.2.2, 5.1.2, ...);
3. vague text ("rejected", "denied"), generic codes (5.0.0, 5.7.1) and the bare SMTP code.
"""

from __future__ import annotations

import re
from typing import Final

from raymail.returns.commands import CONN, DATA, HELO, MAIL, smtp_command
from raymail.returns.phrases import CONNECTION, TEMPORARY, clean_diagnostic, text_reason
from raymail.status import Category

__all__ = ["clean_diagnostic", "text_reason"]  # re-exported: callers read them from here

# Categories: the members of Category, also by their short names.
HARD_BOUNCE_ADDRESS: Final = Category.HARD_BOUNCE_ADDRESS
HARD_BOUNCE_DOMAIN: Final = Category.HARD_BOUNCE_DOMAIN
MAILBOX_FULL: Final = Category.MAILBOX_FULL
TRANSIENT: Final = Category.TRANSIENT
BLOCKED: Final = Category.BLOCKED
CONTENT_REJECTED: Final = Category.CONTENT_REJECTED
AUTO_REPLY: Final = Category.AUTO_REPLY
CHALLENGE_RESPONSE: Final = Category.CHALLENGE_RESPONSE
COMPLAINT: Final = Category.COMPLAINT
REMOVE_REQUEST: Final = Category.REMOVE_REQUEST
HUMAN_REPLY: Final = Category.HUMAN_REPLY
UNKNOWN: Final = Category.UNKNOWN

CATEGORIES: Final = tuple(Category)

# Reason -> category. Bounce reasons use Sisimai's documented names; the last few
# (challenge, unsubscribe, reply) name returns that are not bounces at all.
REASON_CATEGORY: Final[dict[str, Category]] = {
    # the address is dead
    "userunknown": HARD_BOUNCE_ADDRESS,
    "hasmoved": HARD_BOUNCE_ADDRESS,
    "suspend": HARD_BOUNCE_ADDRESS,
    # the domain is dead
    "hostunknown": HARD_BOUNCE_DOMAIN,
    "notaccept": HARD_BOUNCE_DOMAIN,
    "mailboxfull": MAILBOX_FULL,
    # try again later
    "expired": TRANSIENT,
    "toomanyconn": TRANSIENT,
    "ratelimited": TRANSIENT,
    "speeding": TRANSIENT,
    "networkerror": TRANSIENT,
    "systemerror": TRANSIENT,
    "systemfull": TRANSIENT,
    "mailererror": TRANSIENT,
    "onhold": TRANSIENT,
    "syntaxerror": TRANSIENT,
    "failedstarttls": TRANSIENT,
    # the receiver refuses us (IP, domain, authentication, reputation)
    "blocked": BLOCKED,
    "badreputation": BLOCKED,
    "requireptr": BLOCKED,
    "authfailure": BLOCKED,
    "securityerror": BLOCKED,
    "norelaying": BLOCKED,
    "rejected": BLOCKED,
    # the receiver refuses this message
    "filtered": CONTENT_REJECTED,
    "spamdetected": CONTENT_REJECTED,
    "virusdetected": CONTENT_REJECTED,
    "policyviolation": CONTENT_REJECTED,
    "contenterror": CONTENT_REJECTED,
    "notcompliantrfc": CONTENT_REJECTED,
    "mesgtoobig": CONTENT_REJECTED,
    "exceedlimit": CONTENT_REJECTED,
    # not bounces
    "vacation": AUTO_REPLY,
    "challenge": CHALLENGE_RESPONSE,
    "feedback": COMPLAINT,
    "unsubscribe": REMOVE_REQUEST,
    "reply": HUMAN_REPLY,
    "delivered": UNKNOWN,
    "undefined": UNKNOWN,
}

REASONS: Final = tuple(REASON_CATEGORY)


def category_of(reason: str) -> Category:
    """Category for a reason name; unknown names map to ``unknown`` rather than raising."""
    return REASON_CATEGORY.get(reason, UNKNOWN)


# ---------------------------------------------------------------------------------------------
# Enhanced status codes (RFC 3463 and its registry additions).

# Subject.detail -> reason, for codes whose meaning is specific enough to stand alone.
_SPECIFIC_STATUS: Final[dict[str, str]] = {
    "1.1": "userunknown",
    "1.2": "hostunknown",
    "1.3": "userunknown",
    "1.4": "userunknown",
    "1.6": "hasmoved",
    "1.7": "rejected",
    "1.8": "rejected",
    "1.10": "userunknown",  # RFC 7505 says null MX; Exchange uses it for "not found"
    "2.1": "filtered",  # Sisimai: 5.2.1 alone is filtered; "disabled" text makes it suspend
    "2.2": "mailboxfull",
    "2.3": "exceedlimit",
    "3.1": "systemfull",
    "3.4": "mesgtoobig",
    "4.4": "hostunknown",
    "4.7": "expired",
    "5.3": "syntaxerror",
    "6.0": "contenterror",
    "6.1": "contenterror",
    "6.2": "contenterror",
    "6.3": "contenterror",
    "6.4": "contenterror",
    "6.5": "contenterror",
    "6.6": "contenterror",
    "6.7": "contenterror",
    "6.8": "contenterror",
    "6.9": "contenterror",
    "6.10": "contenterror",
    "7.2": "securityerror",
    "7.3": "securityerror",
    "7.4": "securityerror",
    "7.5": "securityerror",
    "7.6": "securityerror",
    "7.7": "securityerror",
    "7.8": "securityerror",
    "7.9": "securityerror",
    "7.10": "failedstarttls",
    "7.11": "failedstarttls",
    "7.12": "securityerror",
    "7.13": "suspend",
    "7.14": "securityerror",
    "7.16": "mesgtoobig",
    "7.17": "hasmoved",
    "7.18": "hasmoved",
    "7.20": "authfailure",
    "7.21": "authfailure",
    "7.22": "authfailure",
    "7.23": "authfailure",
    "7.24": "authfailure",
    "7.25": "requireptr",
    "7.26": "authfailure",
    "7.27": "notaccept",
    "7.29": "authfailure",
    "7.30": "failedstarttls",
}

# Weak defaults: the code says only roughly what went wrong; text may well say better.
_GENERIC_STATUS: Final[dict[str, str]] = {
    "1.0": "userunknown",
    "1.5": "delivered",
    "1.9": "systemerror",
    "2.0": "filtered",
    "2.4": "systemerror",
    "3.0": "systemerror",
    "3.2": "notaccept",
    "3.3": "systemerror",
    "3.5": "systemerror",
    "4.0": "networkerror",
    "4.1": "networkerror",
    "4.2": "networkerror",
    "4.3": "networkerror",
    "4.5": "systemerror",
    "4.6": "networkerror",
    "5.0": "syntaxerror",
    "5.1": "syntaxerror",
    "5.2": "syntaxerror",
    "5.4": "syntaxerror",
    "5.5": "syntaxerror",
    "5.6": "syntaxerror",
    "7.0": "securityerror",
    "7.1": "blocked",
    "7.15": "securityerror",
    "7.19": "securityerror",
    "7.28": "spamdetected",
}

_STATUS_RE: Final = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.]*\d)")
_SMTP_CODE_RE: Final = re.compile(r"(?<![\d.\-])([245][0-5]\d)(?:[ \-]|$)")


def find_status(text: str, *, prose: bool = False) -> str | None:
    """First enhanced status code (``5.1.1``) in ``text``, or None.

    ``prose``: the text is free-form (a reply, a bounce), so only 4.x.x / 5.x.x codes count
    and not after a word ("Mailman 2.0.12", "release 5.1.3" are versions, not codes).
    """
    for match in _STATUS_RE.finditer(text):
        if prose:
            if match.group(1) == "2":
                continue
            before = text[max(0, match.start() - 2) : match.start()]
            if before[-1:] in {" ", "\t"} and before[:1].isalpha():
                continue
        return f"{match.group(1)}.{int(match.group(2))}.{int(match.group(3))}"
    return None


def find_smtp_code(text: str) -> int | None:
    """First SMTP reply code (``550``) in ``text``, or None."""
    match = _SMTP_CODE_RE.search(text)
    return int(match.group(1)) if match else None


def normalise_status(value: str | None) -> str | None:
    """``'5.1.1 (bad mailbox)'`` -> ``'5.1.1'``; anything without a code -> None."""
    return find_status(value) if value else None


def status_reason(status: str | None) -> tuple[str | None, bool]:
    """Reason implied by an enhanced code and whether the code alone is specific."""
    if not status:
        return None, False
    klass, _, rest = status.partition(".")
    if klass == "2":
        return "delivered", True
    specific = _SPECIFIC_STATUS.get(rest)
    if specific:
        return specific, True
    return _GENERIC_STATUS.get(rest), False


def smtp_code_reason(code: int | None) -> str | None:
    """Very weak guess from a bare reply code (RFC 5321 section 4.2.3)."""
    if code is None:
        return None
    return {
        421: "systemerror",
        450: "systemerror",
        451: "systemerror",
        452: "systemfull",
        521: "notaccept",
        552: "mailboxfull",
        553: "userunknown",
        556: "notaccept",
    }.get(code)


# Address-level answers that a temporary failure cannot prove: returned after retries they
# mean only that the queue lifetime ran out.
_UNPROVEN_WHEN_TEMPORARY: Final = frozenset({None, "userunknown", "filtered", "expired"})
# Answers to MAIL FROM that are about the sender's address (Sisimai: rejected) rather than
# a cause of their own (an RBL, authentication, size, TLS, rate).
_SENDER_SIDE: Final = frozenset(
    {None, "userunknown", "filtered", "suspend", "hostunknown", "rejected"}
)
# Answers to the greeting or HELO that only say "no" to our host (Sisimai: blocked).
_HOST_SIDE: Final = frozenset({None, "userunknown", "filtered", "rejected", "syntaxerror"})


def decide(
    *,
    status: str | None,
    smtp_code: int | None,
    text: str,
    action: str | None = None,
    command: str | None = None,
) -> tuple[str, str]:
    """Choose one reason from all evidence; returns ``(reason, why)``.

    Which signal wins, in order, and why:

    1. delivered / relayed, or a 2.x.x status: not a failure at all;
    2. a temporary failure (4.x.x, or a 4xx reply) that was returned anyway: the cause the
       text names if it names one (mailbox full, rate limit, a DNS failure), otherwise
       ``expired`` (Sisimai: the delivery time ran out); "user unknown" from a temporary
       reply proves nothing about the address, so it is ``expired`` too;
    3. the SMTP phase: "user unknown" answered to DATA is ``filtered``; an address-level
       refusal of MAIL FROM is ``rejected``; a bare refusal of the greeting or HELO is
       ``blocked`` (Sisimai's definitions of those three reasons are about the phase);
    4. strong text, then a specific enhanced code (5.2.3 beats the size words it comes
       with: exceedlimit), then weak text and generic codes, then the bare reply code.
    """
    action = (action or "").lower()
    if action in {"delivered", "relayed", "expanded"} or (status or "").startswith("2."):
        return "delivered", f"action {action or 'n/a'} / status {status}"
    if command is None:
        command = smtp_command(text)
    code_reason, code_specific = status_reason(status)
    said, strong = text_reason(text)
    temporary = (status or "").startswith("4.") or (
        status is None and smtp_code is not None and 400 <= smtp_code < 500
    )
    gave_up = action == "failed" and temporary
    # A delay warning has not run out of time yet: its cause is the network or the server.
    if said == CONNECTION:
        said = "expired" if gave_up else "networkerror"
    elif said == TEMPORARY:
        said, strong = ("expired", True) if gave_up else ("systemerror", False)
    if gave_up and said in _UNPROVEN_WHEN_TEMPORARY:
        if code_specific and code_reason not in _UNPROVEN_WHEN_TEMPORARY:
            return str(code_reason), f"temporary status {status}, returned"
        return "expired", f"temporary status {status} but action failed"
    if command == DATA and said == "userunknown":
        return "filtered", "user unknown answered to DATA"
    if command == MAIL and (said in _SENDER_SIDE or not strong):
        return "rejected", "refused at MAIL FROM"
    if command in {CONN, HELO} and (said in _HOST_SIDE or not strong):
        return "blocked", f"refused at {command}"
    if code_reason == "exceedlimit" and said in {None, "mesgtoobig"}:
        return "exceedlimit", f"status {status}"
    if strong and said is not None:
        return said, "text"
    if code_specific and code_reason is not None:
        return code_reason, f"status {status}"
    if said is not None and said != "rejected":
        return said, "weak text"
    if code_reason is not None and code_reason != "delivered":
        return code_reason, f"generic status {status}"
    if said is not None:
        return said, "weak text"
    if action == "delayed":
        return "expired", "action delayed"
    guess = smtp_code_reason(smtp_code)
    if guess is not None:
        return guess, f"smtp code {smtp_code}"
    return "undefined", "no evidence"


def classify_reply(
    code: int | None, status: str | None, text: str, *, command: str | None = None
) -> tuple[str, str]:
    """(category, reason) for one SMTP reply, as given at RCPT or DATA time.

    For the delivery side: a reply is not a returned message, so a 4xx is a deferral
    (category transient) and only a 5xx can condemn an address or a domain.
    """
    status = normalise_status(status) or find_status(text, prose=True)
    if code is None:
        code = find_smtp_code(text)
    temporary = (status or "").startswith("4.") or (code is not None and 400 <= code < 500)
    reason, _ = decide(
        status=status,
        smtp_code=code,
        text=text,
        action="delayed" if temporary else "failed",
        command=command,
    )
    category = category_of(reason)
    if temporary and category in {HARD_BOUNCE_ADDRESS, HARD_BOUNCE_DOMAIN}:
        category = TRANSIENT
    return category, reason
