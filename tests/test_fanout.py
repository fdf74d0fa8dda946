"""Slow receivers: a portion's messages go out over many connections, not one after another.

The sink answers each end of DATA after 0.3 s and counts how many transactions wait for
that answer at once: the count, not the clock, shows whether the portion was spread.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_spec, write_csv
from raymail.driver.campaign import run_campaign
from raymail.sink import SinkConfig, read_capture, run_sink
from raymail.sink.stats import SinkStats

pytestmark = pytest.mark.usefixtures("ray_session")

SLOW = SinkConfig.model_validate({"default": {"latency_ms": 300}})


def _one_portion(tmp_path: Path, count: int = 40, **overrides: object) -> tuple[Path, SinkStats]:
    csv = write_csv(
        tmp_path / "list.csv", "email,name", [f"u{i}@slow.test,N{i}" for i in range(count)]
    )
    with run_sink(SLOW, capture_dir=tmp_path / "cap") as sink:
        spec = make_spec(
            csv,
            sink.port,
            delivery_servers=1,
            concurrency=20,
            portion_size=40,  # ``count`` <= 40: one portion
            routing={"policy": "round_robin"},  # no trial piece cut off: one portion of 40
            **overrides,
        )
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
        stats = sink.stats()
    assert report.accepted == count and report.attempts == 1  # one portion
    per_rcpt = read_capture(tmp_path / "cap").group_by("rcpt_to").len()
    assert per_rcpt.height == count and per_rcpt["len"].max() == 1  # each sent exactly once
    return tmp_path, stats


def test_one_portion_to_a_slow_receiver_is_spread_over_connections(tmp_path: Path) -> None:
    _, stats = _one_portion(tmp_path)
    # One connection would keep exactly one transaction waiting at a time (40 x 0.3 s).
    assert stats.peak_in_data >= 5, stats
    assert stats.peak_connections <= 20, stats


def test_connections_per_mx_cap_the_spread(tmp_path: Path) -> None:
    _, stats = _one_portion(tmp_path, smtp={"max_connections_per_mx": 3})
    assert 2 <= stats.peak_in_data <= 3, stats


def test_a_short_portion_sends_every_message_at_once(tmp_path: Path) -> None:
    """Four messages and room for twenty connections: each goes on a lane of its own, none
    waits behind another's reply (bound in pairs, two would wait: a routing trial took
    2.4 s at 1 s latency instead of 1 s)."""
    _, stats = _one_portion(tmp_path, count=4, shaping={"enabled": False})  # no MX ramp-up
    assert stats.peak_in_data == 4, stats
