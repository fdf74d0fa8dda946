"""Bounces written as free text: qmail, Exim, Sendmail, Postfix, Exchange, Domino, webmail.

Many MTAs never send an RFC 3464 report, or send one with the useful part only in prose.
Whether a message is a non-delivery report at all is decided in ``ndr.py``; this module
finds the failed recipients and the text that explains each failure, from the line shapes
those MTAs use:

* ``<user@example.com>:`` then the reason (qmail, Postfix, Courier, Yahoo);
* an indented address on its own line, reason below (Exim, Gmail, Domino, Exchange);
* ``user@example.com... User unknown`` and ``RCPT To:<user@example.com>`` (Sendmail);
* sentences such as "Your message to user@example.com couldn't be delivered" (Office 365).

The phrase tables are written from how these programs word their reports; they are data,
kept short and ordered from narrow to broad.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from raymail.returns.dsn import ADDRESS_RE
from raymail.returns.ndr import family_of, is_bounce, is_temporary
from raymail.returns.parse import ParsedMessage

_JUNK_LOCAL: Final = frozenset(
    {
        "mailer-daemon",
        "mailer_daemon",
        "mailerdaemon",
        "mail-daemon",
        "postmaster",
        "daemon",
        "root",
        "abuse",
        "nobody",
        "noreply",
        "no-reply",
        "do-not-reply",
        "donotreply",
        "bounce",
        "bounces",
    }
)
_HEADERISH_RE: Final = re.compile(
    r"^\s*(?:>\s*)*(?:to|cc|bcc|from|sender|reply-to|return-path|message-id|references|in-reply-to|date"
    r"|subject|received|dkim-signature|x-[\w-]+|list-[\w-]+|errors-to|envelope-from|smtp\.mailfrom"
    r"|authentication-results|arc-[\w-]+)\s*:",
    re.I,
)

_ADDR: Final = ADDRESS_RE.pattern
# Strong anchors: the shape of the line says "this address failed".
_ANGLE_LINE_RE: Final = re.compile(
    rf"^[ \t]*<({_ADDR})>(?:[ \t]*\((?:expanded|generated) from[^)]*\))?[ \t]*:?[ \t]*(.*)$",
    re.I,
)
_LEADING_ADDR_RE: Final = re.compile(
    rf"^[ \t]*[<\"']?({_ADDR})[>\"']?[,;]?[ \t]+(\S.*(?:\b[45]\d\d\b|unknown|invalid|not found|"
    r"does not exist|doesn't exist|no such|rejected|refused|denied|full|quota|disabled|failed).*)$",
    re.I,
)
_SENDMAIL_RE: Final = re.compile(rf"<?({_ADDR})>?\.\.\.[ \t]*(.*)$")
_RCPT_RE: Final = re.compile(rf"RCPT[ \t]+TO[ \t]*:[ \t]*<?({_ADDR})>?[ \t:]*(.*)$", re.I)
_COLON_LINE_RE: Final = re.compile(
    rf"^[ \t]*[\"'<]?({_ADDR})[\"'>]?[ \t]*(?::|[ \t]-)[ \t]+(\S.*)$"
)
_EXPANDED_RE: Final = re.compile(rf"\((?:expanded|generated) from:?[ \t]*<?({_ADDR})>?", re.I)
_SENTENCE_RES: Final = (
    re.compile(
        rf"(?:message|mail|e-?mail)(?: sent)?,? (?:addressed )?(?:to|for) "
        rf"[\"'<]?({_ADDR})[\"'>]?[ ,]*"
        r"(?:could|couldn't|can't|cannot|was|wasn't|has|hasn't|failed|is|did|didn't|will)(.*)$",
        re.I,
    ),
    re.compile(rf"delivered to [\"'<]?({_ADDR})[\"'>]? because(.*)$", re.I),
    re.compile(
        rf"(?:not|n't|cannot|can't) (?:be )?(?:delivered|sent|forwarded) to:?[ \t]*"
        rf"[\"'<]?({_ADDR})[\"'>]?(.*)$",
        re.I,
    ),
    re.compile(
        rf"[\"'<]?({_ADDR})[\"'>]? (?:wasn't|was not|couldn't be|could not be) found(.*)$", re.I
    ),
    re.compile(
        rf"(?:failed|delivery failure|undeliverable|not delivered|rejected|unknown|deliver(?:y)? "
        rf"to|recipient|user|address(?:ee)?|mailbox|destinatario|empf[aä]nger|destinataire"
        rf"|destinat[aá]rio|получатель|адресат|收件人|宛先|あて先|受信者|odbiorca|ontvanger)"
        rf"[ \t]*(?:address)?[ \t]*[:=\uff1a][ \t]*[\"'<(]?({_ADDR})[\"'>)]?(.*)$",
        re.I,
    ),
    re.compile(
        rf"(?:user|recipient|address|mailbox|account) [\"'<(]?({_ADDR})[\"'>)]? "
        r"(?:does not|doesn't|is not|isn't|not|was|has|is|unknown)(.*)$",
        re.I,
    ),
    re.compile(rf"(?:SMTP|RFC822|rfc822)[=;:][ \t]*<?({_ADDR})>?(.*)$"),
)
_FAILURE_WORD_RE: Final = re.compile(
    r"fail|\bnot\b|n't\b|unknown|invalid|reject|undeliver|unable|error|no such|denied|refused"
    r"|exist|bounce|problem|unavailable|full|quota",
    re.I,
)
_TLD_RE: Final = re.compile(r"\.[A-Za-z]{2,24}$|^\[.*\]$")


@dataclass(frozen=True, slots=True)
class TextFailure:
    """One recipient named by a text bounce, with the text that explains it."""

    recipient: str
    diagnostic: str


@dataclass(frozen=True, slots=True)
class TextBounce:
    """A non-delivery report found in prose."""

    family: str
    failures: tuple[TextFailure, ...]
    temporary: bool
    summary: str  # the reporter's text, for reasons when a recipient has no own text


def _good(address: str, exclude: set[str]) -> bool:
    """Could this be a failed recipient (not ours, not a daemon, has a TLD)?"""
    low = address.lower()
    local, _, domain = low.rpartition("@")
    if not local or not domain or low in exclude:
        return False
    if local in _JUNK_LOCAL or local.startswith(("mailer-daemon", "postmaster")):
        return False
    return bool(_TLD_RE.search(domain))


def _clean(address: str) -> str:
    """Bare lower-cased address without surrounding punctuation."""
    return address.strip(".,;:'\"<>()[]").lower()


def _dominant(line: str, match: re.Match[str], count: int = 1) -> bool:
    """Is the address the whole point of the line (alone, in brackets, or name + address)?"""
    if count > 1:  # '"user@example.com" <user@example.com>'
        line = ADDRESS_RE.sub("", line, count=count - 1)
        match = ADDRESS_RE.search(line) or match
    return _alone(line, match)


def _alone(line: str, match: re.Match[str]) -> bool:
    """Nothing but brackets, quotes, a date or a short name around the address."""
    rest = (line[: match.start()] + " " + line[match.end() :]).strip()
    rest = re.sub(r"(?i)mailto:|smtp[=:]|rfc822;|\bto:\s*$", "", rest)
    stripped = rest.strip(" \t<>()[]\"',;:.-*")
    if not stripped:
        return True
    if re.match(r"(?i)^on \w{0,9},? ?\d|^\d{1,4}[/.-]\d", stripped.lstrip("'\" >)")):
        return True  # Exchange: 'user@example.com' on 1/2/2003 10:00 AM
    before = line[: match.start()].strip()
    after = line[match.end() :].strip(" >)]\"'")
    return bool(
        before
        and not after
        and len(before) < 60
        and before[-1:] in {"<", "(", "["}
        and not re.search(r"\d{3}", before)
    )


def _continuation(lines: list[str], start: int, stop: set[int]) -> str:
    """Indented lines that continue line ``start`` (a wrapped reply, as Postfix writes it)."""
    out: list[str] = []
    for index in range(start + 1, min(len(lines), start + 8)):
        line = lines[index]
        if index in stop or not line.strip() or line[:1] not in {" ", "\t"}:
            break
        out.append(line.strip())
    return " ".join(out)


def _paragraph_after(lines: list[str], start: int, stop: set[int]) -> str:
    """Up to two paragraphs after line ``start``, ending at the next anchor line."""
    out: list[str] = []
    paragraphs = 0
    for index in range(start + 1, min(len(lines), start + 25)):
        if index in stop:
            break
        line = lines[index]
        if not line.strip():
            if out:
                paragraphs += 1
                if paragraphs >= 2:
                    break
            continue
        out.append(line.strip())
        if sum(len(x) for x in out) > 800:
            break
    return " ".join(out)


def extract_failures(
    text: str, exclude: set[str], soft_exclude: set[str], domain: str = ""
) -> list[TextFailure]:
    """Failed recipients and their explanations, strongest line shapes first.

    ``exclude`` never qualifies (our own addresses, the reporter's); ``soft_exclude`` (the
    returned message's sender) qualifies only in a line shape that names a failure.
    ``domain`` completes bare user names listed under a "following recipients" heading.
    """
    lines = text.replace("\r\n", "\n").split("\n")[:4000]
    weaker = exclude | soft_exclude
    strong: dict[str, tuple[int, str]] = {}
    medium: dict[str, tuple[int, str]] = {}
    weak: dict[str, tuple[int, bool]] = {}
    for index, line in enumerate(lines):
        if "@" not in line or len(line) > 2000:
            continue
        headerish = _HEADERISH_RE.match(line)
        if headerish and not re.match(r"\s*(?:>\s*)*(?:to|cc)\s*:", line, re.I):
            continue
        if not headerish and _strong_anchor(line, index, exclude, strong):
            continue
        if not headerish and _medium_anchor(line, index, exclude, medium):
            continue
        telling = bool(_FAILURE_WORD_RE.search(line))
        for m in ADDRESS_RE.finditer(line):
            addr = _clean(m.group(0))
            if _good(addr, weaker) and not weak.get(addr, (0, False))[1]:
                weak[addr] = (index, telling)
    chosen: dict[str, tuple[int, str]] = strong or medium
    if not chosen and domain:
        chosen = _bare_locals(lines, domain)
    if not chosen:
        # Bare mentions: those in a line that speaks of failure, else one or two at most.
        told = {a: (i, "") for a, (i, t) in weak.items() if t}
        chosen = told or ({a: (i, "") for a, (i, _) in weak.items()} if len(weak) <= 2 else {})
    anchors = {index for index, _ in chosen.values()}
    failures = []
    # "(expanded from <alias>)": the alias is the address the sender used.
    for index, rest in list(chosen.values()):
        for line in lines[index : index + 3]:
            alias = _EXPANDED_RE.search(line)
            if alias and _good(_clean(alias.group(1)), exclude):
                chosen.setdefault(_clean(alias.group(1)), (index, rest))
                break
    for addr, (index, rest) in chosen.items():
        diagnostic = rest
        follow = _paragraph_after(lines, index, anchors)
        if follow and (len(diagnostic) < 20 or diagnostic.endswith(":")):
            diagnostic = f"{diagnostic} {follow}".strip()
        else:
            diagnostic = f"{diagnostic} {_continuation(lines, index, anchors)}".strip()
        failures.append(TextFailure(addr, " ".join(diagnostic.split())[:1000]))
    return failures


_LIST_HEADING_RE: Final = re.compile(
    r"(?:following|these) (?:recipients?|addresses|address|users?)|not delivered to the following"
    r"|delivered to the following",
    re.I,
)
_BARE_LOCAL_RE: Final = re.compile(
    r"^[ \t]+([A-Za-z0-9][A-Za-z0-9._+\-]{1,63})(?:[ \t]{2,}(\S.*))?$"
)


def _bare_locals(lines: list[str], domain: str) -> dict[str, tuple[int, str]]:
    """User names without a domain under a failure heading (AOL, old directory gateways)."""
    found: dict[str, tuple[int, str]] = {}
    for index, line in enumerate(lines[:400]):
        if not _LIST_HEADING_RE.search(line):
            continue
        for offset in range(index + 1, min(len(lines), index + 6)):
            m = _BARE_LOCAL_RE.match(lines[offset])
            if m and not _FAILURE_WORD_RE.fullmatch(m.group(1)):
                found.setdefault(f"{m.group(1).lower()}@{domain}", (offset, m.group(2) or ""))
            elif found and lines[offset].strip():
                break
        if found:
            break
    return found


def _strong_anchor(
    line: str, index: int, exclude: set[str], found: dict[str, tuple[int, str]]
) -> bool:
    """Record the address if the line has a failure-report shape."""
    for pattern in (_ANGLE_LINE_RE, _RCPT_RE, _SENDMAIL_RE, _COLON_LINE_RE, _LEADING_ADDR_RE):
        anchored = pattern is _ANGLE_LINE_RE or pattern is _LEADING_ADDR_RE
        m = pattern.match(line) if anchored else pattern.search(line)
        if not m:
            continue
        addr = _clean(m.group(1))
        if not _good(addr, exclude):
            continue
        rest = (m.group(2) or "").strip()
        if addr not in found:
            found[addr] = (index, rest)
        elif rest and not found[addr][1]:
            found[addr] = (found[addr][0], rest)
        return True
    return False


def _medium_anchor(
    line: str, index: int, exclude: set[str], found: dict[str, tuple[int, str]]
) -> bool:
    """Record the address if a sentence or the line's layout names it."""
    for pattern in _SENTENCE_RES:
        m = pattern.search(line)
        if m and _good(_clean(m.group(1)), exclude):
            rest = m.group(2) if (m.lastindex or 0) >= 2 else line[m.end() :]
            found.setdefault(_clean(m.group(1)), (index, (rest or "").strip()))
            return True
    matches = list(ADDRESS_RE.finditer(line))
    distinct = {_clean(m.group(0)) for m in matches}
    if len(distinct) == 1:
        addr = distinct.pop()
        if _good(addr, exclude) and _dominant(line, matches[-1], len(matches)):
            found.setdefault(addr, (index, ""))
            return True
    return False


def _reporter_domain(sender: str) -> str:
    """Registered domain of the reporting system (mr2.its.yale.edu -> yale.edu)."""
    m = ADDRESS_RE.search(sender)
    if not m:
        return ""
    labels = m.group(0).rpartition("@")[2].lower().split(".")
    keep = 3 if len(labels) >= 3 and len(labels[-1]) == 2 and len(labels[-2]) <= 3 else 2
    return ".".join(labels[-keep:])


def scan_text_bounce(
    parsed: ParsedMessage, exclude: set[str], soft_exclude: set[str] | None = None
) -> TextBounce | None:
    """The prose bounce in ``parsed`` with its failures, or None if it is not one."""
    if not is_bounce(parsed):
        return None
    text = parsed.text
    soft_exclude = soft_exclude or set()
    failures: list[TextFailure] = []
    header_failed = [
        _clean(m.group(0))
        for m in ADDRESS_RE.finditer(" ".join(parsed.headers("X-Failed-Recipients")))
    ]
    found = extract_failures(text, exclude, soft_exclude, _reporter_domain(parsed.sender))
    by_addr = {f.recipient: f for f in found}
    for addr in header_failed:
        failures.append(by_addr.pop(addr, TextFailure(addr, "")))
    if not header_failed:
        failures.extend(found)
    return TextBounce(
        family=family_of(parsed),
        failures=tuple(failures),
        temporary=is_temporary(parsed),
        summary=text[:3000],
    )
