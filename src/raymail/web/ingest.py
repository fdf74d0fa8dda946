"""``POST /events``: the JSON shape feedback from mail clients, webhooks and ESPs takes.

::

    POST /events
    Authorization: Bearer <web.ingest_key>
    Content-Type: application/json

    {"sender": "esp-x",                       # who reports (kept in each event's detail)
     "events": [
       {"kind": "complaint",                  # open click unsubscribe reply forward
        "campaign": "spring-sale",            #   complaint bounce delete
        "recipient": "ann@example.com",
        "at": "2026-03-14T10:15:00Z",         # optional; default: when received
        "message_id": "<...@shop.example>",   # optional
        "link": "pricing", "url": "https://...",   # optional (clicks)
        "detail": {"any": "JSON object"}}]}   # optional

A complaint or an unsubscribe also suppresses the address. Every event is validated
before any is recorded: one bad field refuses the whole request with a 422 that names it
(``events.3.recipient: ...``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from raymail._strict import StrictModel
from raymail.intake.address import check_address

__all__ = ["IngestBatch", "IngestEvent", "describe_errors"]

IngestKind = Literal[
    "open", "click", "unsubscribe", "reply", "forward", "complaint", "bounce", "delete"
]


class IngestEvent(StrictModel):
    """One reported event."""

    kind: IngestKind = Field(..., description="What happened.")
    campaign: str = Field(
        ..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Campaign id."
    )
    recipient: str = Field(..., max_length=320, description="The recipient's address.")
    at: datetime | None = Field(None, description="When it happened (UTC if no zone).")
    message_id: str | None = Field(None, max_length=998, description="The message's id.")
    link: str | None = Field(None, max_length=200, description="Link name (clicks).")
    url: str | None = Field(None, max_length=4096, description="Link target (clicks).")
    detail: dict[str, Any] | None = Field(None, description="Anything else, as JSON.")

    @field_validator("recipient")
    @classmethod
    def _address(cls, value: str) -> str:
        checked = check_address(value)
        if checked.email is None:
            raise ValueError(f"not an email address ({checked.reason})")
        return checked.email.lower()

    @field_validator("at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class IngestBatch(StrictModel):
    """The body of ``POST /events``."""

    sender: str | None = Field(None, max_length=200, description="Who reports.")
    events: list[IngestEvent] = Field(..., min_length=1, description="The events.")


def describe_errors(exc: ValidationError) -> str:
    """``events.3.recipient: not an email address (...)``; the first few errors."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "(body)"
        parts.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
