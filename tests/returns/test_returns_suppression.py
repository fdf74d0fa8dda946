"""Suppression: the rules over events (hard, soft within a window, complaints, removals),
the list file, the driver's filter, and ``raymail suppression``."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from raymail.cli import _register, app
from raymail.errors import ReturnsError
from raymail.returns.process import ReturnsProcessor
from raymail.returns.store import ReturnsStore
from raymail.returns.suppression import SuppressionList, apply_suppression
from raymail.schema import OUTCOME_SCHEMA
from raymail.spec import ReturnsSettings, parse_spec
from raymail.status import SUPPRESSED

T0 = datetime(2024, 3, 1, tzinfo=UTC)
_n = 0


def _event(recipient: str, category: str, day: float, reason: str = "r") -> dict[str, Any]:
    global _n
    _n += 1
    return {
        "event_id": f"test-{_n}",
        "time": T0 + timedelta(days=day),
        "classified_at": datetime.now(UTC),
        "campaign": "c",
        "recipient": recipient,
        "domain": recipient.rpartition("@")[2],
        "category": category,
        "reason": reason,
        "status": None,
        "smtp_code": None,
        "diagnostic": "",
        "source": "test",
        "archive_ref": f"seg-test:{_n}",
        "envelope_rcpt": None,
        "why": "",
    }


def _processor(tmp_path: Path, **rules: Any) -> ReturnsProcessor:
    settings = ReturnsSettings(home=str(tmp_path / "home"), rules=rules)
    return ReturnsProcessor(ReturnsStore(settings))


def _record(processor: ReturnsProcessor, *events: dict[str, Any]) -> list[str]:
    processor.store.events.add(list(events))
    return processor.flush().suppressed


def _active(processor: ReturnsProcessor) -> set[str]:
    return set(processor.store.suppression.active()["email"].to_list())


def test_hard_bounce_suppresses_at_once_by_default(tmp_path: Path) -> None:
    p = _processor(tmp_path)
    assert _record(p, _event("a@x.test", "hard_bounce_address", 0, "userunknown")) == ["a@x.test"]
    assert _record(p, _event("d@gone.test", "hard_bounce_domain", 0)) == ["d@gone.test"]
    row = p.store.suppression.active().filter(email="a@x.test").row(0, named=True)
    assert row["category"] == "hard_bounce" and "userunknown" in row["detail"]
    assert row["campaign"] == "c" and row["changed_by"] == "rules"
    # already suppressed: a second bounce changes nothing
    assert _record(p, _event("a@x.test", "hard_bounce_address", 1)) == []


def test_hard_bounce_threshold_is_configurable(tmp_path: Path) -> None:
    p = _processor(tmp_path, hard_bounce_after=2)
    assert _record(p, _event("a@x.test", "hard_bounce_address", 0)) == []
    assert _record(p, _event("a@x.test", "hard_bounce_address", 90)) == ["a@x.test"]


def test_soft_bounces_count_only_within_the_window(tmp_path: Path) -> None:
    p = _processor(tmp_path)  # default: 3 within 30 days
    # three soft bounces spread over 40 days: never three within 30
    assert _record(p, _event("s@x.test", "mailbox_full", 0)) == []
    assert _record(p, _event("s@x.test", "transient", 20)) == []
    assert _record(p, _event("s@x.test", "mailbox_full", 40)) == []
    assert "s@x.test" not in _active(p)
    # a fourth at day 45: days 20, 40, 45 are within 30 days
    assert _record(p, _event("s@x.test", "mailbox_full", 45)) == ["s@x.test"]
    row = p.store.suppression.active().row(0, named=True)
    assert row["category"] == "soft_bounce" and row["detail"].startswith("3 soft bounces")


def test_soft_window_and_count_from_settings(tmp_path: Path) -> None:
    p = _processor(tmp_path, soft_bounce_after=2, soft_bounce_window_days=7)
    assert _record(p, _event("s@x.test", "transient", 0), _event("t@x.test", "transient", 0)) == []
    assert _record(p, _event("s@x.test", "transient", 8)) == []  # 8 days apart
    assert _record(p, _event("t@x.test", "mailbox_full", 6)) == ["t@x.test"]


def test_complaints_and_remove_requests_suppress_at_once(tmp_path: Path) -> None:
    p = _processor(tmp_path)
    got = _record(
        p,
        _event("angry@x.test", "complaint", 0, "feedback"),
        _event("bye@x.test", "remove_request", 0, "unsubscribe"),
        _event("away@x.test", "auto_reply", 0, "vacation"),
        _event("hi@x.test", "human_reply", 0, "reply"),
        _event("us@x.test", "blocked", 0, "blocked"),
    )
    assert sorted(got) == ["angry@x.test", "bye@x.test"]
    categories = dict(p.store.suppression.active().select("email", "category").iter_rows())
    assert categories == {"angry@x.test": "complaint", "bye@x.test": "remove_request"}


def test_complaint_rule_can_be_switched_off(tmp_path: Path) -> None:
    p = _processor(tmp_path, complaints=False)
    assert _record(p, _event("angry@x.test", "complaint", 0)) == []


def test_removed_by_hand_counts_only_later_returns(tmp_path: Path) -> None:
    p = _processor(tmp_path)
    _record(p, _event("a@x.test", "hard_bounce_address", -1))  # before the removal
    assert p.store.suppression.remove(["A@X.test"]) == 1
    assert "a@x.test" not in _active(p)
    # an old soft bounce arriving now does not resurrect it...
    assert _record(p, _event("a@x.test", "mailbox_full", -1)) == []
    # ...a new hard bounce after the removal does
    later = _event("a@x.test", "hard_bounce_address", 0)
    later["time"] = datetime.now(UTC) + timedelta(seconds=1)
    assert _record(p, later) == ["a@x.test"]


def test_list_add_remove_and_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    suppression = SuppressionList(path)
    assert suppression.active().height == 0
    assert suppression.add(["X@Y.test", "x@y.test", "z@y.test"], detail="asked by phone") == 2
    assert suppression.add(["z@y.test"]) == 0
    assert suppression.remove(["z@y.test", "nobody@y.test"]) == 1
    assert suppression.active()["email"].to_list() == ["x@y.test"]
    assert suppression.read().height == 2  # the removal is remembered
    path.write_bytes(b"not parquet")
    with pytest.raises(ReturnsError, match=r"s\.parquet: suppression list unreadable"):
        suppression.active()


def _spec(tmp_path: Path, returns: dict[str, Any] | None) -> Any:
    data: dict[str, Any] = {
        "campaign": "c9",
        "sender": "news@shop.test",
        "subject": "s",
        "text": "t",
        "recipients": "r.csv",
    }
    if returns is not None:
        data["returns"] = returns
    return parse_spec(data)


def _table(emails: list[str]) -> pa.Table:
    return pa.table(
        {
            "row": list(range(1, len(emails) + 1)),
            "email": emails,
            "domain": [e.rpartition("@")[2] for e in emails],
            "name": ["N"] * len(emails),
        }
    )


def test_apply_suppression_splits_the_table(tmp_path: Path) -> None:
    path = tmp_path / "list.parquet"
    SuppressionList(path).add(["gone@a.test", "bye@b.test"], detail="test")
    spec = _spec(tmp_path, {"suppression_path": str(path)})
    table = _table(["ok@a.test", "Gone@a.test", "bye@b.test", "ok@b.test"])
    send, outcomes = apply_suppression(table, spec)
    assert send.column("email").to_pylist() == ["ok@a.test", "ok@b.test"]
    assert send.schema == table.schema
    assert outcomes.schema == OUTCOME_SCHEMA
    rows = {r["row"]: r for r in outcomes.to_pylist()}
    assert set(rows) == {2, 3}
    assert {r["status"] for r in rows.values()} == {SUPPRESSED}
    assert rows[2]["email"] == "Gone@a.test" and rows[2]["campaign"] == "c9"
    assert rows[2]["response"] == "suppressed: manual (test)"
    # no returns section: no list is consulted
    send, outcomes = apply_suppression(table, _spec(tmp_path, None))
    assert send.num_rows == 4 and outcomes.num_rows == 0


def test_suppression_cli(tmp_path: Path) -> None:
    _register()
    path = str(tmp_path / "cli.parquet")
    runner = CliRunner()
    added = runner.invoke(app, ["suppression", "add", "a@x.test", "b@x.test", "--path", path])
    assert added.exit_code == 0, added.output
    assert json.loads(added.output)["added"] == 2
    removed = runner.invoke(app, ["suppression", "remove", "b@x.test", "--path", path])
    assert json.loads(removed.output)["removed"] == 1
    listed = runner.invoke(app, ["suppression", "list", "--json", "--path", path])
    assert [a["email"] for a in json.loads(listed.output)["addresses"]] == ["a@x.test"]
    table = runner.invoke(app, ["suppression", "list", "--all", "--path", path])
    assert table.exit_code == 0 and "b@x.test" in table.output
    # settings from a campaign spec's returns section ($RAYMAIL_HOME is the default home)
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "campaign: c\nsender: n@s.test\nsubject: s\ntext: t\nrecipients: r.csv\n"
        f"returns: {{suppression_path: {path}}}\n"
    )
    listed = runner.invoke(app, ["suppression", "list", "--json", "-C", str(spec)])
    assert json.loads(listed.output)["path"] == path
    bad = runner.invoke(app, ["suppression", "list", "-C", str(tmp_path / "nope.yaml")])
    assert bad.exit_code == 2 and "nope.yaml" in bad.output


def test_many_small_event_parts_are_compacted(tmp_path: Path) -> None:
    p = _processor(tmp_path)
    for i in range(40):  # a server flushing every few seconds
        _record(p, _event(f"u{i}@x.test", "auto_reply", 0))
    parts = list(p.store.events.folder.glob("part-*.parquet"))
    assert 1 <= len(parts) <= 10
    assert p.store.events.read().height == 40
    assert p.store.events.read(current=False)["event_id"].n_unique() == 40
