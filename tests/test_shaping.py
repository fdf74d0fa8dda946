"""Shaping: rules as data, AIMD per MX host, and permits in the real pool to the real sink."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from conftest import make_spec, write_csv
from raymail.delivery.pool import ConnectionPool
from raymail.delivery.smtp_client import SmtpConnection, SmtpRefused
from raymail.driver.campaign import run_campaign
from raymail.driver.progress import backoff_text
from raymail.shaping import HostState, ShapingSettings, match_rule, rules_of
from raymail.shaping.limiter import LocalShaper
from raymail.shaping.persist import load_limits
from raymail.sink import SinkConfig, read_capture, run_sink


def test_builtin_rules_name_the_usual_slow_down_replies() -> None:
    rules = rules_of(ShapingSettings())
    cases = {
        (421, "4.7.0 Too many connections from your IP"): "too_many_connections",
        (451, "4.7.1 Rate limited, slow down"): "rate_limited",
        (421, "4.7.0 [TSS04] Messages from 1.2.3.4 temporarily deferred"): "yahoo_tss04",
        (451, "4.7.500 Server busy. Please try again later."): "outlook_server_busy",
        (421, "4.7.28 Our system has detected an unusual rate of mail"): "gmail_unusual_rate",
        (421, "Service not available, try again later"): "try_again_later",
    }
    for (code, text), name in cases.items():
        rule = match_rule(rules, code, text)
        assert rule is not None and rule.name == name, (code, text)
    assert match_rule(rules, 550, "5.1.1 User unknown") is None


def test_spec_rules_replace_and_extend_and_typos_fail() -> None:
    settings = ShapingSettings.model_validate(
        {
            "rules": [
                {"name": "yahoo_tss04", "text": "TSS04", "action": "suspend", "suspend_s": 5},
                {"name": "mine", "codes": [452], "text": "go away", "action": "lower_rate"},
            ]
        }
    )
    rules = rules_of(settings)
    assert [r.name for r in rules].count("yahoo_tss04") == 1
    assert match_rule(rules, 421, "TSS04").suspend_s == 5  # type: ignore[union-attr]
    assert match_rule(rules, 452, "please go away").name == "mine"  # type: ignore[union-attr]
    with pytest.raises(ValidationError):
        ShapingSettings.model_validate({"rules": [{"name": "x", "text": "(", "action": "suspend"}]})
    with pytest.raises(ValidationError):
        ShapingSettings.model_validate({"rulez": []})


def test_aimd_settles_at_the_receivers_limit() -> None:
    """A receiver allowing 5: refusals above 5 bring the limit to 5, increases probe 6."""
    settings = ShapingSettings(increase_every=10)
    host = HostState("mx.test", 50.0, 50)
    now = 0.0
    refusals = 0
    for _ in range(2000):
        now += 0.01
        if int(host.limit) > 5:
            refusals += 1
            host.on_reply(settings, rules_of(settings), 421, "4.4.5 closing", 5, now, signal=True)
        else:
            host.on_success(settings, 1, now)
    assert int(host.limit) in (5, 6)
    assert refusals < 10  # probing the ceiling slows down each time it is refused


def test_suspend_rule_and_the_way_back() -> None:
    settings = ShapingSettings(increase_every=1)
    host = HostState("mx.test", 10.0, 10)
    rule = host.on_reply(settings, rules_of(settings), 421, "[TSS04] deferred", 3, 100.0)
    assert rule is not None and rule.action == "suspend"
    assert host.suspended_until == 400.0 and host.in_backoff(200.0)
    assert "TSS04" in host.reason
    host.on_success(settings, 5, 200.0)  # still quiet: no change
    assert host.limit == 10.0


def test_refused_connections_lower_the_limit_through_the_pool() -> None:
    """The real sink refusing beyond 3 sessions (max_sessions answers 4xx at RCPT) stands in
    for a receiver's connection limit: the shaper, fed the 421-like refusals, ends near 3."""
    config = SinkConfig(default={"latency_ms": 20})
    with run_sink(config) as sink:

        async def go() -> tuple[int, int]:
            async def opener(host: str, port: int) -> SmtpConnection:
                return await SmtpConnection.open(host, port, helo_name="client.test")

            shaper = LocalShaper(ShapingSettings(increase_every=20), start_connections=12)
            pool = ConnectionPool(12, opener, limiter=shaper)
            peak = 0

            async def one(i: int) -> None:
                nonlocal peak
                for _ in range(20):
                    conn, _ = await pool.acquire("127.0.0.1", sink.port, "mx.test")
                    try:
                        peak = max(peak, shaper.in_use["mx.test"])
                        if shaper.in_use["mx.test"] > 3:  # the receiver's 421 beyond 3
                            shaper.reply("mx.test", 421, "4.7.0 Too many connections", signal=True)
                            conn.broken = True
                            continue
                        await conn.send("s@s.test", [f"r{i}@d.test"], b"Subject: x\r\n\r\nx\r\n")
                        shaper.success("mx.test")
                        return
                    finally:
                        await pool.release(conn)

            await asyncio.gather(*(one(i) for i in range(40)))
            await pool.close()
            return int(shaper.state("mx.test").limit), peak

        limit, peak = asyncio.run(go())
        assert 3 <= limit <= 4
        assert peak == 12  # it started wide open
        assert sink.stats().accepted == 40


def test_sink_answers_421_beyond_max_connections_per_client() -> None:
    config = SinkConfig(max_connections_per_client=2)
    with run_sink(config) as sink:

        async def go() -> tuple[int, int]:
            kept = [
                await SmtpConnection.open("127.0.0.1", sink.port, helo_name="c.test")
                for _ in range(2)
            ]
            with pytest.raises(SmtpRefused) as refused:
                await SmtpConnection.open("127.0.0.1", sink.port, helo_name="c.test")
            code = refused.value.reply.code
            await kept[0].quit()
            await asyncio.sleep(0.1)
            again = await SmtpConnection.open("127.0.0.1", sink.port, helo_name="c.test")
            for conn in (kept[1], again):
                await conn.quit()
            return code, sink.stats().connections_refused

        code, refused_count = asyncio.run(go())
        assert code == 421 and refused_count == 1


@pytest.mark.usefixtures("ray_session")
def test_campaign_at_2x25_against_a_receiver_allowing_5(tmp_path: Path) -> None:
    """Real Ray, the real sink refusing connections beyond 5 with 421: nobody fails, each
    recipient gets one copy, and the receiver never held more than its 5 plus refusals."""
    rows = [f"u{i}@d{i % 7}.test,N{i}" for i in range(800)]
    csv = write_csv(tmp_path / "list.csv", "email,name", rows)
    config = SinkConfig.model_validate(
        {"max_connections_per_client": 5, "default": {"latency_ms": 5}}
    )
    with run_sink(config, capture_dir=tmp_path / "cap") as sink:
        spec = make_spec(csv, sink.port, delivery_servers=2, concurrency=25, portion_size=50)
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
        stats = sink.stats()
    assert report.failed == 0 and report.deferred == 0
    assert report.accepted == 800
    per_rcpt = read_capture(tmp_path / "cap").group_by("rcpt_to").len()
    assert per_rcpt.height == 800 and per_rcpt["len"].max() == 1
    assert stats.connections_refused > 0  # it did start too wide
    # shaped: far fewer refusals than one per portion attempt at 50 connections
    assert stats.connections_refused < 200, stats
    # the report names the MX in backoff, the reply that put it there and the next try
    (entry,) = report.backoff
    assert entry["reason"].startswith("421") and entry["connections"] <= 6
    assert "next try" in backoff_text(entry) and "backoff" in backoff_text(entry)


@pytest.mark.usefixtures("ray_session")
def test_learned_limits_carry_over_to_the_next_run(tmp_path: Path) -> None:
    """A run keeps the limit it learned beside the routing table (in the driver's
    $RAYMAIL_HOME); the next run's servers start each MX from it, not from 25."""
    csv = write_csv(tmp_path / "list.csv", "email,name", [f"u{i}@d.test,N{i}" for i in range(400)])
    config = SinkConfig.model_validate(
        {"max_connections_per_client": 4, "default": {"latency_ms": 5}}
    )
    with run_sink(config) as sink:
        spec = make_spec(csv, sink.port, delivery_servers=1, concurrency=25, portion_size=20)
        report = run_campaign(spec, tmp_path / "first", live_progress=False)
        assert sink.stats().connections_refused > 0
    assert report.accepted == 400 and report.failed == 0
    folder = Path(os.environ["RAYMAIL_HOME"]) / "routing"
    (entry,) = json.loads((folder / "shaping.json").read_text())["hosts"].values()
    assert entry["connections"] in (3, 4)  # a connection still closing counts at the sink
    shaper = LocalShaper(ShapingSettings(), 25, load_limits(folder))
    assert shaper.state("127.0.0.1").limit == entry["connections"]
    assert LocalShaper(ShapingSettings(), 25, {}).state("127.0.0.1").limit == 25
