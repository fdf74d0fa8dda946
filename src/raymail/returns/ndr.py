"""Is a message a non-delivery report, which MTA family wrote it, and is it only a delay?

Decided from the sender, the subject and the phrases each MTA family uses, scored so that a
person replying to a thread about delivery is not taken for a bounce. The phrase tables are
data, written from how these programs word their reports.
"""

from __future__ import annotations

import re
from typing import Final

from raymail.returns.parse import ParsedMessage

_FROM_RE: Final = re.compile(
    r"mailer[-_ ]?daemon|mail[-_ ]?daemon|postmaster|mail ?delivery|mail ?administrator"
    r"|mail ?system|mailsystem|delivery[-_ ]?(?:status|subsystem|system|notification|service)"
    r"|smtp ?(?:gateway|service)|microsoft ?outlook|internet mail|system administrator"
    r"|\bmta\b|mailer@|mail router|mail ?server|mailguard|mail ?gateway|returned mail"
    r"|smtp[ _]?(?:mail[ _])?service|mdaemon|\bndr\b",
    re.I,
)
_SUBJECT_RE: Final = re.compile(
    r"undeliver|undelivered|non[- ]?deliver|not (?:be )?delivered|delivery (?:status|failure|fail"
    r"|problem|report|notification|has failed|delayed|error)|delivery to .{0,60}failed"
    r"|failure notice|returned mail|mail (?:delivery )?(?:failed|failure|error)|mail system error"
    r"|could not (?:be )?(?:send|sent|deliver)|couldn't be delivered|unable to deliver"
    r"|warning: (?:could not|message|delayed)|delayed mail|message (?:not delivered|delayed"
    r"|undeliverable|status)|bounced? |\bbounce\b|rejected|nicht zustellbar|unzustellbar"
    r"|non remis|non distribu|non recapitabil|mancata consegna|no se (?:puede|pudo) entregar"
    r"|no entregado|n[ãa]o (?:foi )?entregue|onbestelbaar|niet (?:bezorgd|afgeleverd)"
    r"|olevererbar|kan ikke leveres|ei voitu toimittaa|nedoru[čc]iteln|niedostarczal"
    r"|недоставлен|не доставлено|配信不能|配送不能|エラー|未送達|送信できませんでした|退信"
    r"|系统退信|被退回|returned to sender|mail could not|delivery notification|failed mail"
    r"|mail delivery|delivery warning|error during delivery|processing error",
    re.I,
)
_BODY_RE: Final = re.compile(
    r"this is the qmail-send program|this is the mail system at host"
    r"|i'm sorry to have to inform you that your message could not"
    r"|created automatically by mail delivery software"
    r"|-{3,} ?transcript of session follows|the original message was received at"
    r"|following addresses had (?:permanent fatal|transient non-fatal) errors"
    r"|delivery has failed to these recipients|did not reach (?:some or all of )?the intended"
    r"|following recipients? (?:could not|cannot|can't) be reached|was not delivered to"
    r"|delivery to the following recipients? (?:failed|has been delayed)"
    r"|message (?:could not|couldn't|cannot|was not|wasn't|has not been) (?:be )?delivered"
    r"|(?:could|can)(?:n't|not) (?:be )?deliver(?:ed)? (?:your|the|this) (?:message|mail)"
    r"|unable to deliver|delivery (?:has )?failed|permanent(?:ly)? (?:error|fatal|failure)"
    r"|failed permanently|undeliverable|address not found|wasn't delivered to"
    r"|unable to (?:be )?delivered|could not be delivered|non[- ]?delivery"
    r"|this is a delivery status notification|delivery status notification"
    r"|returned to (?:the )?sender|mail delivery (?:failed|system)"
    r"|recipient address rejected|user unknown|no such user|mailbox (?:is )?full"
    r"|has not yet been delivered|delivery attempts will continue|will keep trying"
    r"|diagnostic information for administrators|remote (?:host|server) (?:said|returned)"
    r"|nicht zugestellt|konnte nicht zugestellt|unzustellbar|n'a pas pu [êe]tre (?:remis|distribu)"
    r"|no (?:se )?(?:ha )?(?:podido|pudo) (?:ser )?entregar|non [èe] stato possibile"
    r"|n[ãa]o (?:foi )?poss[ií]vel entregar|kon niet (?:worden )?(?:bezorgd|afgeleverd)"
    r"|failed recipients|error during delivery|mailbox unavailable|has been returned"
    r"|\b[45]\d\d[ -][45]\.\d{1,3}\.\d{1,3}\b"
    r"|配信できません|送信できません|届きませんでした|宛先不明",
)
_REPLY_RE: Final = re.compile(r"\s*(?:re|aw|sv|antw|r|res|wg|fw|fwd)\s*:", re.I)
_TEMPORARY_SUBJECT_RE: Final = re.compile(
    r"\(delay\)|\bdelay(?:ed)?\b|still (?:being )?(?:retried|undelivered|trying)"
    r"|warning: (?:could not|message .{0,40}(?:delayed|undelivered)|delayed)|verz[öo]gert|retard",
    re.I,
)
_TEMPORARY_RE: Final = re.compile(
    r"\(delay\)|delay(?:ed)? (?:mail|delivery|message|notification)|warning:"
    r"|still (?:being )?(?:retried|trying|tried|attempting|in the queue|undelivered)"
    r"|will (?:continue to |keep )(?:retry|try|attempt)|delivery attempts will continue"
    r"|has not (?:yet )?been delivered|not yet been delivered|this is a warning message"
    r"|do not need to resend|transient non-fatal|will be retried|will retry"
    r"|temporar(?:y|ily) (?:failure|deferred|error|problem)|has been delayed",
)
_PERMANENT_RE: Final = re.compile(
    r"permanent(?:ly)?\b|fatal error|(?:i've|have) given up|gave up|failed permanently"
    r"|delivery (?:has )?failed|could not be delivered|undeliverable|was not delivered"
    r"|wasn't delivered|couldn't be delivered",
)
_FAMILIES: Final[tuple[tuple[str, re.Pattern[str]], ...]] = (
    ("qmail", re.compile(r"qmail-send program|qmail")),
    ("postfix", re.compile(r"this is the mail system at host|postfix")),
    ("exim", re.compile(r"mail delivery software|\bexim\b")),
    ("sendmail", re.compile(r"transcript of session follows|original message was received at")),
    ("courier", re.compile(r"courier mail server")),
    (
        "exchange",
        re.compile(
            r"diagnostic information for administrators|microsoft exchange"
            r"|delivery has failed to these recipients|did not reach"
            r"|could not be reached|office ?365|outlook"
        ),
    ),
    ("gmail", re.compile(r"google tried to deliver|gmail|googlemail|address not found")),
    ("yahoo", re.compile(r"yahoo")),
    ("domino", re.compile(r"domino|lotus|was not delivered to:")),
    ("groupwise", re.compile(r"groupwise|novell")),
    ("mdaemon", re.compile(r"mdaemon")),
)


def is_bounce(parsed: ParsedMessage) -> bool:
    """Does this look like a non-delivery report (not a reply, not an auto-reply)?"""
    if parsed.header("X-Failed-Recipients") or parsed.report_type == "delivery-status":
        return True
    sender = parsed.sender
    subject = parsed.subject
    if re.search(r"mailer[-_]?daemon|mail[-_]daemon", sender, re.I):
        return True
    head = parsed.lower_head[:6000]
    from_hit = bool(_FROM_RE.search(sender))
    subject_hit = bool(_SUBJECT_RE.search(subject))
    body_hit = bool(_BODY_RE.search(head))
    return_path = parsed.header("Return-Path").strip()
    null_return = return_path == "<>" or "mailer-daemon" in return_path.lower()
    auto = parsed.header("Auto-Submitted").lower()
    if "failure" in auto:  # sendmail: "auto-generated (failure)"
        return True
    score = 2 * from_hit + 2 * subject_hit + 2 * body_hit + null_return
    score += bool(auto) and (from_hit or subject_hit)
    if _REPLY_RE.match(subject) and not subject_hit and not from_hit:
        score -= 2  # a person answering a thread that mentions delivery
    return score >= 4


def family_of(parsed: ParsedMessage) -> str:
    """Which MTA family wrote this report (for notes; extraction does not depend on it)."""
    head = "\n".join(
        (parsed.lower_head[:4000], parsed.sender.lower(), parsed.header("X-Mailer").lower())
    )
    for name, pattern in _FAMILIES:
        if pattern.search(head):
            return name
    return "generic"


def is_temporary(parsed: ParsedMessage) -> bool:
    """A delay warning rather than a final failure."""
    subject = parsed.subject
    if _TEMPORARY_SUBJECT_RE.search(subject):
        return True
    head = parsed.lower_head[:3000]
    return bool(_TEMPORARY_RE.search(head)) and not _PERMANENT_RE.search(head)
