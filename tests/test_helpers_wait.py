"""The shared wait helper: returns the check's value, fails after its deadline with the reason."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from helpers import wait_for


def test_returns_the_first_truthy_value() -> None:
    answers: Iterator[object] = iter([0, None, [], "ready"])
    assert wait_for("ready", lambda: next(answers), timeout_s=5, interval_s=0.001) == "ready"


def test_times_out_naming_what_it_waited_for() -> None:
    calls: list[float] = []
    started = time.monotonic()
    with pytest.raises(AssertionError, match="timed out waiting for the moon"):
        wait_for("the moon", lambda: calls.append(time.monotonic()), timeout_s=0.1, interval_s=0.02)
    assert len(calls) >= 2 and calls[-1] - started >= 0.1  # checked again at the deadline


def test_message_can_be_read_when_the_time_is_up() -> None:
    state = {"status": "pending"}

    def describe() -> str:
        return f"job (still {state['status']})"

    state["status"] = "running"
    with pytest.raises(AssertionError, match=r"job \(still running\)"):
        wait_for(describe, lambda: False, timeout_s=0.01, interval_s=0.005)
