"""The makespan program and its rounding to whole portions (routing/plan.py)."""

from __future__ import annotations

import numpy as np
import pytest

from raymail.routing.plan import Plan, _fallback, round_portions, solve

INF = np.inf


def _solve(
    tau: list[list[float]], work: list[float], slots: list[float], backlog: list[float]
) -> Plan:
    return solve(np.array(tau), np.array(work), np.array(slots), np.array(backlog))


def test_one_domain_is_split_so_both_servers_finish_together() -> None:
    plan = _solve([[0.1], [0.3]], work=[100.0], slots=[1.0, 1.0], backlog=[0.0, 0.0])
    # x0 * 0.1 == x1 * 0.3 and x0 + x1 == 100: 75 and 25, both done after 7.5 s
    assert plan.share[:, 0] == pytest.approx([75.0, 25.0], abs=1e-6)
    assert plan.makespan == pytest.approx(7.5, rel=1e-6)


def test_each_domain_goes_to_the_server_fast_for_it() -> None:
    plan = _solve([[0.1, 1.0], [1.0, 0.1]], work=[10.0, 10.0], slots=[1.0, 1.0], backlog=[0.0, 0.0])
    assert plan.share == pytest.approx(np.array([[10.0, 0.0], [0.0, 10.0]]), abs=1e-6)
    assert plan.makespan == pytest.approx(1.0, rel=1e-6)


def test_a_pair_at_infinity_gets_nothing() -> None:
    plan = _solve([[INF], [0.5]], work=[8.0], slots=[2.0, 2.0], backlog=[0.0, 0.0])
    assert plan.share[:, 0] == pytest.approx([0.0, 8.0])
    assert plan.makespan == pytest.approx(2.0)  # 8 x 0.5 s over 2 connections


def test_work_already_in_hand_counts_against_a_server() -> None:
    idle = _solve([[0.1], [0.1]], work=[100.0], slots=[1.0, 1.0], backlog=[0.0, 0.0])
    busy = _solve([[0.1], [0.1]], work=[100.0], slots=[1.0, 1.0], backlog=[4.0, 0.0])
    assert idle.share[0, 0] == pytest.approx(50.0, abs=1e-6)
    assert busy.share[0, 0] == pytest.approx(30.0, abs=1e-6)  # 4 + 0.1 x == 0.1 (100 - x)
    assert busy.makespan == pytest.approx(7.0, rel=1e-6)


def test_more_connections_take_a_larger_share() -> None:
    plan = _solve([[0.2], [0.2]], work=[90.0], slots=[2.0, 1.0], backlog=[0.0, 0.0])
    assert plan.share[:, 0] == pytest.approx([60.0, 30.0], abs=1e-6)


def test_no_usable_pair_plans_nothing_and_waits_for_the_backlog() -> None:
    plan = _solve([[INF], [INF]], work=[5.0], slots=[1.0, 2.0], backlog=[3.0, 8.0])
    assert not plan.share.any()
    assert plan.makespan == pytest.approx(4.0)


def test_the_fallback_splits_by_rate() -> None:
    plan = _fallback(np.array([[0.1], [0.3]]), np.array([40.0]), np.array([1.0, 1.0]), np.zeros(2))
    assert plan.share[:, 0] == pytest.approx([30.0, 10.0])
    assert plan.makespan == pytest.approx(3.0)


def test_rounding_keeps_each_domains_portion_count_by_largest_remainder() -> None:
    share = np.array([[2.6, 0.0], [1.4, 5.0], [1.0, 5.0]])  # columns: 5 and 10 recipients
    counts = round_portions(share, np.array([3, 3]))
    assert counts.sum(axis=0).tolist() == [3, 3]
    # domain 0: exact 1.56, 0.84, 0.6 -> floors 1, 0, 0, the two largest remainders add one
    assert counts[:, 0].tolist() == [1, 1, 1]
    # domain 1: exact 0, 1.5, 1.5 -> the tie goes to the first server in order
    assert counts[:, 1].tolist() == [0, 2, 1]


def test_rounding_of_an_empty_column_gives_nothing() -> None:
    counts = round_portions(np.zeros((2, 1)), np.array([0]))
    assert counts.tolist() == [[0], [0]]
