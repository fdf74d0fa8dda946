"""Capacity sizing for a target time (portions: tests/test_streaming.py)."""

from __future__ import annotations

from raymail.driver.plan import size_capacity


def test_capacity_scales_servers_to_target() -> None:
    plan = size_capacity(
        remaining=100_000,
        target_s=100,
        rate_per_connection=10,
        concurrency=25,
        current_servers=1,
        max_servers=10,
    )
    assert plan.servers == 4 and plan.feasible
    assert plan.estimated_s <= 100
    assert "about 100 s for 100000 messages (target 100 s)" in plan.message, plan.message


def test_capacity_says_when_target_cannot_be_met() -> None:
    plan = size_capacity(
        remaining=1_000_000,
        target_s=60,
        rate_per_connection=10,
        concurrency=25,
        current_servers=2,
        max_servers=4,
    )
    assert not plan.feasible and plan.servers == 4
    assert "cannot be met" in plan.message and "would need 67 servers" in plan.message
    assert plan.message.startswith("target of 60 s cannot be met"), plan.message
    assert "need about 16.7 min" in plan.message, plan.message  # 1M / (10 x 25 x 4) s


def test_capacity_never_shrinks_running_servers() -> None:
    plan = size_capacity(
        remaining=10,
        target_s=600,
        rate_per_connection=100,
        concurrency=10,
        current_servers=3,
        max_servers=8,
    )
    assert plan.servers == 3
