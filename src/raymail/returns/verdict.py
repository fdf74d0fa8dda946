"""The verdict on a returned message, as the classifier gives it and the rest of returns reads it.

Plain frozen dataclasses (no pydantic): ``raymail returns classify`` must start fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class RecipientVerdict:
    """What happened to one recipient of a bounce."""

    recipient: str
    reason: str
    status: str | None
    smtp_code: int | None
    diagnostic: str
    action: str | None


@dataclass(frozen=True, slots=True)
class Classification:
    """The verdict on one returned message."""

    category: str
    reason: str
    recipients: list[str] = field(default_factory=list)
    status: str | None = None
    smtp_code: int | None = None
    diagnostic: str = ""
    action: str | None = None
    remote_mta: str | None = None
    campaign: str | None = None
    why: str = ""
    source: str = ""  # which detector decided: arf, dsn, text, challenge, autoreply, ...
    feedback_type: str | None = None
    per_recipient: list[RecipientVerdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    path: str | None = None

    def as_dict(self) -> dict[str, object]:
        """Plain JSON-able dict (per-recipient details included)."""
        return {
            "path": self.path,
            "category": self.category,
            "reason": self.reason,
            "recipients": list(self.recipients),
            "status": self.status,
            "smtp_code": self.smtp_code,
            "diagnostic": self.diagnostic,
            "action": self.action,
            "remote_mta": self.remote_mta,
            "campaign": self.campaign,
            "why": self.why,
            "source": self.source,
            "feedback_type": self.feedback_type,
            "notes": list(self.notes),
            "per_recipient": [
                {
                    "recipient": v.recipient,
                    "reason": v.reason,
                    "status": v.status,
                    "smtp_code": v.smtp_code,
                    "diagnostic": v.diagnostic,
                    "action": v.action,
                }
                for v in self.per_recipient
            ],
        }
