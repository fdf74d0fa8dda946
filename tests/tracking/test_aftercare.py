"""The scheduler's aftercare: archive policies and follow-ups applied by themselves, on a real
SQLite queue, real run directories and events (the real writers), and moto S3 on loopback.
Time is an injected clock: the passes run as if days had gone by, without waiting."""

from __future__ import annotations

import json
import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from s3_moto import BUCKET, s3_endpoint_fixture, s3_fixture  # noqa: F401 (the fixtures)
from tracking_data import SENT, recipients, write_ledger, write_web_hits

from conftest import make_spec
from raymail.queue.aftercare import Aftercare, followup_entry_id
from raymail.queue.scheduler import Scheduler
from raymail.queue.store import DONE, QUEUED, CampaignQueue, Entry
from raymail.tracking import query
from raymail.tracking.catalog import Catalog
from raymail.tracking.events import event_parts, events_root
from raymail.tracking.followups import RuleState
from raymail.tracking.sync import sync_ledger

C = "spring"
COUNTS = "SELECT kind, source, bot, count(*) AS n FROM events GROUP BY ALL ORDER BY ALL"


class Clock:
    """An injected clock (Unix seconds), moved by the test."""

    def __init__(self, days_after_sent: float) -> None:
        self.now = (SENT + timedelta(days=days_after_sent)).timestamp()

    def __call__(self) -> float:
        return self.now

    def days(self, days_after_sent: float) -> None:
        self.now = (SENT + timedelta(days=days_after_sent)).timestamp()


class Crash(BaseException):
    """A kill at a chosen point (not an error the pass could catch)."""


def _finished(queue: CampaignQueue, tmp_path: Path, **spec: Any) -> Entry:
    """A queued entry of campaign C whose run (a real ledger) completed, marked done the way
    the scheduler marks it."""
    run_dir = tmp_path / "run"
    write_ledger(run_dir, C, recipients(30), failed={7, 8})
    write_web_hits(events_root(), C)
    entry = queue.schedule(
        make_spec(tmp_path / "list.csv", 25, campaign=C, **spec), due_at=0, run_dir=run_dir
    )
    assert queue.take(entry.id, "test", 30) is not None
    assert queue.finish(entry.id, "test", DONE, {"complete": 1}, "run complete")
    return queue.get(entry.id)


def _archive(tmp_path: Path, **extra: object) -> dict[str, object]:
    return {"archive": {"to": f"s3://{BUCKET}/{tmp_path.name}", **extra}}


def test_when_finished_archives_at_run_end_and_a_killed_pass_is_finished(
    s3: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = CampaignQueue(f"sqlite:///{tmp_path / 'queue.sqlite'}")
    entry = _finished(queue, tmp_path, **_archive(tmp_path, when_finished=True))
    root = events_root()
    sync_ledger(root, tmp_path / "run")  # what the pass does first: delivered rows are events
    before = query(COUNTS, root=root)
    local = len(event_parts(root, C))
    assert local >= 2

    # The pass is killed right after the catalog recorded the second file (before its local
    # copy was removed), then again right after the ledger's part was recorded.
    # (archive.py uses this same Catalog class: patching it patches the archiver's.)
    real_record = Catalog.record
    calls = {"n": 0}

    def record_then_crash(self: Any, entries: Any, crash_at: int = 2) -> None:
        real_record(self, entries)
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise Crash

    monkeypatch.setattr(Catalog, "record", record_then_crash)
    care = Aftercare(queue, clock=Clock(1))
    care.ended(entry.id)
    with pytest.raises(Crash):
        care.review()
    assert len(event_parts(root, C)) == local - 1  # one moved; the second recorded, still here
    assert query(COUNTS, root=root).equals(before)  # read once each, local or archived

    calls["n"] = 3 - local  # the next pass: the remaining files, then crash on the ledger
    with pytest.raises(Crash):
        Aftercare(queue, clock=Clock(1)).review()  # a restarted scheduler
    assert event_parts(root, C) == []
    ledger_parts = list((tmp_path / "run" / "outcomes").glob("*.parquet"))
    assert len(ledger_parts) == 1  # recorded in the catalog, not yet removed

    monkeypatch.setattr(Catalog, "record", real_record)
    again = Aftercare(queue, clock=Clock(1))
    assert again.review() == 1 and again.stats.errors == []
    assert not list((tmp_path / "run" / "outcomes").glob("*.parquet"))
    marker = json.loads((tmp_path / "run" / "outcomes" / "ARCHIVED.json").read_text())
    assert len(marker["objects"]) == len(set(marker["objects"])) == 1
    objects = Catalog(root).objects(C)
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=tmp_path.name)["Contents"]  # type: ignore[attr-defined]
    assert len(listed) == len(objects) == local + 1  # each file once, under one name
    assert query(COUNTS, root=root).equals(before)  # nothing lost, nothing twice
    assert again.stats.archived_files == {C: 1}  # that pass: only the ledger's part was left
    assert again.review() == 1 and again.stats.archived_files == {C: 1}  # idempotent


def test_older_than_and_larger_than_act_on_later_passes(s3: object, tmp_path: Path) -> None:
    queue = CampaignQueue(f"sqlite:///{tmp_path / 'queue.sqlite'}")
    _finished(queue, tmp_path, **_archive(tmp_path, older_than_days=5))
    root = events_root()
    clock = Clock(3)
    care = Aftercare(queue, clock=clock)
    care.review()
    assert care.stats.archived_files == {} and event_parts(root, C)
    clock.days(10)
    care.review()
    assert event_parts(root, C) == [] and care.stats.archived_files[C] >= 2
    assert list((tmp_path / "run" / "outcomes").glob("*.parquet"))  # the ledger: when_finished

    other = tmp_path / "big"
    other.mkdir()
    big = CampaignQueue(f"sqlite:///{other / 'queue.sqlite'}")
    write_web_hits(root, "autumn")
    entry = big.schedule(
        make_spec(other / "l.csv", 25, campaign="autumn", **_archive(other, larger_than_mb=0.02)),
        due_at=0, run_dir=other / "run",
    )  # fmt: skip
    big.take(entry.id, "t", 30)
    big.finish(entry.id, "t", DONE, {}, None)
    grows = Aftercare(big, clock=Clock(1))
    grows.review()
    assert grows.stats.archived_files == {}  # a few kB: under 20 kB
    assert sum(p.stat().st_size for p in event_parts(root, "autumn")) < 20_000
    rows = [{**r, "recipient": f"x{n}@a.test"} for n, r in enumerate(_many_hits(2000))]
    from raymail.tracking import EventWriter

    with EventWriter(root) as writer:
        writer.add(rows)
    grows.review()
    assert grows.stats.archived_files["autumn"] >= 1
    assert event_parts(root, "autumn") == []


def _many_hits(n: int) -> list[dict[str, Any]]:
    from tracking_data import hit

    return [hit("autumn", 0, "click", k, link=f"l{k}-{secrets.token_hex(24)}") for k in range(n)]


def _followup_file(tmp_path: Path) -> Path:
    path = tmp_path / "reminder.yaml"
    spec = make_spec(tmp_path / "unused.csv", 25, campaign="spring-reminder", subject="Reminder")
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")), encoding="utf-8")
    return path


def test_followups_queued_when_due_exactly_once_across_restarts(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'queue.sqlite'}"
    queue = CampaignQueue(url)
    rule = {"name": "reminder", "when": "not_opened", "after": "3d",
            "send": str(_followup_file(tmp_path))}  # fmt: skip
    parent = _finished(queue, tmp_path, followups=[rule])
    clock = Clock(1)
    care = Aftercare(queue, clock=clock)
    care.ended(parent.id)
    care.review()
    assert care.stats.followups_queued == []  # delivered a day ago: not due yet

    clock.days(4)
    care.review()
    first = followup_entry_id(parent.id, "reminder", "batch-000001")
    assert care.stats.followups_queued == [first] and care.stats.errors == []
    queued = queue.get(first)
    assert queued.status == QUEUED and queued.campaign == "spring-reminder"
    assert queued.due_at == clock.now and queued.run_dir.endswith("batch-000001/run")
    chosen = pl.read_parquet(queued.spec().recipients)["email"].to_list()
    # 28 delivered (7 and 8 bounced); 0..9 opened; 10..12 only through Gmail's proxy
    assert chosen == sorted(recipients(30)[n] for n in range(10, 30))

    care.review()  # the same pass again, and a restarted scheduler: nothing new
    restarted = Aftercare(CampaignQueue(url), clock=clock)
    restarted.review()
    assert restarted.stats.followups_queued == [] and care.stats.followups_queued == [first]

    # A kill after a batch's selection was recorded, before it was queued: the next pass
    # queues that batch, once, and selects nobody again.
    state = RuleState(C, parent.spec().followups[0])
    state.record(pl.DataFrame({"email": ["late@a.test"]}))
    after_crash = Aftercare(CampaignQueue(url), clock=clock)
    after_crash.review()
    second = followup_entry_id(parent.id, "reminder", "batch-000002")
    assert after_crash.stats.followups_queued == [second]
    Aftercare(CampaignQueue(url), clock=clock).review()
    followups = [e for e in queue.entries() if e.campaign == "spring-reminder"]
    assert sorted(e.id for e in followups) == [first, second]

    clock.days(40)  # past the window: the rule is not evaluated any more
    late = Aftercare(queue, clock=clock)
    late.review()
    assert late.stats.looked_at == 1 and late.stats.followups_queued == []


def test_scheduler_review_kicks_a_pass(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'queue.sqlite'}"
    queue = CampaignQueue(url)
    rule = {"name": "reminder", "when": "not_opened", "after": "0s",
            "send": str(_followup_file(tmp_path))}  # fmt: skip
    parent = _finished(queue, tmp_path, followups=[rule])
    scheduler = Scheduler(url, review_s=0.05, max_running=0)
    scheduler.aftercare.clock = Clock(0.5)
    scheduler.run(max_s=3)  # bounded; the pass runs in the aftercare thread
    assert scheduler.aftercare.stats.passes >= 1
    assert scheduler.aftercare.stats.followups_queued == [
        followup_entry_id(parent.id, "reminder", "batch-000001")
    ]


def test_a_send_archives_its_complete_run_at_its_end(s3: object, tmp_path: Path) -> None:
    """What ``raymail send`` / ``resume`` call after the report (runs outside the queue)."""
    from raymail.run.rundir import MANIFEST
    from raymail.tracking.archive import archive_finished_run

    run_dir = tmp_path / "run"
    write_ledger(run_dir, C, recipients(30), failed={7, 8})
    write_web_hits(events_root(), C)
    policy = _archive(tmp_path, when_finished=True)
    spec = make_spec(tmp_path / "list.csv", 25, campaign=C, **policy)
    manifest = json.loads((run_dir / MANIFEST).read_text())
    (run_dir / MANIFEST).write_text(json.dumps({**manifest, "status": "stopped"}))
    assert archive_finished_run(spec, run_dir) is None  # not complete: nothing moves
    assert event_parts(events_root(), C)
    (run_dir / MANIFEST).write_text(json.dumps(manifest))
    done = archive_finished_run(spec, run_dir)
    assert done is not None and done.ledger_files == 1 and event_parts(events_root(), C) == []
    no_policy = make_spec(tmp_path / "list.csv", 25, campaign=C)
    assert archive_finished_run(no_policy, run_dir) is None
