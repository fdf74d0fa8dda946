"""Shaping shared by a run's delivery servers: one Ray actor holds each MX's limits, the
servers lease shares of them; limits and rates hold for the fleet, seen at the real sink."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
import ray

from conftest import make_spec, write_csv
from raymail.driver.campaign import run_campaign
from raymail.shaping.fleet import FleetShaper, fair_shares, start_state_actor
from raymail.shaping.rules import HostLimits, ShapingSettings
from raymail.shaping.shared_state import ShapingState
from raymail.sink import SinkConfig, read_capture, run_sink

MX = "mx.fleet.test"


def test_fair_shares_follow_demand() -> None:
    assert fair_shares(5, {"a": 25, "b": 25}) == {"a": 3, "b": 2}
    assert fair_shares(5, {"a": 1, "b": 25}) == {"a": 1, "b": 4}
    assert fair_shares(5, {"a": 0, "b": 0}) == {"a": 0, "b": 0}
    assert sum(fair_shares(7, {"a": 9, "b": 9, "c": 9}).values()) == 7


def test_a_refusal_one_under_the_limit_cuts_again_within_the_holdoff() -> None:
    """The first cut can land one over the receiver's limit (a connection still opening
    counted as working); the refusals of that extra permit cut it to the receiver's at
    once, while a late one from before the cut (fewer open) still does not cut again."""
    state = ShapingState(ShapingSettings(), 25, {})

    def refused(open_ok: int) -> float:
        report = {
            "open": open_ok,
            "in_use": open_ok,
            "demand": 25,
            "idle": 0,
            "wanted": 0,
            "acked": 25,
            "rate_acked": None,
            "successes": 0,
            "sent": 0,
            "replies": [(421, "too many", True, open_ok)],
            "limit": None,
            "rate": None,
        }
        state.sync("ds0", {MX: report})
        return state.hosts[MX].state.limit

    assert refused(6) == 6  # one over a receiver allowing 5
    assert refused(3) == 6  # within the holdoff: from before the cut, no second cut
    assert refused(5) == 5  # the sixth refused with five open: the receiver's limit


async def _until(check: object, timeout_s: float) -> bool:
    for _ in range(int(timeout_s / 0.05)):  # bounded
        if check():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return False


@pytest.mark.usefixtures("ray_session")
def test_two_servers_share_one_limit_and_rate_and_survive_the_actor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two servers' shapers (in one process, each leasing from the one real actor) never
    hold more than the MX's 5 connections together, both get some; a "rate limited" reply
    to one lowers the rate both send at; with the actor gone both go on from their last
    lease (logged), and come back to the shared state when it is there again."""
    name = f"shaping-test-{time.time_ns()}"
    settings = ShapingSettings(
        state_actor=name, hosts=[HostLimits(mx=r"mx\.fleet\.test", max_connections=5)]
    )
    actor = start_state_actor(name, settings, 50, {})
    caplog.set_level(logging.WARNING, logger="raymail.shaping.fleet")

    async def go() -> dict[str, object]:
        a = FleetShaper(settings, 25, "a", name)
        b = FleetShaper(settings, 25, "b", name)
        peak, served = 0, {"a": 0, "b": 0}

        async def worker(shaper: FleetShaper, me: str, count: int) -> None:
            nonlocal peak
            for _ in range(count):
                await shaper.acquire(MX)
                try:
                    peak = max(peak, a.in_use.get(MX, 0) + b.in_use.get(MX, 0))
                    await shaper.pace(MX)
                    await asyncio.sleep(0.01)
                    shaper.success(MX)
                    served[me] += 1
                finally:
                    shaper.release(MX)

        async def both(count: int) -> float:
            started = time.monotonic()
            await asyncio.gather(
                *(worker(a, "a", count) for _ in range(10)),
                *(worker(b, "b", count) for _ in range(10)),
            )
            return time.monotonic() - started

        await both(10)
        await both(10)  # over a second: the actor has seen the rate they send at
        # a "rate limited" reply to one server: the fleet's rate falls to half of what it saw
        a.reply(MX, 451, "4.7.1 Rate limited, slow down")
        assert await _until(lambda: a.state(MX).rate and b.state(MX).rate, 3.0)
        fleet_rate = b.state(MX).allowed_rate() or 0.0  # the fleet's, mirrored by each
        await both(1)  # shares settle (a few renewals)
        before = dict(served)
        paced_s = await both(3)
        paced = sum(served.values()) - sum(before.values())
        result: dict[str, object] = {
            "peak": peak,
            "served": dict(served),
            "fleet_rate": fleet_rate,
            "paced_rate": paced / paced_s,
            "mirrored": a.state(MX).rate,
        }
        ray.kill(actor, no_restart=True)
        result["fell_back"] = await _until(lambda: not a.shared and not b.shared, 6.0)
        await both(1)  # still served, from the last lease
        result["fallbacks"] = a.fallbacks
        result["gone"] = await _until(lambda: not _named(name), 10.0)
        again = start_state_actor(name, settings, 50, {})  # held: an unreferenced actor ends
        result["back"] = await _until(lambda: a.shared and b.shared, 6.0)
        await both(1)
        for shaper in (a, b):
            await shaper.close()
        ray.kill(again, no_restart=True)
        return result

    got = asyncio.run(go())
    assert got["peak"] == 5, got  # the fleet's 5, not 2 x 5 and not fewer
    served = got["served"]
    assert isinstance(served, dict) and served["a"] > 0 and served["b"] > 0
    fleet_rate, paced_rate = float(got["fleet_rate"]), float(got["paced_rate"])  # type: ignore[arg-type]
    assert 0 < fleet_rate < 300, got  # half of what 5 connections at 10 ms managed
    assert paced_rate <= fleet_rate * 1.3 + 5, got
    assert got["mirrored"] is not None  # what the server saves for the next run
    assert got["fell_back"] and got["fallbacks"] == 1 and got["back"], got
    logged = caplog.text
    assert "does not answer" in logged and "answers again" in logged


def _named(name: str) -> bool:
    try:
        ray.get_actor(name)
    except ValueError:
        return False
    return True


def _max_per_window(times: list[float], window_s: float) -> int:
    """Most messages in any ``window_s`` (sliding over the sorted receive times)."""
    times = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] > window_s:
            start += 1
        most = max(most, end - start + 1)
    return most


@pytest.mark.usefixtures("ray_session")
def test_fleet_of_two_keeps_an_mx_limit_and_rate_at_the_sink(tmp_path: Path) -> None:
    """2 delivery servers x 10 connections to one MX capped at 4 connections and 60
    messages a second (spec ``shaping.hosts``): the sink never holds more than 4 from the
    fleet (2 x 4 = 8 if each server kept its own), and never takes more than the rate."""
    rows = [f"u{i}@d{i % 4}.test,N{i}" for i in range(300)]
    csv = write_csv(tmp_path / "list.csv", "email,name", rows)
    config = SinkConfig.model_validate(
        {"max_connections_per_client": 10, "default": {"latency_ms": 10}}
    )
    shaping = {"hosts": [{"mx": r"127\.0\.0\.1", "max_connections": 4, "max_rate_per_s": 60}]}
    with run_sink(config, capture_dir=tmp_path / "cap") as sink:
        spec = make_spec(
            csv,
            sink.port,
            delivery_servers=2,
            concurrency=10,
            portion_size=20,
            shaping=shaping,
            routing={"probe": False},  # a routing probe's TCP connect counts at the sink too
        )
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
        stats = sink.stats()
    assert report.accepted == 300 and report.failed == 0 and report.deferred == 0
    assert stats.connections_refused == 0
    # The sink counts a connection until it sees the client's close; a server that has
    # closed one (QUIT answered, permit returned) may open the next first, so the sink can
    # see one over the cap for a moment (seen: 5 once in a loaded CI run, 0 refusals).
    # Without a shared state it sees 8.
    assert stats.peak_connections <= 4 + 1, stats
    capture = read_capture(tmp_path / "cap")
    assert capture.height == 300 and capture["rcpt_to"].n_unique() == 300
    times = [t.timestamp() for t in capture["received_at"].to_list()]
    assert _max_per_window(times, 1.0) <= 60 * 1.2 + 6, _max_per_window(times, 1.0)
    assert max(times) - min(times) >= 300 / 60 * 0.75  # the rate, not the connections, paced it
