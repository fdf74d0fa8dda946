"""Classify one returned message: what happened, to whom, and what raymail should do.

The checks run from the most to the least machine-readable evidence: a complaint report
(ARF), a delivery status notification (RFC 3464), a prose bounce, a challenge-response
request, an RFC 3834 auto-reply, a removal request, a human reply. Recipients are taken
from the DSN first, then from the VERP token in our return path (decoded by an injected
codec), then from the text, then from the returned copy's To header. The verdict types are
in ``verdict.py``, the header reading (VERP, our own addresses) in ``addressing.py``, and
many files at once in ``batch.py``.

:func:`classify_message` never raises: a message it cannot read is ``unknown`` with the
reason it gave up in ``why``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from raymail.returns import reasons
from raymail.returns.addressing import VerpDecoder, addresses, exclusions, find_verp
from raymail.returns.arf import detect_feedback
from raymail.returns.autoreply import detect_autoreply, detect_challenge
from raymail.returns.commands import MAIL, smtp_command
from raymail.returns.dsn import RecipientReport, inline_fields, reports_from_fields
from raymail.returns.freetext import TextBounce, TextFailure, scan_text_bounce
from raymail.returns.hidden import hidden_recipients
from raymail.returns.ndr import is_bounce
from raymail.returns.parse import ParsedMessage, parse_message
from raymail.returns.replies import detect_remove_request, is_reply
from raymail.returns.verdict import Classification, RecipientVerdict

# The verdict types are read from here too (events, process, tests).
__all__ = ["Classification", "RecipientVerdict", "VerpDecoder", "classify_message"]

_ACTIONS: Final = {
    "failure": "failed",
    "fail": "failed",
    "failed": "failed",
    "delayed": "delayed",
    "delay": "delayed",
    "delivered": "delivered",
    "relayed": "relayed",
    "expanded": "expanded",
}


def _category(reason: str, action: str | None, status: str | None) -> str:
    """Category for a bounce reason; a temporary failure never condemns an address."""
    category = reasons.category_of(reason)
    temporary = action == "delayed" or (status or "").startswith("4.")
    if temporary and category in {reasons.HARD_BOUNCE_ADDRESS, reasons.HARD_BOUNCE_DOMAIN}:
        return reasons.TRANSIENT
    return category


@dataclass(slots=True)
class _Context:
    """What every detector's result needs: the message, exclusions, VERP, notes."""

    parsed: ParsedMessage
    exclude: set[str]
    soft_exclude: set[str]
    verp_recipient: str | None
    campaign: str | None
    notes: list[str]
    path: str | None

    @property
    def senders(self) -> set[str]:
        """Addresses of ours a reply may quote: the bounce's To, the original's sender."""
        return (self.exclude | self.soft_exclude) - {""}


def _command(diagnostic: str, fallback_text: str, single: bool, senders: set[str]) -> str | None:
    """The SMTP command the failure answered, from the recipient's own text first.

    A reply that names our own sender address ("<news@shop.example>... Access denied")
    refused the envelope sender, as an answer to MAIL FROM does.
    """
    command = smtp_command(diagnostic)
    if command is None and single:
        command = smtp_command(fallback_text[:3000])
    if command is None and senders and "@" in diagnostic:
        # Only as a reply quotes an address it refuses: "<addr>... why" or "<addr>: why".
        low = diagnostic.lower()
        if any(f"<{sender}>..." in low or f"<{sender}>:" in low for sender in senders):
            command = MAIL
    return command


def _verdict(
    recipient: str,
    status: str | None,
    smtp_code: int | None,
    diagnostic: str,
    action: str | None,
    fallback_text: str,
    single: bool = False,
    senders: set[str] | None = None,
) -> RecipientVerdict:
    """Reason for one recipient from its own text, else the report's general text.

    ``single``: the report names one recipient, so codes anywhere in it are this one's.
    ``senders``: our addresses (the returned message's sender), for replies that name it.
    """
    command = _command(diagnostic, fallback_text, single, (senders or set()) - {recipient})
    if status is None:
        status = reasons.find_status(diagnostic, prose=True)
        if status is None and single:
            status = reasons.find_status(fallback_text[:3000], prose=True)
    if smtp_code is None:
        smtp_code = reasons.find_smtp_code(diagnostic)
        if smtp_code is None and single and status is not None:
            smtp_code = reasons.find_smtp_code(fallback_text[:3000])
    reason, _ = reasons.decide(
        status=status, smtp_code=smtp_code, text=diagnostic, action=action, command=command
    )
    if reason == "undefined" or (reason in {"syntaxerror", "systemerror"} and not diagnostic):
        if status is None:
            status = reasons.find_status(fallback_text[:3000], prose=True)
        if smtp_code is None:
            smtp_code = reasons.find_smtp_code(fallback_text[:3000])
        reason, _ = reasons.decide(
            status=status,
            smtp_code=smtp_code,
            text=f"{diagnostic}\n{fallback_text}",
            action=action,
            command=command,
        )
    return RecipientVerdict(recipient, reason, status, smtp_code, diagnostic, action)


def _result(
    ctx: _Context,
    *,
    reason: str,
    category: str | None = None,
    recipients: list[str] | None = None,
    why: str,
    source: str,
    verdict: RecipientVerdict | None = None,
    per_recipient: list[RecipientVerdict] | None = None,
    remote_mta: str | None = None,
    feedback_type: str | None = None,
) -> Classification:
    """Assemble a Classification; category follows the reason unless given."""
    return Classification(
        category=category or reasons.category_of(reason),
        reason=reason,
        recipients=list(dict.fromkeys(recipients or [])),
        status=verdict.status if verdict else None,
        smtp_code=verdict.smtp_code if verdict else None,
        diagnostic=verdict.diagnostic if verdict else "",
        action=verdict.action if verdict else None,
        remote_mta=remote_mta or None,
        campaign=ctx.campaign,
        why=why,
        source=source,
        feedback_type=feedback_type,
        per_recipient=per_recipient or [],
        notes=ctx.notes + ctx.parsed.notes,
        path=ctx.path,
    )


def _from_dsn(
    ctx: _Context, reports: list[RecipientReport], text_bounce: TextBounce | None
) -> Classification:
    """Verdict from DSN blocks; prose per recipient fills empty diagnostics."""
    parsed = ctx.parsed
    by_addr: dict[str, TextFailure] = {}
    if text_bounce is not None:
        by_addr = {f.recipient: f for f in text_bounce.failures}
    summary = parsed.text[:3000]
    verdicts: list[RecipientVerdict] = []
    for report in reports:
        action = _ACTIONS.get(report.action, report.action or None)
        diagnostic = report.diagnostic
        own = by_addr.get(report.recipient.lower())
        if own is not None and own.diagnostic and own.diagnostic not in diagnostic:
            diagnostic = f"{diagnostic} {own.diagnostic}".strip() if diagnostic else own.diagnostic
        if action is None and text_bounce is not None and text_bounce.temporary:
            action = "delayed"
        verdicts.append(
            _verdict(
                report.recipient.lower(),
                report.status,
                report.smtp_code,
                diagnostic,
                action,
                summary,
                single=len(reports) == 1,
                senders=ctx.senders,
            )
        )
    failed = [v for v in verdicts if v.action not in {"delivered", "relayed", "expanded"}]
    primary = (failed or verdicts)[0]
    primary_report = reports[verdicts.index(primary)]
    recipients = []
    for verdict, report in zip(verdicts, reports, strict=True):
        if verdict in failed or not failed:
            recipients.append(verdict.recipient)
            final = report.final_recipient.lower()
            if final and final != verdict.recipient and "@" in final:
                recipients.append(final)
    recipients = [r for r in recipients if r]
    if not recipients and ctx.verp_recipient:
        recipients = [ctx.verp_recipient]
    return _result(
        ctx,
        reason=primary.reason,
        category=_category(primary.reason, primary.action, primary.status),
        recipients=recipients,
        why=f"delivery status notification ({len(reports)} recipient block(s))",
        source="dsn",
        verdict=primary,
        per_recipient=verdicts,
        remote_mta=primary_report.remote_mta or primary_report.reporting_mta,
    )


def _from_text(ctx: _Context, bounce: TextBounce) -> Classification:
    """Verdict from a prose bounce; VERP outranks addresses read from text."""
    parsed = ctx.parsed
    action = "delayed" if bounce.temporary else "failed"
    verdicts = [
        _verdict(
            f.recipient,
            None,
            None,
            f.diagnostic,
            action,
            bounce.summary,
            single=len(bounce.failures) == 1,
            senders=ctx.senders,
        )
        for f in bounce.failures
    ]
    recipients = [v.recipient for v in verdicts]
    why = f"{bounce.family} text bounce"
    if ctx.verp_recipient:
        recipients = [ctx.verp_recipient, *[r for r in recipients if r != ctx.verp_recipient]]
        why += "; recipient from VERP"
    if not recipients:
        recipients, where = hidden_recipients(parsed, ctx.exclude)
        if recipients:
            why += f"; recipient from {where}"
    if verdicts:
        primary = verdicts[0]
    else:
        primary = _verdict(
            recipients[0] if recipients else "", None, None, "", action, bounce.summary
        )
    return _result(
        ctx,
        reason=primary.reason,
        category=_category(primary.reason, primary.action, primary.status),
        recipients=recipients,
        why=why,
        source="text",
        verdict=primary,
        per_recipient=verdicts,
    )


def _replier(ctx: _Context) -> list[str]:
    """Who wrote a reply: the VERP recipient, else From / Reply-To / Sender."""
    if ctx.verp_recipient:
        return [ctx.verp_recipient]
    for name in ("From", "Reply-To", "Sender"):
        found = addresses(ctx.parsed.header(name))
        if found:
            return found[:1]
    return []


def _classify(raw: bytes, path: str | None, decoder: VerpDecoder | None) -> Classification:
    """The detector chain; may raise (classify_message catches)."""
    parsed = parse_message(raw)
    notes: list[str] = []
    if parsed.message is None:
        ctx = _Context(parsed, set(), set(), None, None, notes, path)
        return _result(ctx, reason="undefined", why=parsed.gave_up or "unreadable", source="parse")
    verp_recipient, campaign = find_verp(parsed, decoder, notes)
    hard, soft = exclusions(parsed)
    ctx = _Context(parsed, hard, soft, verp_recipient, campaign, notes, path)

    feedback = detect_feedback(parsed)
    if feedback is not None:
        rcpts = feedback.recipients or ([verp_recipient] if verp_recipient else [])
        return _result(
            ctx,
            reason="feedback",
            recipients=rcpts,
            why=f"complaint report, feedback type {feedback.feedback_type}",
            source="arf",
            feedback_type=feedback.feedback_type,
        )

    reports: list[RecipientReport] = []
    for text in parsed.status_texts:
        reports.extend(reports_from_fields(text))
    if not reports:
        for text in parsed.narrative[:3]:
            inline = inline_fields(text)
            if inline and re.search(r"^(?:Status|Action)\s*:", inline, re.I | re.M):
                reports.extend(reports_from_fields(inline))
                if reports:
                    notes.append("DSN fields found inline in text")
                    break
    bounce_like = bool(reports) or is_bounce(parsed)
    text_bounce = scan_text_bounce(parsed, ctx.exclude, ctx.soft_exclude) if bounce_like else None
    if reports and any(r.recipient for r in reports):
        return _from_dsn(ctx, reports, text_bounce)
    if text_bounce is None and reports:
        text_bounce = TextBounce("dsn", (), False, parsed.text[:6000])

    challenge = detect_challenge(parsed)
    if challenge is not None and (text_bounce is None or not text_bounce.failures):
        return _result(
            ctx,
            reason="challenge",
            recipients=_replier(ctx),
            why=challenge.why,
            source="challenge",
        )
    if text_bounce is not None:
        if reports:
            # Blocks without recipients: keep their codes as evidence for the text.
            codes = " ".join(f"{r.status or ''} {r.diagnostic}" for r in reports)
            text_bounce = TextBounce(
                text_bounce.family,
                text_bounce.failures,
                text_bounce.temporary,
                f"{codes}\n{text_bounce.summary}",
            )
        return _from_text(ctx, text_bounce)

    auto = detect_autoreply(parsed)
    if auto is not None:
        return _result(
            ctx, reason="vacation", recipients=_replier(ctx), why=auto.why, source="autoreply"
        )
    removal = detect_remove_request(parsed)
    if removal is not None:
        return _result(
            ctx, reason="unsubscribe", recipients=_replier(ctx), why=removal, source="reply"
        )
    if is_reply(parsed):
        return _result(
            ctx,
            reason="reply",
            recipients=_replier(ctx),
            why="reply from a person",
            source="reply",
        )
    why = parsed.gave_up or "no bounce, report or reply found"
    limits = [n for n in parsed.notes if n.endswith("limit") or n.startswith("parsed first")]
    if limits:
        why += f" (examined partly: {', '.join(limits)})"
    return _result(
        ctx,
        reason="undefined",
        recipients=[verp_recipient] if verp_recipient else [],
        why=why,
        source="none",
    )


def classify_message(
    raw: bytes,
    *,
    path: str | None = None,
    verp_decoder: VerpDecoder | None = None,
) -> Classification:
    """Classify one raw returned message; never raises."""
    try:
        return _classify(raw, path, verp_decoder)
    except RecursionError:
        return Classification(reasons.UNKNOWN, "undefined", why="nesting too deep", path=path)
    except Exception as exc:  # the contract is: one bad message never stops a run
        return Classification(
            reasons.UNKNOWN,
            "undefined",
            why=f"classifier error: {type(exc).__name__}: {exc}"[:300],
            path=path,
        )
