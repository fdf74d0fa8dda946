"""The campaign queue on real SQLite and a real PostgreSQL: schema, leases, statuses, zones."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from helpers.pg_server import postgres_server
from raymail.errors import QueueError
from raymail.queue.db import Database
from raymail.queue.migrations import LATEST, migrate, schema_version
from raymail.queue.schedule import schedule_campaign
from raymail.queue.store import (
    CANCELLED,
    DONE,
    PAUSED,
    QUEUED,
    RUNNING,
    CampaignQueue,
)
from raymail.queue.when import due_at, next_wall_time
from raymail.queue.zones import split_by_zone
from raymail.spec import CampaignSpec, parse_spec


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'queue.sqlite'}"
    url: str = request.getfixturevalue("pg_url")
    db = Database(url)  # a clean database for each test
    for table in ("webhook_outbox", "status_events", "leases", "entries", "schema_version"):
        db.execute(f"DROP TABLE IF EXISTS {table}")
    db.close()
    return url


def _spec(name: str = "c1", **extra: object) -> CampaignSpec:
    data = {
        "campaign": name,
        "sender": "a@sender.test",
        "subject": "s",
        "text": "t",
        "recipients": "/nonexistent/list.csv",
        **extra,
    }
    return parse_spec(data, "test")


def test_migrations_are_versioned_and_idempotent(queue_url: str) -> None:
    db = Database(queue_url)
    assert schema_version(db) == 0
    assert migrate(db) == LATEST
    assert migrate(db) == LATEST  # a second time changes nothing
    assert schema_version(db) == LATEST
    assert db.query("SELECT COUNT(*) FROM schema_version")[0][0] == LATEST


def test_default_url_is_sqlite_in_raymail_home(
    raymail_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAYMAIL_QUEUE_URL", raising=False)
    queue = CampaignQueue()
    assert queue.db.dialect == "sqlite"
    assert queue.db.path == raymail_home / "queue.sqlite" and queue.db.path.exists()
    with pytest.raises(QueueError, match="sqlite:///PATH or postgresql"):
        Database("mysql://x")


def test_due_take_and_finish(queue_url: str) -> None:
    queue = CampaignQueue(queue_url)
    now = time.time()
    later = queue.schedule(_spec("later"), due_at=now + 3600)
    low = queue.schedule(_spec("low"), due_at=now - 5, priority=50)
    urgent = queue.schedule(_spec("urgent"), due_at=now - 1, priority=0)
    assert [e.id for e in queue.due()] == [urgent.id, low.id]  # priority, then due time
    taken = queue.take(urgent.id, "a", 30)
    assert taken is not None and taken.status == RUNNING and taken.starts == 1
    assert queue.take(urgent.id, "b", 30) is None  # a live lease: not yours
    assert queue.take(later.id, "b", 30) is None  # not due yet
    assert [e.id for e in queue.due()] == [low.id]  # running with a live lease is not due
    assert queue.finish(urgent.id, "a", DONE, {"accepted": 3}, "run complete")
    done = queue.get(urgent.id)
    assert done.status == DONE and done.counts == {"accepted": 3} and done.finished_at
    assert queue.lease_holder(urgent.id) is None
    statuses = [e.status for e in queue.events([urgent.id])]
    assert statuses == [QUEUED, DONE]


def test_expired_lease_is_taken_over_and_the_old_holder_loses_it(queue_url: str) -> None:
    queue = CampaignQueue(queue_url)
    entry = queue.schedule(_spec(), due_at=time.time() - 1)
    assert queue.take(entry.id, "killed", 0.3) is not None
    assert queue.renew(entry.id, "killed", 0.3)
    assert queue.due() == []
    time.sleep(0.5)  # the holder was killed: its lease runs out
    assert [e.id for e in queue.due()] == [entry.id]  # running without a lease: resume it
    resumed = queue.take(entry.id, "next", 30)
    assert resumed is not None and resumed.starts == 2
    assert not queue.renew(entry.id, "killed", 30)  # the old holder cannot take it back
    assert not queue.finish(entry.id, "killed", DONE, {}, None)
    assert queue.get(entry.id).status == RUNNING


def test_many_schedulers_racing_take_each_entry_once(queue_url: str) -> None:
    setup = CampaignQueue(queue_url)
    ids = [setup.schedule(_spec(f"c{i}"), due_at=time.time() - 1).id for i in range(12)]
    winners: dict[str, list[str]] = {i: [] for i in ids}
    lock = threading.Lock()
    go = threading.Barrier(6)

    def scheduler(name: str) -> None:
        queue = CampaignQueue(queue_url)  # its own connections, as another process would
        go.wait()
        for entry in queue.due():
            if queue.take(entry.id, name, 60) is not None:
                with lock:
                    winners[entry.id].append(name)

    threads = [threading.Thread(target=scheduler, args=(f"s{n}",)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(len(w) == 1 for w in winners.values()), winners
    assert all(setup.get(i).starts == 1 for i in ids)


def test_pause_cancel_unpause(queue_url: str) -> None:
    queue = CampaignQueue(queue_url)
    entry = queue.schedule(_spec(), due_at=time.time() - 1)
    assert queue.pause(entry.id).status == PAUSED
    assert queue.due() == []
    with pytest.raises(QueueError, match="is paused: cannot make it paused"):
        queue.pause(entry.id)
    assert queue.unpause(entry.id).status == QUEUED
    assert queue.take(entry.id, "a", 30) is not None
    assert queue.cancel(entry.id).status == CANCELLED  # the scheduler stops the run
    assert not queue.finish(entry.id, "a", DONE, {}, None)  # the user's word stands
    assert queue.get(entry.id).status == CANCELLED
    with pytest.raises(QueueError, match="cancelled: cannot make it queued"):
        queue.unpause(entry.id)
    assert [e.id for e in queue.find("c1")] == [entry.id]  # by campaign name
    with pytest.raises(QueueError, match="no entry, group or campaign"):
        queue.find("nope")


def test_status_events_fill_the_webhook_outbox_in_the_same_transaction(queue_url: str) -> None:
    queue = CampaignQueue(queue_url)
    hooked = _spec(
        "hooked", status_webhook="http://127.0.0.1:9/h", status_webhook_secret="0123456789abcdef"
    )
    entry = queue.schedule(hooked, due_at=time.time() - 1)
    queue.schedule(_spec("quiet"), due_at=time.time() - 1)
    assert queue.take(entry.id, "a", 30)
    queue.progress(entry.id, {"accepted": 1, "queued": 2})
    rows = queue.db.query("SELECT event_id, url, body FROM webhook_outbox ORDER BY id")
    events = queue.events([entry.id])
    assert [r[0] for r in rows] == [e.id for e in events]  # one delivery per event, only hooked
    assert rows[-1][1] == "http://127.0.0.1:9/h" and '"accepted": 1' in rows[-1][2]


def test_webhook_spec_needs_a_secret_and_http() -> None:
    with pytest.raises(Exception, match="status_webhook_secret"):
        _spec(status_webhook="http://127.0.0.1:9/h")
    with pytest.raises(Exception, match="http"):
        _spec(status_webhook="ftp://x", status_webhook_secret="0123456789abcdef")


def test_due_times() -> None:
    now = datetime(2026, 3, 28, 12, 0, tzinfo=UTC).timestamp()
    assert due_at(None, now=now) == now
    assert due_at("+15m", now=now) == now + 900
    assert (
        due_at("2026-03-29T09:00:00+02:00", now=now)
        == datetime(2026, 3, 29, 7, 0, tzinfo=UTC).timestamp()
    )
    # Naive: read in the zone; Paris moves to summer time on 29 March 2026 at 02:00.
    assert (
        due_at("2026-03-29 09:00", "Europe/Paris", now=now)
        == datetime(2026, 3, 29, 7, 0, tzinfo=UTC).timestamp()
    )
    # A time of day: the next one (12:00 UTC is 13:00 in Paris, so 09:00 is tomorrow, CEST).
    nine = next_wall_time("09:00", ZoneInfo("Europe/Paris"), now=now)
    assert nine == datetime(2026, 3, 29, 7, 0, tzinfo=UTC).timestamp()
    assert (
        due_at("14:00", "Europe/Paris", now=now)
        == datetime(2026, 3, 28, 13, 0, tzinfo=UTC).timestamp()
    )
    for bad, why in (("tomorrow", "not a time"), ("25:00", "not a time of day")):
        with pytest.raises(QueueError, match=why):
            due_at(bad, now=now)
    with pytest.raises(QueueError, match="unknown time zone 'Mars/Olympus'"):
        due_at("09:00", "Mars/Olympus", now=now)


def test_split_by_recipient_zone(tmp_path: Path) -> None:
    csv = tmp_path / "list.csv"
    csv.write_text(
        "email,name,timezone\n"
        "a@x.test,A,America/New_York\n"
        "b@x.test,B,Asia/Tokyo\n"
        "c@x.test,C,\n"  # no zone: the default (UTC)
        "d@x.test,D,Mars/Olympus\n"  # unknown: rejected with the reason
        "e@x.test,E,Asia/Tokyo\n"
        "f@x.test,F,UTC\n",
        encoding="utf-8",
    )
    now = datetime(2026, 12, 2, 12, 0, tzinfo=UTC).timestamp()
    parts, rejected = split_by_zone(str(csv), "09:00", "UTC", tmp_path / "parts", now=now)
    by_zone = {p.zone: p for p in parts}
    assert rejected == 1 and set(by_zone) == {"America/New_York", "Asia/Tokyo", "UTC"}
    assert by_zone["Asia/Tokyo"].rows == 2 and by_zone["UTC"].rows == 2
    assert by_zone["Asia/Tokyo"].due_at == datetime(2026, 12, 3, 0, 0, tzinfo=UTC).timestamp()
    assert (
        by_zone["America/New_York"].due_at == datetime(2026, 12, 2, 14, 0, tzinfo=UTC).timestamp()
    )
    assert by_zone["UTC"].due_at == datetime(2026, 12, 3, 9, 0, tzinfo=UTC).timestamp()
    tokyo = pl.read_parquet(by_zone["Asia/Tokyo"].path)
    assert tokyo["email"].to_list() == ["b@x.test", "e@x.test"] and "name" in tokyo.columns
    rejects = pl.read_parquet(tmp_path / "parts" / "rejects.parquet")
    assert rejects.to_dicts() == [
        {
            "file": str(csv),
            "row": 4,
            "field": "timezone",
            "reason": "unknown time zone 'Mars/Olympus'",
        }
    ]


def test_schedule_per_recipient_zone_makes_one_entry_per_zone(
    queue_url: str, tmp_path: Path
) -> None:
    csv = tmp_path / "list.csv"
    csv.write_text("email,timezone\na@x.test,Europe/Paris\nb@x.test,Asia/Tokyo\n", "utf-8")
    queue = CampaignQueue(queue_url)
    entries = schedule_campaign(
        queue,
        _spec(recipients=str(csv)),
        at="09:00",
        per_recipient_zone=True,
        run_dir=tmp_path / "runs",
    )
    assert sorted(e.timezone or "" for e in entries) == ["Asia/Tokyo", "Europe/Paris"]
    assert len({e.group for e in entries}) == 1 and len({e.run_dir for e in entries}) == 2
    for entry in entries:
        assert pl.read_parquet(entry.spec().recipients).height == 1
        assert queue.find(entry.group) == entries
