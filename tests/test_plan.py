"""Portions (one domain each, even sizes, deterministic) and capacity sizing."""

from __future__ import annotations

import pyarrow as pa

from raymail.driver.plan import size_capacity, split_portions


def _table(domains: list[str]) -> pa.Table:
    return pa.table(
        {
            "row": list(range(1, len(domains) + 1)),
            "email": [f"u{i}@{d}" for i, d in enumerate(domains)],
            "domain": domains,
        }
    )


def test_portions_are_single_domain_and_cover_every_row() -> None:
    domains = ["b.test"] * 250 + ["a.test"] * 30 + ["c.test"] * 101
    portions = list(split_portions(_table(domains), 100))
    rows = [r for _, t in portions for r in t.column("row").to_pylist()]
    assert sorted(rows) == list(range(1, len(domains) + 1))
    for task, t in portions:
        assert set(t.column("domain").to_pylist()) == {task.domain}
        assert task.size == t.num_rows <= 100
        assert task.attempt == 1
    sizes = {
        d: [t.size for t, _ in portions if t.domain == d] for d in ("a.test", "b.test", "c.test")
    }
    assert sizes == {"a.test": [30], "b.test": [84, 83, 83], "c.test": [51, 50]}
    assert [t.portion for t, _ in portions] == list(range(len(portions)))


def test_portions_are_deterministic() -> None:
    domains = ["x.test", "y.test"] * 120
    first = [(t, p.column("row").to_pylist()) for t, p in split_portions(_table(domains), 50)]
    again = [(t, p.column("row").to_pylist()) for t, p in split_portions(_table(domains), 50)]
    assert first == again


def test_empty_table_has_no_portions() -> None:
    assert list(split_portions(_table([]), 100)) == []


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
