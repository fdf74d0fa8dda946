"""The change log and its applier without the web in front: durability and idempotence."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from raymail.cli import _register
from raymail.cli import app as cli_app
from raymail.lists.apply import Applier
from raymail.lists.changelog import ChangeLog, SegmentWriter, changes_dir
from raymail.lists.store import ListStore, Member
from raymail.returns.suppression import SuppressionList

_register()


class NoRuns:
    """A resolver for records that name their address (ingest, confirm): no run needed."""

    def recipient(self, campaign: str, tag: str | None) -> str | None:
        return None

    def list_of(self, campaign: str) -> str | None:
        return "news" if campaign == "spring" else None


def _record(kind: str, n: int, **fields: Any) -> dict[str, Any]:
    at = datetime(2026, 3, 1, 12, 0, n % 60, tzinfo=UTC).isoformat()
    return {"id": f"{kind}-{n}", "kind": kind, "at": at, "ua": None, "ip": "127.0.0.1", **fields}


def _complaint(n: int, email: str) -> dict[str, Any]:
    event = {"kind": "complaint", "campaign": "spring", "recipient": email}
    return _record("event", n, sender="esp", event=event)


def _applier(home: Path) -> Applier:
    return Applier(
        home, resolver=NoRuns(), suppression=home / "supp.parquet", events=home / "events"
    )


def test_group_commit_shares_syncs_and_every_line_reads_back(tmp_path: Path) -> None:
    writer = SegmentWriter(changes_dir(tmp_path))

    async def many() -> None:
        await asyncio.gather(*(writer.append(_record("open", n, campaign="c")) for n in range(500)))

    asyncio.run(many())
    changes, damage = ChangeLog(changes_dir(tmp_path)).read({})
    assert not damage
    assert sorted(c.record["id"] for c in changes) == sorted(f"open-{n}" for n in range(500))
    assert writer.syncs < 500  # concurrent appends shared syncs


def test_torn_tail_is_skipped_and_damage_is_reported(tmp_path: Path) -> None:
    writer = SegmentWriter(changes_dir(tmp_path))
    writer.append_many([_record("open", n, campaign="c") for n in range(3)])
    segment = ChangeLog(changes_dir(tmp_path)).segments()[0]
    lines = segment.read_bytes().splitlines(keepends=True)
    broken = lines[1].replace(b'"open-1"', b'"open-X"')  # checksum no longer matches
    segment.write_bytes(lines[0] + broken + lines[2] + b'0000abcd {"id": "torn')
    changes, damage = ChangeLog(changes_dir(tmp_path)).read({})
    assert [c.record.get("id") for c in changes] == ["open-0", None, "open-2"]
    assert len(damage) == 1 and damage[0].offset == len(lines[0])
    # The torn tail is not consumed: a live writer may still be completing it.
    assert changes[-1].end == len(lines[0]) + len(broken) + len(lines[2])


def test_applying_twice_changes_nothing(tmp_path: Path) -> None:
    home = tmp_path
    writer = SegmentWriter(changes_dir(home))
    records = [
        _record("confirm", 1, list="news", email="ann@a.test", fields={"name": "Ann"}),
        _record("confirm", 2, list="news", email="bob@b.test", fields={}),
        _complaint(3, "Cy@C.test"),
        _complaint(4, "cy@c.test"),  # the same complaint reported twice
        _record("confirm", 5, list="news", email="ann@a.test", fields={"name": "Ann"}),
    ]
    writer.append_many(records)
    applier = _applier(home)
    state_before = applier.state_path.read_bytes() if applier.state_path.exists() else None
    first = applier.apply_once()
    assert first.changes == 5 and first.suppressed == 1 and first.list_versions == {"news": 1}
    store = ListStore(home)
    members = {r["email"]: r["status"] for r in store.read("news").to_pylist()}
    assert members == {"ann@a.test": "subscribed", "bob@b.test": "subscribed"}
    suppression = SuppressionList(home / "supp.parquet")
    supp_bytes = (home / "supp.parquet").read_bytes()
    events_before = sorted(p.name for p in (home / "events").rglob("*.parquet"))
    # A crash after the writes but before the offsets were saved: the same pass again.
    assert state_before is None
    applier.state_path.unlink()
    again = _applier(home).apply_once()
    assert again.changes == 5
    assert again.suppressed == 0 and again.list_versions == {}
    assert (home / "supp.parquet").read_bytes() == supp_bytes
    assert store.versions("news") == [1]
    assert suppression.active()["email"].to_list() == ["cy@c.test"]
    # Events are written again in that case, each with its change id to tell them apart.
    events_after = sorted(p.name for p in (home / "events").rglob("*.parquet"))
    assert len(events_after) > len(events_before)
    parts = (home / "events").rglob("*.parquet")
    details = [d for part in parts for d in pq.read_table(part)["detail"].to_pylist()]
    assert {json.loads(d)["change"] for d in details} == {r["id"] for r in records}
    assert _applier(home).apply_once().changes == 0


def test_unsubscribe_of_a_member_makes_one_new_version(tmp_path: Path) -> None:
    store = ListStore(tmp_path)
    now = datetime.now(UTC)
    assert store.upsert("news", [Member("a@x.test", "subscribed", {"n": "1"}, now, "c1")]) == 1
    assert store.upsert("news", [Member("a@x.test", "subscribed", {"n": "1"}, now, "c2")]) is None
    assert store.upsert("news", [Member("z@x.test", "unsubscribed", {}, now, "c3")]) is None
    assert store.upsert("news", [Member("a@x.test", "unsubscribed", {}, now, "c4")]) == 2
    rows = store.read("news").to_pylist()
    assert [(r["email"], r["status"], r["fields"]) for r in rows] == [
        ("a@x.test", "unsubscribed", '{"n": "1"}')
    ]
    assert store.read("news", 1).to_pylist()[0]["status"] == "subscribed"
    assert [v.version for v in store.history("news")] == [1, 2]


def test_lists_cli_show_history_and_bad_version(tmp_path: Path) -> None:
    store = ListStore(tmp_path)
    store.upsert("news", [Member("a@x.test", "subscribed", {}, datetime.now(UTC), "c1")])
    runner = CliRunner()
    shown = runner.invoke(cli_app, ["lists", "show", "news", "--home", str(tmp_path), "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["members"][0]["email"] == "a@x.test"
    every = runner.invoke(cli_app, ["lists", "show", "--home", str(tmp_path)])
    assert "news: 1 members, 1 versions" in every.output
    table = tmp_path / "recipients.parquet"
    store.upsert("news", [Member("b@x.test", "subscribed", {"name": "B"}, datetime.now(UTC), "c2")])
    store.upsert("news", [Member("a@x.test", "unsubscribed", {}, datetime.now(UTC), "c3")])
    written = runner.invoke(
        cli_app, ["lists", "show", "news", "--home", str(tmp_path), "--to", str(table)]
    )
    assert written.exit_code == 0, written.output
    assert pq.read_table(table).to_pylist() == [{"email": "b@x.test", "name": "B"}]
    history = runner.invoke(cli_app, ["lists", "history", "news", "--home", str(tmp_path)])
    assert history.exit_code == 0 and history.output.startswith("v1 ")
    assert len(history.output.splitlines()) == 3
    missing = runner.invoke(
        cli_app, ["lists", "show", "news", "--version", "7", "--home", str(tmp_path)]
    )
    assert missing.exit_code != 0 and "has no version 7" in missing.output
    bad = runner.invoke(cli_app, ["lists", "show", "../etc", "--home", str(tmp_path)])
    assert bad.exit_code != 0 and "list id" in bad.output


@pytest.mark.parametrize("kind", ["bogus", "unsubscribe"])
def test_records_that_cannot_apply_go_to_rejects(tmp_path: Path, kind: str) -> None:
    SegmentWriter(changes_dir(tmp_path)).append_many(
        [_record(kind, 1, campaign="spring", rtag="00" * 8)]
    )
    result = _applier(tmp_path).apply_once()
    assert result.rejected == 1
    reject = json.loads((tmp_path / "web" / "rejects.jsonl").read_text().splitlines()[0])
    assert reject["record"]["id"] == f"{kind}-1" and reject["reason"]
