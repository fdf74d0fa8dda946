"""The learned router on an injected clock, without Ray: trials, plans, presence, the seam."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from raymail.delivery.records import ObservationBuilder, OutcomeBuilder, now
from raymail.driver.dispatch import LeastLoadedRouter, Router, ServerView, Work, WorkQueue
from raymail.driver.plan import PortionTask
from raymail.routing.baselines import StaticOracleRouter
from raymail.routing.estimates import TRIAL_RECIPIENTS
from raymail.routing.factory import POLICIES
from raymail.routing.oracle import OracleRouter
from raymail.routing.policy import LearnedRouter
from raymail.routing.policy_state import (
    ACTIVE_S,
    EXPECTED_GRACE_S,
    PACE_WINDOW_S,
    ExplorationBudget,
    Presence,
    Schedule,
)
from raymail.spec import CampaignSpec, parse_spec
from raymail.status import ACCEPTED

PORTION = 20


class _Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _spec(tmp_path: Path, **routing: Any) -> CampaignSpec:
    return parse_spec(
        {
            "campaign": "c",
            "sender": "news@sender.test",
            "subject": "s",
            "text": "t",
            "recipients": "list.csv",
            "delivery_servers": 2,
            "concurrency": 2,
            "routing": {"table": str(tmp_path / "table"), "probe": False, **routing},
        }
    )


def _queue(domains: dict[str, int]) -> WorkQueue:
    """``domains``: domain -> portions of PORTION recipients each."""
    ids = itertools.count(1000)
    queue = WorkQueue(new_id=lambda: next(ids))
    rows = itertools.count()
    portion = itertools.count()
    for domain, count in domains.items():
        for _ in range(count):
            numbers = [next(rows) for _ in range(PORTION)]
            table = pa.table(
                {
                    "row": pa.array(numbers, pa.int64()),
                    "email": [f"u{n}@{domain}" for n in numbers],
                    "domain": [domain] * PORTION,
                }
            )
            queue.push(Work(PortionTask(next(portion), domain, 1, PORTION), table))
    return queue


def _view(index: int, inflight: int = 0) -> ServerView:
    return ServerView(index, f"ds{index}", None, inflight, 3)


def _results(server: str, work: Work, seconds: float) -> tuple[pa.Table, pa.Table]:
    """Every recipient of ``work`` accepted, one transaction each of ``seconds``."""
    task = work.task
    out = OutcomeBuilder("c", server, None, task.portion, task.attempt, task.domain)
    obs = ObservationBuilder(server, None, task.domain)
    for row, email in zip(
        work.rows.column("row").to_pylist(), work.rows.column("email").to_pylist(), strict=True
    ):
        out.add(row, email, ACCEPTED, 250, "2.0.0", "ok", f"mx.{task.domain}", None, now())
        obs.add(f"mx.{task.domain}", None, None, seconds, 1, 2, 100, False)
    return out.table(), obs.table()


def test_every_router_states_the_drivers_seam(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    routers: list[object] = [cls(spec) for cls in POLICIES.values()]
    routers += [
        LeastLoadedRouter(),
        OracleRouter(spec, lambda key, domain: 0.1),
        StaticOracleRouter(spec, lambda key, domain: 0.1),
    ]
    for router in routers:
        assert isinstance(router, Router), type(router).__name__


def test_an_unknown_pair_gets_one_trial_piece_at_a_time(tmp_path: Path) -> None:
    router = LearnedRouter(_spec(tmp_path), clock=_Clock())
    queue = _queue({"a.test": 3})
    taken = router.take(_view(0), queue, 3)
    assert [w.task.size for w in taken] == [TRIAL_RECIPIENTS]  # one piece, not portions
    assert taken[0].task.portion >= 1000  # the piece travels under an id of its own
    assert router.take(_view(0, inflight=1), queue, 3) == []  # one piece out per host
    assert queue.waiting("a.test") == 3 * PORTION - TRIAL_RECIPIENTS
    assert set(router.outstanding) == {taken[0].task.portion}


def test_a_trial_that_came_back_fast_earns_whole_portions(tmp_path: Path) -> None:
    clock = _Clock()
    router = LearnedRouter(_spec(tmp_path), clock=clock)
    queue = _queue({"a.test": 4})
    [piece] = router.take(_view(0), queue, 3)
    clock.now += 0.1
    router.observe("ds0", *_results("ds0", piece, 0.01))
    assert router.outstanding == {}
    more = router.take(_view(0), queue, 2)
    assert more and all(w.task.size > TRIAL_RECIPIENTS for w in more)


def test_a_known_server_leaves_a_learning_servers_share_in_the_queue(tmp_path: Path) -> None:
    """The first server whose trial comes back must not take the whole list while the
    other's trial is still out (measured: one of two servers sent 98% of a 1 s-latency
    run); the other's share waits, and goes to it once its own trial is back."""
    clock = _Clock()
    router = LearnedRouter(_spec(tmp_path), clock=clock)
    queue = _queue({"a.test": 20})
    [piece0] = router.take(_view(0), queue, 30)
    [piece1] = router.take(_view(1), queue, 30)
    clock.now += 0.1
    router.observe("ds0", *_results("ds0", piece0, 0.01))
    first = router.take(_view(0), queue, 30)
    assert first and all(w.task.size > TRIAL_RECIPIENTS for w in first)
    assert queue.waiting("a.test") >= 2 * PORTION  # ds1's share (less its slow trial's)
    clock.now += 0.1
    router.observe("ds1", *_results("ds1", piece1, 0.01))
    second = router.take(_view(1), queue, 30)
    assert second and all(w.task.size > TRIAL_RECIPIENTS for w in second)


def test_a_slow_server_is_handed_its_horizon_and_the_rest_waits(tmp_path: Path) -> None:
    """At 0.5 s a recipient over 2 connections, a portion is 5 s of work: each server is
    handed about its horizon, not its whole plan, and more as it gives work back."""
    clock = _Clock()
    router = LearnedRouter(_spec(tmp_path), clock=clock)
    queue = _queue({"a.test": 30})
    pieces = [router.take(_view(i), queue, 30) for i in (0, 1)]
    clock.now += 0.1
    for i, [piece] in enumerate(pieces):
        router.observe(f"ds{i}", *_results(f"ds{i}", piece, 0.5))
    handed = [router.take(_view(i), queue, 30) for i in (0, 1)]
    assert all(1 <= len(works) <= 2 for works in handed)  # not 14 each, as planned
    assert queue.waiting("a.test") >= 24 * PORTION
    clock.now += 10.0
    for work in handed[0]:
        router.observe("ds0", *_results("ds0", work, 0.5))
    assert 1 <= len(router.take(_view(0), queue, 30)) <= 2  # more, as it frees up


def test_a_server_keeping_a_slower_pace_than_planned_is_handed_less(tmp_path: Path) -> None:
    """The plan counts a server's connections; shaping may leave it fewer. Once it has had
    work for a whole window, its measured pace caps what it holds: 4 recipients back in
    10 s, so no more than 2 per connection (4 here), whatever the plan's estimate says."""
    clock = _Clock()
    router = LearnedRouter(_spec(tmp_path), clock=clock)
    queue = _queue({"a.test": 30})
    [piece] = router.take(_view(0), queue, 30)
    clock.now += PACE_WINDOW_S
    router.observe("ds0", *_results("ds0", piece, 0.001))  # fast transactions, slow pace
    handed = router.take(_view(0), queue, 30)
    assert len(handed) == 1  # one portion of 20 >= 2 x 2 connections: full
    assert router.given_back.pace("ds0", clock.now) == pytest.approx(
        TRIAL_RECIPIENTS / PACE_WINDOW_S
    )


def test_a_server_given_up_holds_nothing_and_leaves_the_plan(tmp_path: Path) -> None:
    clock = _Clock()
    router = LearnedRouter(_spec(tmp_path), clock=clock)
    queue = _queue({"a.test": 2, "b.test": 2})
    assert router.take(_view(1), queue, 3)
    router.server_gone("ds1")
    assert router.outstanding == {}
    assert "ds1" not in router.presence.last_seen
    assert router.dirty  # the next take plans again, without it


def test_a_silent_server_drops_out_of_plans_after_the_grace_period(tmp_path: Path) -> None:
    clock = _Clock()
    router = LearnedRouter(_spec(tmp_path), clock=clock)
    queue = _queue({"a.test": 6, "b.test": 6})
    for index in (0, 1):
        for work in router.take(_view(index), queue, 3):
            router.failed(f"ds{index}", work.task.portion, work.task.attempt)
    assert set(router.schedule.slots) == {"ds0", "ds1"}
    clock.now += EXPECTED_GRACE_S + ACTIVE_S + 1
    router.take(_view(0), queue, 1)  # only ds0 still asks
    assert set(router.schedule.slots) == {"ds0"}


def test_the_router_keeps_no_reference_to_the_queue(tmp_path: Path) -> None:
    router = LearnedRouter(_spec(tmp_path), clock=_Clock())
    queue = _queue({"a.test": 2})
    router.take(_view(0), queue, 1)
    router.tick(queue)
    assert all(value is not queue for value in vars(router).values())


def test_presence_counts_promised_servers_only_during_the_grace_period() -> None:
    from collections import Counter

    presence = Presence(Counter({"ds0": 1, "ds1": 1}), started=0.0)
    assert presence.asked("ds0", 1.0) is True
    assert presence.asked("ds0", 2.0) is False
    names = {"ds0": "ds0", "ds1": "ds1"}
    assert presence.active(3.0, names, []) == Counter({"ds0": 1, "ds1": 1})
    later = EXPECTED_GRACE_S + 1.0
    assert presence.active(later, names, []) == Counter()  # ds0 asked too long ago
    assert presence.active(later, names, ["ds0"]) == Counter({"ds0": 1})  # it holds work
    presence.gone("ds0")
    assert presence.asked("ds0", later) is True


def test_schedule_books_portions_on_each_servers_timeline() -> None:
    schedule = Schedule(mean={("ds0", "a.test"): 0.5}, slots={"ds0": 2.0})
    assert schedule.booked("ds0", "a.test", 4, now=10.0, concurrency=8) == 2.0
    assert schedule.ready["ds0"] == pytest.approx(11.0)  # 2 connection-s over 2 slots
    schedule.booked("ds0", "a.test", 4, now=10.5, concurrency=8)
    assert schedule.ready["ds0"] == pytest.approx(12.0)
    assert schedule.booked("ds1", "b.test", 10, now=0.0, concurrency=5) == pytest.approx(0.5)
    assert schedule.covers(["x"]) is False and Schedule(domains=["x", "y"]).covers(["x"])


def test_exploration_budget_is_a_share_of_all_traffic_less_what_trials_took() -> None:
    budget = ExplorationBudget(share=0.1)
    budget.renew(waiting=200.0)
    assert budget.left == pytest.approx(20.0)
    budget.spend(4, trial=True)
    budget.spend(20, trial=False)
    assert (budget.trials, budget.explored, budget.given, budget.left) == (1, 4.0, 24.0, 16.0)
    budget.renew(waiting=176.0)  # same traffic in total: the same 20, less the 4 used
    assert budget.left == pytest.approx(16.0)
