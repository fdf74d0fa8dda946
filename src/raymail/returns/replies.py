"""Replies written by people: removal requests ("unsubscribe", "STOP") and everything else.

A removal request must be honoured like an unsubscribe, so it is looked for in the subject
and in the first few lines the person wrote (quoted text and signatures are not theirs to
judge by). Short commands such as "stop" or "remove" count only when they are the whole
line, so "Re: don't stop the newsletter" is a human reply, not a removal.
"""

from __future__ import annotations

import re
from typing import Final

from raymail.returns.parse import ParsedMessage

# Phrases that ask for removal anywhere in a line.
_REMOVE_PHRASE_RE: Final = re.compile(
    r"\bunsubscribe\b|\bun-subscribe\b|\bremove me\b|\bremove my (?:e-?mail|address|name)"
    r"|\bdelete me\b|\bdelete my (?:e-?mail|address|data)|\btake me off\b|\bopt[- ]?out\b"
    r"|(?<!n't )(?<!not )(?<!never )"
    r"\bstop (?:sending|emailing|e-mailing|mailing|spamming|contacting)"
    r"|\bno more (?:e-?mails|mails|messages|newsletters?)\b|\bdo not (?:e-?mail|contact) me"
    r"|don't (?:e-?mail|contact|send) me|\bremove from (?:your |the )?(?:list|mailing)"
    r"|abmelden|austragen|abbestellen|bitte (?:l[öo]schen|entfernen)"
    r"|keine (?:weiteren )?(?:e-?mails|newsletter)"
    r"|d[ée]sabonner|d[ée]sinscri|d[ée]sabonnement|retirez[- ]moi|supprimez[- ]moi"
    r"|darme de baja|darse de baja|dar de baja|cancelar (?:la )?suscripci[oó]n|eliminarme"
    r"|no (?:me )?(?:env[ií]en|manden) m[aá]s|cancellami|disiscriv|annulla (?:l')?iscrizione"
    r"|rimuovimi|non inviatemi|descadastr|cancelar (?:a )?inscri[çc][ãa]o|remover meu"
    r"|n[ãa]o (?:me )?envie|afmelden|uitschrijven|verwijder mij|avregistrer|avsluta prenumeration"
    r"|配信停止|購読解除|配信解除|登録解除|退订|取消订阅",
    re.I,
)
# Single words that are a removal request only when they are all the line says.
_REMOVE_WORD_RE: Final = re.compile(
    r"^\s*(?:stop|remove|unsubscribe|delete|cancel|quit|end|baja|alto|arr[êe]t|stopp|afmelden"
    r"|abmelden|annuler|cancelar|remover|rimuovi|basta)\s*[.!]*\s*$",
    re.I,
)
_REPLY_PREFIX_RE: Final = re.compile(
    "^\\s*(?:re|aw|sv|vs|antw|ant|r|res|rif|odp|atb|vá|wg|tr|fw|fwd|回复|答复)\\s*(?:\\[\\d+\\])?\\s*"
    "[:\\uff1a]",
    re.I,
)
_QUOTE_START_RE: Final = re.compile(
    r"^\s*>|^-{2,}\s*(?:original|urspr[üu]ngliche|mensaje original|message d'origine)"
    r"|^on .{0,200} wrote:\s*$|^am .{0,200} schrieb|^le .{0,200} a [ée]crit"
    r"|^el .{0,200} escribi[óo]|^il .{0,200} ha scritto|^em .{0,200} escreveu|^op .{0,200} schreef"
    r"|^from:\s|^von:\s|^de\s?:\s"
    r"|^-- ?$|^_{5,}",
    re.I,
)


def own_lines(parsed: ParsedMessage, limit: int = 8) -> list[str]:
    """The first non-empty lines the replier wrote, before any quote or signature."""
    out: list[str] = []
    for line in parsed.text[:8000].splitlines():
        if _QUOTE_START_RE.match(line):
            break
        if line.strip():
            out.append(line.strip())
            if len(out) >= limit:
                break
    return out


def detect_remove_request(parsed: ParsedMessage) -> str | None:
    """Why this reply asks to be removed from the list, or None."""
    subject = _REPLY_PREFIX_RE.sub("", parsed.subject, count=3).strip()
    while _REPLY_PREFIX_RE.match(subject):
        subject = _REPLY_PREFIX_RE.sub("", subject, count=1).strip()
    if _REMOVE_WORD_RE.match(subject) or _REMOVE_PHRASE_RE.search(subject):
        return f"subject: {subject[:80]}"
    lines = own_lines(parsed, limit=5)
    for line in lines:
        if _REMOVE_WORD_RE.match(line):
            return f"line: {line[:80]}"
    for line in lines[:3]:
        if len(line) <= 300 and _REMOVE_PHRASE_RE.search(line):
            return f"line: {line[:80]}"
    return None


def is_reply(parsed: ParsedMessage) -> bool:
    """Does this read like a person answering (a Re: subject or threading headers)?"""
    if _REPLY_PREFIX_RE.match(parsed.subject):
        return True
    return bool(parsed.header("In-Reply-To") or parsed.header("References"))
