"""on_failure.blocked: other_server (issue 14): a recipient whose sender a delivery server
was refused for (a policy 5xx) is retried later, same address, through another server of
the run; once every server was refused, it is given up. Never two accepted copies.

Real parts: two delivery servers bound to 127.0.0.2 and 127.0.0.3 (a real local Ray, the
session fixture), the project's sink on loopback refusing mail by client address with a
5xx policy reply, and the run directory's ledger.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import make_spec, write_csv
from raymail.cli import app
from raymail.cli.commands import register
from raymail.driver.campaign import run_campaign
from raymail.errors import SpecError
from raymail.run.ledger import read_outcomes
from raymail.sink import SinkConfig, read_capture, run_sink
from raymail.spec import parse_spec

A, B = "127.0.0.2", "127.0.0.3"
POLICY_REPLY = "550 5.7.1 Service unavailable; client host blocked using policy (sink)"


def _blocking(*clients: str) -> SinkConfig:
    """A sink that refuses every recipient of mail from ``clients`` as a policy block."""
    rule = {"permfail_rate": 1.0, "permfail_reply": POLICY_REPLY}
    return SinkConfig.model_validate({"clients": dict.fromkeys(clients, rule)})


def _spec(csv: Path, port: int, **on_failure: Any) -> Any:
    return make_spec(
        csv,
        port,
        source_addresses=[A, B],
        portion_size=5,
        routing={"policy": "round_robin"},  # both servers get first portions
        on_failure={"blocked": "other_server", "blocked_delay_s": 0.2, **on_failure},
    )


def test_spec_accepts_other_server_and_checks_the_delay() -> None:
    base = {
        "campaign": "c", "sender": "a@b.test", "subject": "s", "text": "t",
        "recipients": "x.csv", "verp_secret": "s3cret",
    }  # fmt: skip
    assert parse_spec(base, "spec").on_failure.blocked == "give_up"
    spec = parse_spec({**base, "on_failure": {"blocked": "other_server"}}, "spec")
    assert spec.on_failure.blocked == "other_server" and spec.on_failure.blocked_delay_s is None
    with pytest.raises(SpecError, match="blocked_delay_s"):
        parse_spec({**base, "on_failure": {"blocked_delay_s": -1}}, "spec")
    with pytest.raises(SpecError, match="blocked"):
        parse_spec({**base, "on_failure": {"blocked": "later"}}, "spec")


@pytest.mark.usefixtures("ray_session")
def test_blocked_at_one_server_is_accepted_via_the_other_once(tmp_path: Path) -> None:
    n = 40
    csv = write_csv(tmp_path / "list.csv", "email,name", [f"u{i}@x.test,N{i}" for i in range(n)])
    capture = tmp_path / "cap"
    with run_sink(_blocking(A), capture_dir=capture) as sink:
        report = run_campaign(_spec(csv, sink.port), tmp_path / "run", live_progress=False)
    got = read_capture(capture)
    copies = got.group_by("rcpt_to").len()
    assert copies.height == n and copies["len"].max() == 1  # everyone, exactly once
    assert set(got["peer"].str.split(":").list.first().to_list()) == {B}
    ledger = read_outcomes(tmp_path / "run")
    blocked = ledger.filter(pl.col("status") == "failed")
    assert blocked.height > 0, "round robin gave server A no portion: nothing was tested"
    assert set(blocked["source_address"].to_list()) == {A}  # which server was refused
    assert all("5.7.1" in r for r in blocked["response"].to_list())
    for row in blocked["row"].to_list():  # each blocked one: then accepted via B, same address
        mine = ledger.filter(pl.col("row") == row).sort("attempt")
        assert mine["status"].to_list() == ["failed", "accepted"], row
        assert mine["source_address"].to_list() == [A, B]
        assert mine["email"].n_unique() == 1 and mine["hop"].to_list() == [0, 0]
        assert mine["attempt"][1] > mine["attempt"][0]
    accepted = ledger.filter(pl.col("status") == "accepted").group_by("row").len()
    assert accepted.height == n and accepted["len"].max() == 1
    assert report.accepted == n and report.failed == 0


@pytest.mark.usefixtures("ray_session")
def test_blocked_by_every_server_gives_up(tmp_path: Path) -> None:
    n = 20
    csv = write_csv(tmp_path / "list.csv", "email,name", [f"u{i}@x.test,N{i}" for i in range(n)])
    capture = tmp_path / "cap"
    with run_sink(_blocking(A, B), capture_dir=capture) as sink:
        report = run_campaign(_spec(csv, sink.port), tmp_path / "run", live_progress=False)
    assert read_capture(capture).height == 0
    ledger = read_outcomes(tmp_path / "run")
    tries = ledger.group_by("row").agg(pl.col("source_address").sort(), pl.len())
    assert tries.height == n
    assert tries["len"].to_list() == [2] * n  # once per server, then given up
    assert all(s.to_list() == [A, B] for s in tries["source_address"])
    assert set(ledger["status"].to_list()) == {"failed"}
    assert report.failed == n and report.accepted == 0


@pytest.mark.usefixtures("ray_session")
def test_blocked_by_every_server_then_the_alternate_in_pull_mode(tmp_path: Path) -> None:
    n = 20
    people = [f"u{i}@x.test,N{i},v{i}@y.test" for i in range(n)]
    csv = write_csv(tmp_path / "list.csv", "email,name,alternates", people)
    rule = {"permfail_rate": 1.0, "permfail_reply": POLICY_REPLY}
    config = SinkConfig.model_validate(  # both servers refused at x.test only
        {"topology": {A: {"x.test": rule}, B: {"x.test": rule}}}
    )
    capture = tmp_path / "cap"
    with run_sink(config, capture_dir=capture) as sink:
        spec = _spec(csv, sink.port, blocked="other_server_then_alternate")
        spec = spec.model_copy(update={"dispatch": "pull"})
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
    got = read_capture(capture)
    assert sorted(got["rcpt_to"].to_list()) == sorted(f"v{i}@y.test" for i in range(n))
    ledger = read_outcomes(tmp_path / "run")
    for row in range(1, n + 1):  # A and B refused the own address, then the alternate took it
        mine = ledger.filter(pl.col("row") == row).sort("attempt")
        assert mine["status"].to_list() == ["failed", "failed", "accepted"], row
        assert sorted(mine["source_address"].to_list()[:2]) == [A, B]
        assert mine["hop"].to_list() == [0, 0, 1]
        assert mine["alternate_of"].to_list()[2] == f"u{row - 1}@x.test"
    assert report.accepted == n and report.accepted_at_alternate == n and report.failed == 0


@pytest.mark.usefixtures("ray_session")
def test_status_prints_the_alternates_line(tmp_path: Path) -> None:
    # u0-u3 hard-bounce at home and go to their first alternate; v1 bounces too, so u1 goes
    # on to its second; the others are accepted at home.
    people = [f"u{i}@x.test,N{i},v{i}@y.test;w{i}@z.test" for i in range(8)]
    csv = write_csv(tmp_path / "list.csv", "email,name,alternates", people)
    bounce = dict.fromkeys([*(f"u{i}@x.test" for i in range(4)), "v1@y.test"], "permfail")
    config = SinkConfig.model_validate({"addresses": bounce})
    run_dir = tmp_path / "run"
    with run_sink(config) as sink:
        report = run_campaign(_spec(csv, sink.port), run_dir, live_progress=False)
    assert report.alternates == {"1": 4, "2": 1} and report.accepted_at_alternate == 4
    register(app)
    shown = CliRunner().invoke(app, ["status", str(run_dir)])
    assert shown.exit_code == 0, shown.output
    line = "alternates: moved to alternate 1: 4, alternate 2: 1; accepted at an alternate: 4"
    assert line in shown.output, shown.output
    plain = write_csv(tmp_path / "plain.csv", "email,name", ["p@x.test,P"])
    with run_sink() as sink:
        run_campaign(_spec(plain, sink.port), tmp_path / "plain", live_progress=False)
    quiet = CliRunner().invoke(app, ["status", str(tmp_path / "plain")])
    assert quiet.exit_code == 0 and "alternates" not in quiet.output, quiet.output
