"""Priority lanes: campaigns sharing delivery servers, the most urgent first.

The gate's rules are checked on a plain event loop; the lanes end to end with real Ray,
two drivers on one shared delivery server and the project's sink.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import polars as pl
import pytest
import ray
from ray.exceptions import GetTimeoutError, RayActorError

from conftest import make_spec, write_csv
from helpers import wait_for
from raymail.delivery.admission import PriorityGate
from raymail.delivery.shared import NAMESPACE, close_pool, pool_actor_name
from raymail.driver.campaign import run_campaign
from raymail.run.report import RunReport
from raymail.sink import Rule, SinkConfig, read_capture, run_sink


def test_gate_admits_most_urgent_first_then_in_arrival_order() -> None:
    async def scenario() -> list[str]:
        gate = PriorityGate(1)
        order: list[str] = []
        await gate.acquire(100)  # the slot is taken: everyone below waits

        async def waiter(name: str, priority: int) -> None:
            await gate.acquire(priority)
            order.append(name)
            gate.release()

        tasks = [
            asyncio.create_task(waiter(name, prio))
            for name, prio in (("bulk-a", 100), ("bulk-b", 100), ("urgent", 0), ("mid", 50))
        ]
        await asyncio.sleep(0)
        assert gate.contended(100) and gate.contended(1) and not gate.contended(0)
        gate.release()
        await asyncio.gather(*tasks)
        assert gate.busy == 0 and not gate.contended(100)
        return order

    assert asyncio.run(scenario()) == ["urgent", "mid", "bulk-a", "bulk-b"]


def test_gate_survives_a_cancelled_waiter() -> None:
    async def scenario() -> int:
        gate = PriorityGate(1)
        await gate.acquire(100)
        urgent = asyncio.create_task(gate.acquire(0))
        await asyncio.sleep(0)
        assert gate.contended(100)
        urgent.cancel()
        with pytest.raises(asyncio.CancelledError):
            await urgent
        assert not gate.contended(100)  # nobody waits any more: bulk keeps going
        gate.release()
        await asyncio.wait_for(gate.acquire(100), 1.0)  # the slot is free again
        return gate.busy

    assert asyncio.run(scenario()) == 1


def _captured(capture: Path) -> int:
    try:
        return read_capture(capture).height
    except Exception:  # the first capture file may not exist yet
        return 0


def _list(path: Path, n: int, domain: str) -> Path:
    return write_csv(path, "email,name", [f"u{i}@{domain},N{i}" for i in range(n)])


@pytest.mark.usefixtures("ray_session")
def test_priority_campaign_is_sent_while_bulk_still_runs(tmp_path: Path) -> None:
    """Bulk holds every connection of one shared server (slow receiver); a priority-0
    campaign started during it is accepted long before the bulk run ends."""
    capture = tmp_path / "capture"
    config = SinkConfig(domains={"bulk.test": Rule(latency_ms=25)})
    pool = f"test-{time.monotonic_ns()}"
    shared = {"delivery_pool": pool, "delivery_servers": 1, "concurrency": 2}
    with run_sink(config, capture_dir=capture) as sink:
        bulk_spec = make_spec(
            _list(tmp_path / "bulk.csv", 500, "bulk.test"), sink.port,
            campaign="bulk", portion_size=50, **shared,
        )  # fmt: skip
        urgent_spec = make_spec(
            _list(tmp_path / "urgent.csv", 3, "urgent.test"), sink.port,
            campaign="urgent", priority=0, **shared,
        )  # fmt: skip
        reports: dict[str, RunReport] = {}
        bulk = threading.Thread(
            target=lambda: reports.update(
                bulk=run_campaign(bulk_spec, tmp_path / "bulk", live_progress=False)
            )
        )
        bulk.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sink.stats().accepted < 60:
            time.sleep(0.1)
        assert bulk.is_alive(), "the bulk run ended before the urgent one could start"
        enqueued = datetime.now(UTC)
        reports["urgent"] = run_campaign(urgent_spec, tmp_path / "urgent", live_progress=False)
        bulk.join(timeout=300)
    # An actor handle's methods are not typed (as find_scheduler's handle in src).
    server: Any = ray.get_actor(pool_actor_name(pool, 0), namespace=NAMESPACE)
    lanes: dict[str, Any] = ray.get(server.lanes.remote())
    assert close_pool(pool) == 1
    assert lanes["preemptions"] >= 1  # bulk gave its connection up to the urgent lane
    assert lanes["campaigns"] == {}  # both detached at their end
    assert reports["urgent"].accepted == 3
    assert reports["bulk"].accepted == 500
    captured = read_capture(capture)
    urgent = captured.filter(captured["rcpt_to"].str.ends_with("@urgent.test"))
    bulk_times = captured.filter(captured["rcpt_to"].str.ends_with("@bulk.test"))["received_at"]
    assert urgent.height == 3
    # accepted before the bulk run's end, and within seconds of being started
    last_urgent, last_bulk = urgent["received_at"].max(), bulk_times.max()
    assert isinstance(last_urgent, datetime) and isinstance(last_bulk, datetime)
    assert last_urgent < last_bulk
    assert (last_urgent - enqueued).total_seconds() < 15
    later_bulk = bulk_times.filter(bulk_times > last_urgent).len()
    assert later_bulk > 100  # most of the bulk run was still to come


def test_queue_priority_reaches_the_spec(tmp_path: Path) -> None:
    """``raymail schedule --priority N``: the run's spec carries N, which the lanes use."""
    from raymail.queue import CampaignQueue, schedule_campaign

    spec = make_spec(_list(tmp_path / "l.csv", 1, "x.test"), 25)
    queue = CampaignQueue(f"sqlite:///{tmp_path / 'queue.db'}")
    (entry,) = schedule_campaign(queue, spec, priority=0)
    assert entry.priority == 0 and entry.spec().priority == 0


def _lanes(pool: str) -> dict[str, Any] | None:
    """The pool's first server's lanes, or None while it is dead or not started anew."""
    try:
        actor = ray.get_actor(pool_actor_name(pool, 0), namespace=NAMESPACE)
        return cast(dict[str, Any], ray.get(actor.lanes.remote(), timeout=10))
    except (ValueError, RayActorError, GetTimeoutError):
        return None


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("restart", [True, False], ids=["ray-restarts-it", "killed-for-good"])
def test_campaign_reattaches_to_a_restarted_shared_server(tmp_path: Path, restart: bool) -> None:
    """The pool's only server is killed mid-run: Ray restarts it (knowing no campaign), or,
    killed for good, the next driver starts it anew. The campaign re-attaches to the server
    of the same name (no replacement server is started) and finishes: every recipient
    captured, none twice unless the report calls it in doubt."""
    n = 1600
    capture = tmp_path / "capture"
    config = SinkConfig(default=Rule(latency_ms=20))
    pool = f"restart-{time.monotonic_ns()}"
    shared = {"delivery_pool": pool, "delivery_servers": 1, "concurrency": 4}
    reports: dict[str, RunReport] = {}
    with run_sink(config, capture_dir=capture) as sink:
        spec = make_spec(
            _list(tmp_path / "bulk.csv", n, "bulk.test"), sink.port,
            campaign="bulk", portion_size=50, **shared,
        )  # fmt: skip
        bulk = threading.Thread(
            target=lambda: reports.update(
                bulk=run_campaign(spec, tmp_path / "bulk", live_progress=False)
            )
        )
        bulk.start()
        wait_for("a fifth delivered", lambda: _captured(capture) >= n // 5, 120)
        before = _lanes(pool)
        assert before is not None and len(before["campaigns"]) == 1
        actor = ray.get_actor(pool_actor_name(pool, 0), namespace=NAMESPACE)
        ray.kill(actor, no_restart=not restart)
        if not restart:  # the next driver to open the pool starts server 0 anew
            urgent = make_spec(
                _list(tmp_path / "next.csv", 20, "next.test"), sink.port,
                campaign="next", priority=0, **shared,
            )  # fmt: skip
            reports["next"] = run_campaign(urgent, tmp_path / "next", live_progress=False)

        def reattached() -> dict[str, Any]:  # {} (falsy) until it is
            lanes = _lanes(pool)
            if lanes is None or lanes["pid"] == before["pid"]:
                return {}
            return lanes if any(k.startswith("bulk:") for k in lanes["campaigns"]) else {}

        after = wait_for("the bulk campaign re-attached to a new server 0", reattached, 60)
        assert bulk.is_alive(), "the bulk run ended before it was seen re-attached"
        bulk.join(timeout=300)
    assert not bulk.is_alive()
    with pytest.raises(ValueError):  # it went on on server 0: no replacement was started
        ray.get_actor(pool_actor_name(pool, 1), namespace=NAMESPACE)
    final = _lanes(pool)
    assert close_pool(pool) == 1
    assert final is not None and final["pid"] == after["pid"] and final["campaigns"] == {}
    report = reports["bulk"]
    assert report.failed == 0
    assert report.accepted + report.in_doubt == n
    per_rcpt = read_capture(capture).group_by("rcpt_to").len()
    bulk_rcpts = per_rcpt.filter(pl.col("rcpt_to").str.ends_with("@bulk.test"))
    assert bulk_rcpts.height == n, f"missed {n - bulk_rcpts.height} recipients"
    duplicates = set(bulk_rcpts.filter(pl.col("len") > 1)["rcpt_to"].to_list())
    assert duplicates <= set(report.in_doubt_recipients)
    if not restart:
        assert reports["next"].accepted == 20
        assert per_rcpt.filter(pl.col("rcpt_to").str.ends_with("@next.test")).height == 20
