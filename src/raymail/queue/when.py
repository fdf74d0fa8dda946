"""When a scheduled campaign is due: ``--at`` text and time zones to Unix seconds.

Accepted: an ISO 8601 date-time with an offset (``2026-12-03T09:00:00+01:00``, ``...Z``);
one without (``2026-12-03 09:00``), read in the given zone; a time of day (``09:00``), the
next such moment in that zone; or a delay from now (``+90s``, ``+15m``, ``+2h``, ``+1d``).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from raymail.errors import QueueError

_DELAY = re.compile(r"^\+(\d+(?:\.\d+)?)([smhd])$")
_TIME_OF_DAY = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name`` (``Europe/Paris``, ``UTC``); QueueError when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise QueueError(
            f"unknown time zone {name!r} (an IANA name such as Europe/Paris)"
        ) from None


def due_at(text: str | None, tz: str = "UTC", *, now: float | None = None) -> float:
    """Unix seconds for ``--at`` text (None: now), naive times read in zone ``tz``."""
    current = time.time() if now is None else now
    if text is None:
        return current
    text = text.strip()
    if delay := _DELAY.match(text):
        return current + float(delay.group(1)) * _UNIT_S[delay.group(2)]
    if _TIME_OF_DAY.match(text):
        return next_wall_time(text, zone(tz), now=current)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise QueueError(
            f"--at {text!r}: not a time (use 2026-12-03T09:00, 09:00 or +15m)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone(tz))
    return moment.timestamp()


def next_wall_time(text: str, where: ZoneInfo, *, now: float | None = None) -> float:
    """The next moment (from ``now``) the clock in ``where`` shows ``HH:MM[:SS]``."""
    match = _TIME_OF_DAY.match(text.strip())
    if not match:
        raise QueueError(f"{text!r}: not a time of day (HH:MM)")
    hour, minute, second = int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise QueueError(f"{text!r}: not a time of day (HH:MM)")
    current = datetime.fromtimestamp(time.time() if now is None else now, UTC).astimezone(where)
    candidate = current.replace(hour=hour, minute=minute, second=second, microsecond=0)
    if candidate.timestamp() <= current.timestamp():
        candidate = (candidate + timedelta(days=1)).replace(hour=hour, minute=minute)
    return candidate.timestamp()


def wall_time_in(text: str, where: ZoneInfo, *, now: float | None = None) -> float:
    """``text`` read as a wall-clock time in ``where``: a time of day (the next one), or a
    date-time without offset (that date there). Used for "9:00 in the recipient's zone"."""
    if _TIME_OF_DAY.match(text.strip()):
        return next_wall_time(text, where, now=now)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise QueueError(
            f"--at {text!r}: not a wall-clock time (09:00 or 2026-12-03T09:00)"
        ) from None
    if moment.tzinfo is not None:
        raise QueueError(
            f"--at {text!r}: give a wall-clock time without offset for per-recipient zones"
        )
    return moment.replace(tzinfo=where).timestamp()
