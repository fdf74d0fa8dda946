"""What one change-log record does: suppression rows, list members, events, mail.

Pure translation, no I/O: :mod:`raymail.lists.apply` reads a batch of records, turns each
into its :class:`Effects` here, and writes all of them in bulk. Record kinds (written by
the web service, :mod:`raymail.web.app`):

- ``unsubscribe`` (one-click POST, the landing page's button, or ingest): suppress the
  address; mark it unsubscribed in the campaign's list; confirm by mail if the list asks.
- ``open`` / ``click``: tracking events only.
- ``subscribe``: a double opt-in request: send the confirmation mail.
- ``confirm``: add (or re-subscribe) the address to the list with its merge fields.
- ``event``: feedback from ``POST /events``; complaints and unsubscribes also suppress.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from raymail.lists.store import Member
from raymail.tracking.bots import flag_hit

__all__ = ["Effects", "RecordError", "Resolver", "effects_of", "list_campaign"]

SUPPRESSING = frozenset({"unsubscribe", "complaint"})


class Resolver(Protocol):
    """Who a token stands for, and which list a campaign was sent to."""

    def recipient(self, campaign: str, tag: str | None) -> str | None: ...

    def list_of(self, campaign: str) -> str | None: ...


class RecordError(ValueError):
    """A record that cannot be applied (kept in the rejects file with this reason)."""


@dataclass
class Effects:
    suppress: list[dict[str, Any]] = field(default_factory=list)
    members: dict[str, list[Member]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    mail: list[dict[str, Any]] = field(default_factory=list)  # {"kind", "to", "list", ...}


def list_campaign(list_id: str) -> str:
    """The campaign id a list's own events carry (subscribe, confirm)."""
    return f"list.{list_id}"


def _at(record: Mapping[str, Any]) -> datetime:
    try:
        return datetime.fromisoformat(str(record["at"])).astimezone(UTC)
    except (KeyError, ValueError):
        raise RecordError("no valid 'at' time") from None


def _event(
    record: Mapping[str, Any],
    kind: str,
    campaign: str,
    email: str,
    source: str = "web",
    **extra: Any,
) -> dict[str, Any]:
    agent, ip = record.get("ua"), record.get("ip")
    reason = flag_hit(kind, agent, ip) if kind in {"open", "click"} else None
    detail = {"change": record["id"], **(record.get("detail") or {})}
    return {
        "campaign": campaign,
        "at": _at(record),
        "kind": kind,
        "recipient": email.lower(),
        "row": None,
        "link": extra.get("link"),
        "url": extra.get("url"),
        "source": source,
        "user_agent": agent,
        "ip": ip,
        "bot": reason is not None,
        "bot_reason": reason,
        "message_id": extra.get("message_id"),
        "detail": json.dumps(detail, sort_keys=True, default=str),
    }


def _suppression(
    record: Mapping[str, Any], email: str, category: str, campaign: str | None, detail: str
) -> dict[str, Any]:
    return {
        "email": email.lower(),
        "suppressed": True,
        "category": category,
        "detail": detail,
        "campaign": campaign,
        "changed_at": _at(record),
        "changed_by": "web",
    }


def effects_of(
    record: Mapping[str, Any], resolver: Resolver, confirm_unsubscribe: Callable[[str], bool]
) -> Effects:
    """The effects of one record; raises RecordError when it cannot be applied."""
    kind = record.get("kind")
    out = Effects()
    if kind in {"unsubscribe", "open", "click"}:
        campaign = str(record.get("campaign"))
        email = record.get("email") or resolver.recipient(campaign, record.get("rtag"))
        if not email:
            raise RecordError(
                f"campaign {campaign!r}: recipient tag {record.get('rtag')!r} not found in "
                "its run directories"
            )
        out.events.append(
            _event(record, kind, campaign, email, link=record.get("link"), url=record.get("url"))
        )
        if kind == "unsubscribe":
            _unsubscribe(out, record, email, campaign, "unsubscribe", resolver, confirm_unsubscribe)
    elif kind == "subscribe":
        list_id, email = str(record["list"]), str(record["email"])
        out.mail.append(
            {"kind": "confirm", "to": email, "list": list_id, "fields": record.get("fields") or {}}
        )
        out.events.append(_event(record, "subscribe", list_campaign(list_id), email))
    elif kind == "confirm":
        list_id, email = str(record["list"]), str(record["email"])
        fields = {str(k): str(v) for k, v in (record.get("fields") or {}).items()}
        member = Member(email, "subscribed", fields, _at(record), str(record["id"]))
        out.members.setdefault(list_id, []).append(member)
        out.events.append(_event(record, "confirm", list_campaign(list_id), email))
    elif kind == "event":
        event = record["event"]
        email, campaign, what = str(event["recipient"]), str(event["campaign"]), event["kind"]
        at_record = {
            **record,
            "at": event.get("at") or record["at"],
            "detail": {**(event.get("detail") or {}), "sender": record.get("sender")},
        }
        out.events.append(
            _event(
                at_record,
                what,
                campaign,
                email,
                source="ingest",
                link=event.get("link"),
                url=event.get("url"),
                message_id=event.get("message_id"),
            )
        )
        if what in SUPPRESSING:
            _unsubscribe(out, at_record, email, campaign, what, resolver, confirm_unsubscribe)
    else:
        raise RecordError(f"unknown record kind {kind!r}")
    return out


def _unsubscribe(
    out: Effects,
    record: Mapping[str, Any],
    email: str,
    campaign: str,
    category: str,
    resolver: Resolver,
    confirm_unsubscribe: Callable[[str], bool],
) -> None:
    via = str(record.get("via") or category)
    out.suppress.append(_suppression(record, email, category, campaign, via))
    list_id = resolver.list_of(campaign)
    if list_id is None:
        return
    member = Member(email, "unsubscribed", {}, _at(record), str(record["id"]))
    out.members.setdefault(list_id, []).append(member)
    if category == "unsubscribe" and confirm_unsubscribe(list_id):
        out.mail.append({"kind": "unsubscribed", "to": email, "list": list_id, "fields": {}})
