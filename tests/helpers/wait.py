"""One bounded wait for a condition that real servers, processes or Ray make true later.

Tests talk to real SMTP servers, subprocesses and actors, so some results arrive after the
call that causes them. Each test file had its own deadline loop; this is the one loop, bounded
in time, that polls a check and says what it was waiting for when the time is up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    what: str | Callable[[], str],
    check: Callable[[], T],
    timeout_s: float = 60.0,
    interval_s: float = 0.2,
) -> T:
    """Poll ``check`` every ``interval_s`` until it returns a truthy value; return that value.

    After ``timeout_s`` (checked once more at the end) raise :class:`AssertionError`
    "timed out waiting for <what>"; ``what`` may be a callable, called only then, so the
    message can carry state read at the time (a job's log, the last status).
    """
    deadline = time.monotonic() + timeout_s
    while True:  # bounded by the deadline
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            break
        time.sleep(interval_s)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")
