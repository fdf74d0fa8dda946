"""The deferral queue: retry.schedule and retry.max_age, the waiting stage, expired.

Against the project's sink on loopback, with delays of seconds: recipients the sink defers
for a while are accepted on a later attempt, those it always defers expire once max_age has
passed since their first attempt, a run left with only later retries ends in the waiting
stage, and a resume before anything is due sends nothing.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from conftest import make_spec, write_csv
from helpers import wait_for
from raymail.cli import app
from raymail.cli.commands import register
from raymail.driver.campaign import resume_campaign, run_campaign
from raymail.errors import SpecError
from raymail.returns.ledger_import import ledger_events
from raymail.run.ledger import read_outcomes
from raymail.run.report import build_report
from raymail.sink import SinkConfig, read_capture, run_sink
from raymail.spec import RetrySettings

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(300)]

LATER = ["later1@a.test", "later2@b.test"]  # deferred at their first 2 RCPTs, then accepted
NEVER = ["never@a.test"]  # always deferred: expires
FINE = [f"u{i}@{'ab'[i % 2]}.test" for i in range(20)]
EVERYONE = LATER + NEVER + FINE


def _sink_config() -> SinkConfig:
    return SinkConfig.model_validate(
        {"addresses": {NEVER[0]: "tempfail"}, "tempfail_first": dict.fromkeys(LATER, 2)}
    )


def _delivered(capture: Path) -> pl.DataFrame:
    return read_capture(capture).group_by("rcpt_to").len()


def test_schedule_delays_and_validation() -> None:
    retry = RetrySettings(schedule=["1s", "2s", "5m"], max_age="3d")
    assert [retry.delay(n) for n in (1, 2, 3, 4, 9)] == [1.0, 2.0, 300.0, 300.0, 300.0]
    assert retry.max_age_s == 3 * 86400 and not retry.gives_up(50)
    default = RetrySettings()  # the deferral queue by default: 2m, 10m, 30m, 1h, then 2h
    assert [default.delay(n) for n in range(1, 8)] == [120, 600, 1800, 3600, 7200, 7200, 7200]
    assert default.deferral_queue and not default.gives_up(999) and default.max_age_s == 259200
    in_run = RetrySettings(schedule=[])  # the documented way back to in-run retries only
    assert not in_run.deferral_queue and in_run.delay(2) == 4.0 and in_run.gives_up(4)
    assert not in_run.gives_up(3)
    with pytest.raises(SpecError, match=r"retry.*schedule.*1.*not a duration"):
        make_spec(Path("r.csv"), 25, retry={"schedule": ["1s", "soon"]})
    with pytest.raises(SpecError, match=r"max_age.*not a duration"):
        make_spec(Path("r.csv"), 25, retry={"schedule": ["1s"], "max_age": "forever"})


@pytest.mark.parametrize("dispatch", ["push", "pull"])
def test_deferred_recipients_retry_in_run_then_expire(tmp_path: Path, dispatch: str) -> None:
    recipients = write_csv(tmp_path / "r.csv", "email,name", [f"{e},N" for e in EVERYONE])
    capture = tmp_path / "cap"
    with run_sink(_sink_config(), capture_dir=capture) as sink:
        spec = make_spec(
            recipients,
            sink.port,
            dispatch=dispatch,
            retry={"schedule": ["1s"], "max_age": "4s", "linger": "1m"},
        )
        started = time.time()
        report = run_campaign(spec, tmp_path / "run")
    assert report.status == "complete"
    assert report.accepted == len(LATER) + len(FINE) and report.expired == len(NEVER)
    assert report.deferred == 0 and report.failed == 0
    delivered = _delivered(capture)
    assert set(delivered["rcpt_to"].to_list()) == set(LATER + FINE)
    assert delivered["len"].max() == 1  # nobody twice
    outcomes = read_outcomes(tmp_path / "run")
    never = outcomes.filter(pl.col("email") == NEVER[0]).sort("attempt")
    assert never["status"].to_list()[-1] == "expired"
    assert "max_age" in never["response"].to_list()[-1]
    tries = never.filter(pl.col("status") == "deferred")
    first = tries["started_at"].min()
    last = tries["started_at"].max()
    assert tries.height >= 4  # about one a second
    assert isinstance(first, datetime) and isinstance(last, datetime)
    assert (last - first).total_seconds() >= 3.5  # a last try at max_age, not before
    assert time.time() - started >= 4.0
    # For the suppression rules an expired recipient is a soft bounce, never a hard one.
    events = [e for e in ledger_events(tmp_path / "run") if e["recipient"] == NEVER[0]]
    assert [(e["category"], e["reason"]) for e in events] == [("transient", "expired")]


def _sleep_until_due(next_due_at: str | None) -> None:
    """Wait until the report's next attempt is due, and half a second more for the other
    waiting recipients (deferred moments apart): a fixed 3.2 s also waited out the linger."""
    assert next_due_at is not None
    due = datetime.fromisoformat(next_due_at).timestamp()
    time.sleep(max(0.0, due - time.time()) + 0.5)


def test_waiting_stage_and_resume(tmp_path: Path) -> None:
    recipients = write_csv(tmp_path / "r.csv", "email,name", [f"{e},N" for e in EVERYONE])
    capture = tmp_path / "cap"
    run_dir = tmp_path / "run"
    retry = {"schedule": ["3s"], "max_age": "1h", "linger": "1s"}
    with run_sink(_sink_config(), capture_dir=capture) as sink:
        spec = make_spec(recipients, sink.port, retry=retry)
        first = run_campaign(spec, run_dir)
        assert first.status == "waiting"
        assert first.waiting == len(LATER) + len(NEVER) and first.next_due_at is not None
        assert first.accepted == len(FINE) and first.deferred == len(LATER) + len(NEVER)
        before = _delivered(capture).height
        early = resume_campaign(run_dir)  # nothing is due yet: nothing sent, nothing started
        assert early.note is not None and "next attempt is due" in early.note
        assert early.status == "waiting" and early.resumes == 0
        assert _delivered(capture).height == before
        register(app)
        said = CliRunner().invoke(app, ["resume", str(run_dir)])  # the command, exit 0
        assert said.exit_code == 0 and "next attempt is due" in said.output, said.output
        shown = CliRunner().invoke(app, ["status", str(run_dir)])
        assert shown.exit_code == 0, shown.output
        assert "waiting" in shown.output and "next attempt due at" in shown.output
        _sleep_until_due(first.next_due_at)
        second = resume_campaign(run_dir)  # due: sends only the waiting recipients
        assert second.status == "waiting"  # later* deferred twice, then due again in 3 s
        _sleep_until_due(second.next_due_at)
        third = resume_campaign(run_dir)
    assert third.accepted == len(LATER) + len(FINE)
    assert third.status == "waiting" and third.waiting == len(NEVER)
    delivered = _delivered(capture)
    assert set(delivered["rcpt_to"].to_list()) == set(LATER + FINE)
    assert delivered["len"].max() == 1
    outcomes = read_outcomes(run_dir)
    fine_tries = outcomes.filter(pl.col("email").is_in(FINE)).height
    assert fine_tries == len(FINE)  # the accepted were never tried again


def test_default_schedule_waits_instead_of_settling_deferred(tmp_path: Path) -> None:
    """With the default retry.schedule a recipient given a 4xx is not dropped as deferred
    after a few quick tries: the run ends waiting, the next try due the schedule's 2 minutes
    after the first (linger lowered so the test does not wait those 2 minutes in-run)."""
    recipients = write_csv(tmp_path / "r.csv", "email,name", [f"{e},N" for e in EVERYONE])
    capture = tmp_path / "cap"
    with run_sink(_sink_config(), capture_dir=capture) as sink:
        spec = make_spec(recipients, sink.port, retry={"linger": "1m"})
        assert spec.retry.schedule == ["2m", "10m", "30m", "1h", "2h"]
        started = time.time()
        report = run_campaign(spec, tmp_path / "run")
        ended = time.time()
        assert resume_campaign(tmp_path / "run").resumes == 0  # not due: nothing sent
    assert report.status == "waiting" and report.waiting == len(LATER) + len(NEVER)
    assert report.accepted == len(FINE) and report.expired == 0
    assert report.next_due_at is not None
    due = datetime.fromisoformat(report.next_due_at).timestamp()
    assert started + 120 <= due <= ended + 120  # 2m after a deferral, not the old seconds
    outcomes = read_outcomes(tmp_path / "run")
    late = outcomes.filter(pl.col("email").is_in(LATER + NEVER))
    assert late.height == len(LATER + NEVER)  # one try each so far, not max_attempts
    assert set(late["status"].to_list()) == {"deferred"}
    assert set(_delivered(capture)["rcpt_to"].to_list()) == set(FINE)


@pytest.mark.slow
def test_scheduler_picks_up_a_waiting_run_when_due(tmp_path: Path) -> None:
    import ray

    from raymail.queue.schedule import schedule_campaign
    from raymail.queue.scheduler import Scheduler
    from raymail.queue.store import DONE, CampaignQueue

    url = f"sqlite:///{tmp_path / 'queue.sqlite'}"
    queue = CampaignQueue(url)
    recipients = write_csv(tmp_path / "r.csv", "email,name", [f"{e},N" for e in EVERYONE])
    capture = tmp_path / "cap"
    config = SinkConfig.model_validate(
        {"addresses": {NEVER[0]: "tempfail"}, "tempfail_first": dict.fromkeys(LATER, 1)}
    )
    with run_sink(config, capture_dir=capture) as sink:
        spec = make_spec(
            recipients,
            sink.port,
            delivery_servers=1,
            retry={"schedule": ["2s"], "max_age": "4s", "linger": "1s"},
        )
        entry = schedule_campaign(queue, spec, run_dir=tmp_path / "run")[0]
        scheduler = Scheduler(
            url, ray_address=str(ray.get_runtime_context().gcs_address), review_s=0.5
        )
        thread = threading.Thread(target=scheduler.run, kwargs={"max_s": 240}, daemon=True)
        thread.start()
        try:
            wait_for("the campaign to be done", lambda: queue.get(entry.id).status == DONE, 240)
        finally:
            scheduler.stop()
            thread.join(timeout=60)
    events = queue.events([entry.id])
    waits = [e for e in events if e.status == "queued" and (e.detail or "").startswith("waiting")]
    assert waits, [(e.status, e.detail) for e in events]  # it waited, queued again when due
    assert queue.get(entry.id).starts >= 2
    report = build_report(tmp_path / "run")
    assert report.status == "complete" and report.expired == len(NEVER)
    assert report.accepted == len(LATER) + len(FINE)
    delivered = _delivered(capture)
    assert set(delivered["rcpt_to"].to_list()) == set(LATER + FINE)
    assert delivered["len"].max() == 1
    assert queue.get(entry.id).counts["expired"] == len(NEVER)
