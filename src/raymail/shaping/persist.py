"""Learned per-MX limits kept across runs: ``shaping.json`` beside the routing table.

One entry per MX host: the connection limit, rate and messages per connection learned, and
when. A delivery server starts each MX it knows from here instead of from its full
concurrency, so the next run does not collect the 421s again; entries older than
``max_age_s`` are forgotten (receivers change their limits). Saving merges under a flock:
servers ending at once each add what they learned, the latest word per MX winning.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from raymail._io import flocked, write_json_atomic
from raymail.shaping.state import HostState

FILE = "shaping.json"
MAX_AGE_S = 7 * 86_400.0


def load_limits(folder: Path, max_age_s: float = MAX_AGE_S) -> dict[str, dict[str, Any]]:
    """MX host -> learned entry (fresh ones only); empty when nothing was saved."""
    try:
        data = json.loads((folder / FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    now = time.time()
    hosts = data.get("hosts", {}) if isinstance(data, dict) else {}
    return {
        mx: entry
        for mx, entry in hosts.items()
        if isinstance(entry, dict) and now - float(entry.get("updated_at", 0)) < max_age_s
    }


def held_limit(state: HostState) -> int:
    """The connections known to hold: the limit, or below the last refused one when the
    run ended while probing above it (the next run should not start with a refusal)."""
    limit = int(state.limit)
    if state.ceiling and limit >= state.ceiling:
        return max(1, state.ceiling - 1)
    return limit


def save_limits(folder: Path, states: list[HostState]) -> None:
    """Merge these hosts' learned limits into the file (flocked, atomic)."""
    if not states:
        return
    folder.mkdir(parents=True, exist_ok=True)
    with flocked(folder / (FILE + ".lock")):
        hosts = load_limits(folder)
        now = time.time()
        for state in states:
            hosts[state.mx_host] = {
                "connections": held_limit(state),
                "rate_per_s": state.rate,
                "messages_per_connection": state.messages_per_connection,
                "reason": state.reason,
                "updated_at": now,
            }
        write_json_atomic(folder / FILE, {"hosts": hosts})


def seed(state: HostState, entry: dict[str, Any] | None) -> HostState:
    """A new host's state started from what an earlier run learned."""
    if entry:
        state.limit = float(
            max(1, min(int(entry.get("connections", state.limit)), state.max_limit))
        )
        rate = entry.get("rate_per_s")
        state.rate = float(rate) if rate is not None else None
        mpc = entry.get("messages_per_connection")
        state.messages_per_connection = int(mpc) if mpc is not None else None
        state.reason = str(entry.get("reason", ""))
    return state
