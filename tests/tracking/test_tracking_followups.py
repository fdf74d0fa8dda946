"""Follow-ups end to end: a real campaign through Ray to the sink, web hits through the
EventWriter, rules selecting from the events, follow-up runs to the same sink; a rule
evaluated twice (or after a crash between selection and sending) sends nobody twice."""

from __future__ import annotations

import email
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import yaml
from tracking_data import CHROME, GMAIL_PROXY
from typer.testing import CliRunner

from conftest import make_spec, write_csv
from raymail.cli import _register, app
from raymail.driver.campaign import run_campaign
from raymail.errors import TrackingError
from raymail.sink import SinkConfig, read_capture, run_sink
from raymail.spec import CampaignSpec
from raymail.tracking import EventWriter, events_root
from raymail.tracking.followups import RuleState, rule_id, run_followups

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]


def _subjects(capture: Path) -> dict[str, list[str]]:
    """Subject -> the recipients that got a message with it (one entry per delivery)."""
    frame = read_capture(capture, with_data=True)
    sent: dict[str, list[str]] = {}
    for rcpt, data in frame.select("rcpt_to", "data").iter_rows():
        subject = str(email.message_from_bytes(data)["Subject"])
        sent.setdefault(subject, []).append(rcpt)
    return {k: sorted(v) for k, v in sent.items()}


def _followup_spec(path: Path, port: int, subject: str) -> Path:
    spec = make_spec(path.parent / "unused.csv", port, campaign=path.stem, subject=subject,
                     text="Hi {{ name }}, have you seen it?\n")  # fmt: skip
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")), encoding="utf-8")
    return path


def _hits(campaign: str) -> list[dict[str, object]]:
    at = datetime.now(UTC)

    def hit(n: int, kind: str, agent: str = CHROME, **more: object) -> dict[str, object]:
        return {"campaign": campaign, "at": at, "kind": kind, "recipient": f"u{n}@a.test",
                "source": "web", "user_agent": agent, **more}  # fmt: skip

    return [
        *(hit(n, "open") for n in range(4)),
        hit(4, "open", GMAIL_PROXY, bot=True, bot_reason="google_image_proxy"),
        hit(1, "click", link="pricing"),
        hit(5, "click", link="pricing"),  # a click without the pixel: opened all the same
        hit(7, "click", link="blog"),
        hit(6, "unsubscribe"),
    ]


def test_rules_select_from_events_and_never_send_twice(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "list.csv", "email,name",
                    [f"u{n}@a.test,Name{n}" for n in range(12)])  # fmt: skip
    capture = tmp_path / "capture"
    with run_sink(SinkConfig(), capture_dir=capture) as sink:
        reminder = _followup_spec(tmp_path / "spring-reminder.yaml", sink.port, "Reminder")
        offer = _followup_spec(tmp_path / "spring-offer.yaml", sink.port, "Offer")
        parent: CampaignSpec = make_spec(csv, sink.port, campaign="spring", followups=[
            {"when": "not_opened", "after": "0s", "send": str(reminder)},
            {"name": "pricing-offer", "when": "clicked", "link": "pricing", "after": "3d",
             "send": str(offer)},
        ])  # fmt: skip
        parent_run = tmp_path / "run"
        assert run_campaign(parent, parent_run, live_progress=False).accepted == 12
        with EventWriter(events_root()) as writer:
            writer.add(_hits("spring"))

        first = run_followups(parent, parent_run)
        # 12 delivered - opened {0, 1, 2, 3} - clicked {5, 7} - unsubscribed {6}; 4's open was
        # Gmail's proxy. The offer's rule is not due yet (3 days after delivery).
        assert [(r.selected, r.resumed) for r in first] == [(5, False)]
        report = first[0].report
        assert report is not None and report.accepted == 5
        assert run_followups(parent, parent_run) == []  # evaluated again: nobody new

        # A crash after the offer's selection was recorded and before it was sent: the next
        # evaluation resumes that batch and selects nobody again.
        later = datetime.now(UTC) + timedelta(days=4)
        state = RuleState("spring", parent.followups[1])
        state.record(pl.DataFrame({"email": ["u1@a.test", "u5@a.test"], "name": ["N1", "N5"]}))
        resumed = run_followups(parent, parent_run, now=later)
        assert [(r.rule, r.selected, r.resumed) for r in resumed] == [("pricing-offer", 2, True)]
        assert run_followups(parent, parent_run, now=later) == []

    sent = _subjects(capture)
    assert sent["Reminder"] == sorted(f"u{n}@a.test" for n in (4, 8, 9, 10, 11))
    assert sent["Offer"] == ["u1@a.test", "u5@a.test"]
    assert len(sent["Hello Name0"]) == 1  # the parent, once per recipient
    reminder_run = Path(first[0].run_dir)
    assert json.loads((reminder_run / "report.json").read_text())["campaign"] == "spring-reminder"


def test_cli_and_bad_input(tmp_path: Path) -> None:
    offer = tmp_path / "offer.yaml"
    offer.write_text("campaign: offer\n")
    spec = make_spec(tmp_path / "list.csv", 25, followups=[
        {"when": "not_opened", "send": str(offer)}])  # fmt: skip
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    _register()
    runner = CliRunner()
    out = runner.invoke(app, ["followups", "run", str(spec_file), "--run-dir", str(tmp_path)])
    assert out.exit_code == 2 and "not a run directory" in out.stderr
    out = runner.invoke(app, ["followups", "run", str(spec_file), "--run-dir", str(tmp_path),
                              "--rule", "nope"])  # fmt: skip
    assert (
        out.exit_code == 2
        and f"no follow-up rule 'nope' (rules: {rule_id(spec.followups[0])})" in out.stderr
    )
    out = runner.invoke(app, ["followups", "show", str(spec_file)])
    assert out.exit_code == 0 and "no batch" in out.stdout
    data = yaml.safe_load(spec_file.read_text())
    data["followups"] = [{"when": "not_opened", "after": "3 days", "send": "x.yaml"}]
    spec_file.write_text(yaml.safe_dump(data))
    out = runner.invoke(app, ["followups", "show", str(spec_file)])
    assert out.exit_code == 2 and "followups.0.after" in out.stderr
    with pytest.raises(TrackingError, match="no 'followups' rules"):
        run_followups(make_spec(tmp_path / "l.csv", 25), tmp_path)
