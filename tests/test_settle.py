"""Settlement rules and server judging as plain functions: no Ray, no SMTP."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from ray.exceptions import ActorUnavailableError

from raymail.delivery.records import OutcomeBuilder
from raymail.delivery.server import ServerStats
from raymail.driver.dispatch import LeastLoadedRouter, Work
from raymail.driver.fleet import FAILURE_LIMIT, Fleet, Server, progress_seen, server_capacity
from raymail.driver.plan import PortionTask
from raymail.driver.portions import FIRST_ATTEMPT
from raymail.driver.progress import Tally
from raymail.driver.settle import (
    INTERNAL_RETRIES,
    failed_outcomes,
    next_attempt,
    settle_failed_call,
    settle_outcomes,
)
from raymail.spec import RetrySettings, parse_spec
from raymail.status import ACCEPTED, DEFERRED, FAILED, IN_DOUBT

RETRY = RetrySettings(  # in-run retries (schedule: []); the deferral queue is tested below
    schedule=[], max_attempts=3, initial_backoff_s=2.0, multiplier=3.0, max_backoff_s=10.0
)
SPEC: dict[str, Any] = {
    "campaign": "c",
    "sender": "news@sender.test",
    "subject": "s",
    "text": "t",
    "recipients": "list.csv",
}


def _work(rows: list[int], attempt: int = 1, failures: int = 0) -> Work:
    table = pa.table({"row": pa.array(rows, pa.int64()), "email": [f"u{r}@a.test" for r in rows]})
    return Work(PortionTask(7, "a.test", attempt, len(rows)), table, failures)


def _outcomes(statuses: dict[int, str]) -> pa.Table:
    return pa.table(
        {"row": pa.array(list(statuses), pa.int64()), "status": list(statuses.values())}
    )


def test_deferred_rows_go_again_after_a_growing_capped_backoff() -> None:
    tally = Tally()
    outcomes = _outcomes({1: ACCEPTED, 2: DEFERRED, 3: FAILED, 4: DEFERRED, 5: IN_DOUBT})
    retry = settle_outcomes(tally, _work([1, 2, 3, 4, 5]).task, outcomes, RETRY, resend_doubt=False)
    assert retry.rows.to_pylist() == [2, 4]
    assert retry.delay_s == 2.0
    assert (tally.accepted, tally.failed, tally.in_doubt, tally.retrying) == (1, 1, 1, 2)

    second = settle_outcomes(
        tally, _work([2, 4], attempt=2).task, _outcomes({2: DEFERRED, 4: ACCEPTED}), RETRY,
        resend_doubt=False,
    )  # fmt: skip
    assert second.rows.to_pylist() == [2]
    assert second.delay_s == 6.0  # 2 s x 3
    assert (tally.accepted, tally.retrying) == (2, 1)


def test_the_last_attempt_settles_deferred_and_in_doubt_rows_for_good() -> None:
    tally = Tally(retrying=2)
    outcomes = _outcomes({1: DEFERRED, 2: IN_DOUBT})
    task = _work([1, 2], attempt=3).task
    retry = settle_outcomes(tally, task, outcomes, RETRY, resend_doubt=True)
    assert not retry
    assert (tally.deferred, tally.in_doubt, tally.retrying) == (1, 1, 0)


def test_resend_policy_sends_in_doubt_rows_again() -> None:
    tally = Tally()
    outcomes = _outcomes({1: IN_DOUBT, 2: ACCEPTED})
    retry = settle_outcomes(tally, _work([1, 2]).task, outcomes, RETRY, resend_doubt=True)
    assert retry.rows.to_pylist() == [1]
    assert tally.in_doubt == 0


def test_a_failed_call_requeues_untouched_rows_at_once_with_the_deferred_ones() -> None:
    tally = Tally()
    work = _work([1, 2, 3, 4])
    recovered = _outcomes({1: ACCEPTED, 2: DEFERRED})  # what the journal knew
    settled = settle_failed_call(tally, work, recovered, RETRY, resend_doubt=False)
    assert sorted(settled.retry.rows.to_pylist()) == [2, 3, 4]
    assert settled.retry.delay_s == 0.0  # untouched rows do not wait for the backoff
    assert settled.given_up.num_rows == 0
    assert tally.accepted == 1

    again = next_attempt(work, settled.retry.rows)
    assert (again.task.portion, again.task.attempt, again.task.size) == (7, 2, 3)
    assert again.rows.column("row").to_pylist() == [2, 3, 4]


def test_a_portion_failing_internally_too_often_gives_its_untouched_rows_up() -> None:
    tally = Tally()
    work = _work([1, 2, 3], failures=INTERNAL_RETRIES + 1)
    settled = settle_failed_call(tally, work, _outcomes({1: DEFERRED}), RETRY, resend_doubt=False)
    assert settled.retry.rows.to_pylist() == [1]  # what SMTP deferred still goes again
    assert settled.given_up.column("row").to_pylist() == [2, 3]
    assert tally.failed == 2
    rows = failed_outcomes("c", work, settled.given_up, "ds0", RuntimeError("boom\nmore"))
    assert rows.column("status").to_pylist() == [FAILED, FAILED]
    assert rows.column("response").to_pylist() == ["internal error: RuntimeError: boom"] * 2


def test_progress_is_placed_on_the_drivers_clock_from_the_servers_own_count() -> None:
    stats = ServerStats("ds0", since_progress_s=12.5)
    assert progress_seen(1000.0, stats) == 987.5
    stats.since_progress_s = -1.0  # never in the future
    assert progress_seen(1000.0, stats) == 1000.0


def test_pull_servers_hold_their_connections_push_servers_a_little_more() -> None:
    assert server_capacity(parse_spec({**SPEC, "concurrency": 8})) == 12
    assert server_capacity(parse_spec({**SPEC, "concurrency": 2})) == 4
    assert server_capacity(parse_spec({**SPEC, "concurrency": 8, "dispatch": "pull"})) == 8


class _Gone(LeastLoadedRouter):
    def __init__(self) -> None:
        self.gone: list[str] = []

    def server_gone(self, server: str) -> None:
        self.gone.append(server)


def _fleet(tmp_path: Path, clock: list[float], stall_s: float = 30.0) -> tuple[Fleet, _Gone]:
    router = _Gone()
    spec = parse_spec({**SPEC, "stall_timeout_s": stall_s})
    fleet = Fleet(spec, tmp_path, router, clock=lambda: clock[0])
    fleet.servers = [Server(i, f"ds{i}", None, None) for i in range(2)]
    return fleet, router


def test_a_server_failing_across_two_domains_while_others_deliver_is_retired(
    tmp_path: Path,
) -> None:
    fleet, router = _fleet(tmp_path, [0.0])
    bad, good = fleet.servers
    nothing = _outcomes({1: DEFERRED, 2: DEFERRED})
    for _ in range(FAILURE_LIMIT):
        fleet.returned(bad, nothing, "a.test")  # one domain only: the router's business
    assert bad.healthy and router.gone == []
    fleet.returned(good, _outcomes({3: ACCEPTED}), "a.test")
    fleet.returned(bad, nothing, "b.test")
    assert not bad.healthy and router.gone == ["ds0"]
    assert good.healthy


def test_calls_failing_while_ray_restarts_a_server_are_not_charged_until_the_stall_timeout(
    tmp_path: Path,
) -> None:
    clock = [100.0]
    fleet, router = _fleet(tmp_path, clock, stall_s=30.0)
    server = fleet.servers[0]
    unavailable = ActorUnavailableError("restarting", None)
    assert fleet.call_failed(server, unavailable) is False
    assert fleet.paused(server) and server.failures == 0
    clock[0] += 31.0  # still unavailable past the stall timeout: now it counts
    assert fleet.call_failed(server, unavailable) is True
    assert server.failures == 1
    for _ in range(FAILURE_LIMIT - 1):
        fleet.call_failed(server, RuntimeError("died"))
    assert not server.healthy and router.gone[-1] == "ds0"


def test_handing_work_to_an_idle_server_starts_its_stall_clock(tmp_path: Path) -> None:
    clock = [5.0]
    fleet, _ = _fleet(tmp_path, clock)
    server = fleet.servers[0]
    server.last_progress = 0.0
    fleet.hand_out(server, 2)
    assert (server.inflight, server.last_progress) == (2, 5.0)
    clock[0] = 9.0
    fleet.hand_out(server, 1)  # busy already: its clock runs on
    assert (server.inflight, server.last_progress) == (3, 5.0)
    assert fleet.view(server).capacity == fleet.capacity


@pytest.mark.parametrize("attempt", [1, 2])
def test_next_attempt_keeps_the_portion_id_and_failure_count(attempt: int) -> None:
    work = _work([4, 5, 6], attempt=attempt, failures=1)
    again = next_attempt(work, pa.array([6], pa.int64()))
    assert (again.task.portion, again.task.attempt, again.internal_failures) == (7, attempt + 1, 1)


def _deferred_outcomes(task: PortionTask, rows: list[int], started: float) -> pa.Table:
    out = OutcomeBuilder("c", "s0", None, task.portion, task.attempt, task.domain)
    at = datetime.fromtimestamp(started, UTC)
    for row in rows:
        out.add(row, f"u{row}@a.test", DEFERRED, 451, "4.7.1", "451 4.7.1 later", "mx", None, at)
    return out.table()


def test_deferral_queue_retries_by_schedule_until_max_age_then_expires() -> None:
    queue = RetrySettings(schedule=["10s", "60s"], max_age="100s")
    t0 = 1_000_000.0
    work = _work([1, 2])
    tally = Tally()
    first = settle_outcomes(
        tally, work.task, _deferred_outcomes(work.task, [1, 2], t0), queue,
        resend_doubt=False, sent=work.rows, at=t0 + 1,
    )  # fmt: skip
    assert first.rows.to_pylist() == [1, 2] and first.delay_s == 10.0 and first.expired is None
    assert first.first_at is not None and first.first_at.to_pylist() == [t0, t0]
    again = next_attempt(work, first.rows, first.first_at)
    assert again.task.attempt == 2 and again.rows.column(FIRST_ATTEMPT).to_pylist() == [t0, t0]
    # Attempt 2 fails at t0 + 50: the schedule says 60 s, but max_age ends at t0 + 100.
    second = settle_outcomes(
        tally, again.task, _deferred_outcomes(again.task, [1, 2], t0 + 50), queue,
        resend_doubt=False, sent=again.rows, at=t0 + 51,
    )  # fmt: skip
    assert second.delay_s == 49.0  # the last try falls at max_age, not after it
    last = next_attempt(again, second.rows, second.first_at)
    third = settle_outcomes(
        tally, last.task, _deferred_outcomes(last.task, [1, 2], t0 + 100), queue,
        resend_doubt=False, sent=last.rows, at=t0 + 100,
    )  # fmt: skip
    assert not third and third.expired is not None and tally.expired == 2
    assert third.expired.column("status").to_pylist() == ["expired", "expired"]
    assert third.expired.column("attempt").to_pylist() == [4, 4]
    assert "451 4.7.1 later" in third.expired.column("response")[0].as_py()
    assert tally.retrying == 0 and tally.deferred == 0
