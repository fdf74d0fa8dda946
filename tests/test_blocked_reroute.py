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
from helpers import wait_for
from helpers.sessions import kill_session
from raymail.cli import app
from raymail.cli.commands import register
from raymail.driver.campaign import resume_campaign, run_campaign
from raymail.driver.reroute import resume_blocked
from raymail.errors import SpecError
from raymail.run.ledger import read_outcomes
from raymail.run.recovery import run_state
from raymail.run.rundir import RECIPIENTS
from raymail.sink import SinkConfig, read_capture, run_sink
from raymail.spec import parse_spec
from test_resume import _captured, _spawn_send, _spec_file

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
    owed = _owed(_spec(csv, 1), tmp_path / "run", {A, B, "127.0.0.4"})
    assert owed.rows.size == 0  # accepted ones are never owed, whatever servers a resume has


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
    spec, run_dir = _spec(csv, 1), tmp_path / "run"
    assert _owed(spec, run_dir, {A, B}).rows.size == 0  # a resume gives them up too
    owed = _owed(spec, run_dir, {A, "127.0.0.4"})  # one server neither refused: owed again
    assert owed.rows.tolist() == list(range(1, n + 1))
    works = [w for _, w in owed.works(iter(range(100, 200)).__next__)]
    assert {w.avoid for w in works} == {frozenset({A, B})}
    assert {w.task.attempt for w in works} == {3} and sum(w.task.size for w in works) == n


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


def _refused(run_dir: Path) -> int:
    """Blocked refusals the killed driver's ledger holds (0 before its first checkpoint)."""
    try:
        return read_outcomes(run_dir).filter(pl.col("status") == "failed").height
    except Exception:  # no ledger part yet
        return 0


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_kill_while_blocked_retries_wait_then_resume_sends_them_via_the_other(
    tmp_path: Path,
) -> None:
    """kill -9 of the driver and its Ray while blocked retries wait out their delay: the
    resumed run owes them again avoiding server A, and B delivers each exactly once."""
    n = 40
    csv = write_csv(tmp_path / "list.csv", "email,name", [f"u{i}@x.test,N{i}" for i in range(n)])
    capture, run_dir = tmp_path / "cap", tmp_path / "run"
    extra = (
        f"source_addresses: ['{A}', '{B}']\nportion_size: 5\nrouting: {{policy: round_robin}}\n"
        "on_failure: {blocked: other_server, blocked_delay_s: 6}\n"  # waits past the kill
    )
    with run_sink(_blocking(A), capture_dir=capture) as sink:
        spec = _spec_file(tmp_path / "c.yaml", sink.port, csv, extra)
        proc = _spawn_send(spec, run_dir)
        try:  # every recipient settled once: accepted via B or its refusal by A ledgered
            wait_for(
                "B's deliveries and A's refusals ledgered",
                lambda: _refused(run_dir) > 0 and _captured(capture) + _refused(run_dir) >= n,
                180,
            )
        finally:
            kill_session(proc.pid)
            proc.wait(timeout=30)
        killed = read_outcomes(run_dir)
        blocked = set(killed.filter(pl.col("status") == "failed")["row"].to_list())
        assert killed.filter(pl.col("row").is_in(blocked))["status"].unique().to_list() == [
            "failed"
        ], "a blocked retry went before the kill; the test proves nothing"
        before = read_capture(capture)
        assert before.height == n - len(blocked)
        report = resume_campaign(run_dir, live_progress=False)
    got = read_capture(capture)
    copies = got.group_by("rcpt_to").len()
    assert copies.height == n and copies["len"].max() == 1  # everyone, exactly once
    assert set(got["peer"].str.split(":").list.first().to_list()) == {B}
    ledger = read_outcomes(run_dir)
    for row in blocked:  # refused by A before the kill, then accepted via B after it
        mine = ledger.filter(pl.col("row") == row).sort("attempt")
        assert mine["status"].to_list() == ["failed", "accepted"], row
        assert mine["source_address"].to_list() == [A, B]
        assert mine["email"].n_unique() == 1 and mine["hop"].to_list() == [0, 0]
    accepted = ledger.filter(pl.col("status") == "accepted").group_by("row").len()
    assert accepted.height == n and accepted["len"].max() == 1
    assert report.status == "complete" and report.accepted == n and report.failed == 0


def _owed(spec: Any, run_dir: Path, servers: set[str]) -> Any:
    """What a resume of ``run_dir`` with ``servers`` would owe as blocked retries."""
    _, final = run_state(run_dir, run_dir / RECIPIENTS, spec.campaign)
    return resume_blocked(spec, run_dir, run_dir / RECIPIENTS, final, servers)
