"""Archive to S3 (the moto server on loopback): verified moves, tiers, queries in place."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from s3_moto import BUCKET, s3_endpoint_fixture, s3_fixture  # noqa: F401 (the fixtures)
from tracking_data import SENT, recipients, write_ledger, write_returns, write_web_hits
from typer.testing import CliRunner

from raymail.cli import _register, app
from raymail.errors import StorageError, TrackingError
from raymail.spec import ArchiveSettings
from raymail.tracking import query
from raymail.tracking.archive import archive_campaign
from raymail.tracking.catalog import Catalog
from raymail.tracking.events import event_parts
from raymail.tracking.sync import sync_ledger, sync_returns
from raymail.tracking.tiers import apply_tier_rules, check_classes, set_tier

C = "spring"
COUNTS = "SELECT kind, source, bot, count(*) AS n FROM events GROUP BY ALL ORDER BY ALL"


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "events"
    write_ledger(tmp_path / "run", C, recipients(30), failed={7, 8})
    write_web_hits(root, C)
    write_returns(tmp_path / "home", C)
    sync_ledger(root, tmp_path / "run")
    sync_returns(root, tmp_path / "home" / "returns")
    return root


def settings(tmp_path: Path, **extra: object) -> ArchiveSettings:
    return ArchiveSettings.model_validate({"to": f"s3://{BUCKET}/{tmp_path.name}", **extra})


def test_finished_campaign_goes_to_s3_verified_and_stays_queryable(
    s3: object, dataset: Path, tmp_path: Path
) -> None:
    before = query(COUNTS, root=dataset)
    local_rows = sum(r[-1] for r in before.rows())
    result = archive_campaign(
        C, settings(tmp_path, when_finished=True), root=dataset, run_dir=tmp_path / "run"
    )
    assert result.reasons == ["the run is complete (when_finished)"]
    assert result.rows == local_rows and result.ledger_files == 1
    assert event_parts(dataset, C) == []  # the local copies are gone ...
    assert not list((tmp_path / "run" / "outcomes").glob("*.parquet"))
    marker = json.loads((tmp_path / "run" / "outcomes" / "ARCHIVED.json").read_text())
    assert marker["objects"][0].startswith(f"s3://{BUCKET}/")
    objects = Catalog(dataset).objects(C)
    assert {o.kind for o in objects.values()} == {"events", "ledger"}
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=tmp_path.name)["Contents"]  # type: ignore[attr-defined]
    assert len(listed) == len(objects)
    assert all(o.last_read is None for o in objects.values())
    after = query(COUNTS, root=dataset)  # ... and the query reads the archive in place
    assert after.equals(before)
    assert all(
        o.last_read
        for o in Catalog(dataset)
        .objects(
            C,
        )
        .values()
        if o.kind == "events"
    )
    assert query(COUNTS, root=dataset, archive=False).height == 0
    # a sync of the archived days writes nothing locally again (archived days are frozen)
    sync_returns(dataset, tmp_path / "home" / "returns")
    assert event_parts(dataset, C) == []
    # a crash between recording an object and removing its local copy: the leftover is not
    # read twice, and the next pass removes it
    entry = next(o for o in objects.values() if o.kind == "events")
    leftover = dataset / entry.path
    leftover.parent.mkdir(parents=True)
    s3.download_file(BUCKET, entry.url.split("/", 3)[3], str(leftover))  # type: ignore[attr-defined]
    assert query(COUNTS, root=dataset).equals(before)
    # a second pass, and a sync of the archived ledger, change nothing
    again = archive_campaign(
        C, settings(tmp_path, when_finished=True), root=dataset, run_dir=tmp_path / "run"
    )
    assert again.events_files == 0 and again.ledger_files == 0
    assert not leftover.exists()
    assert query(COUNTS, root=dataset).equals(before)


def test_criteria_days_and_size(s3: object, dataset: Path, tmp_path: Path) -> None:
    rule = settings(tmp_path, older_than_days=5)
    assert archive_campaign(C, rule, root=dataset, now=SENT + timedelta(days=3)).events_files == 0
    late = archive_campaign(C, rule, root=dataset, now=SENT + timedelta(days=10))
    assert late.events_files >= 3 and event_parts(dataset, C) == []
    assert "older_than_days" in late.reasons[0]
    write_web_hits(dataset, C)  # new local events of the same days
    big = archive_campaign(C, settings(tmp_path, larger_than_mb=0.001), root=dataset)
    assert big.events_files == 1 and "larger_than_mb" in big.reasons[0]
    assert query("SELECT count(*) FROM events WHERE source = 'web'", root=dataset).item() == 44


def test_a_failed_upload_keeps_everything_local(s3: object, dataset: Path) -> None:
    parts = event_parts(dataset, C)
    bad = ArchiveSettings(to="s3://no-such-bucket/x")
    with pytest.raises(StorageError, match=r"no-such-bucket.*upload failed: NoSuchBucket"):
        archive_campaign(C, bad, root=dataset, force=True)
    assert event_parts(dataset, C) == parts and Catalog(dataset).objects() == {}


def test_tiers_on_demand_glacier_restore_and_rules(
    s3: object, dataset: Path, tmp_path: Path
) -> None:
    rules = settings(
        tmp_path,
        tiers=[{"unread_days": 30, "to": "STANDARD_IA"}, {"unread_days": 90, "to": "GLACIER_IR"}],
    )
    archive_campaign(C, rules, root=dataset, force=True)
    moves = set_tier(C, "STANDARD_IA", root=dataset)
    assert {m.status for m in moves} == {"moved"}
    assert check_classes(C, root=dataset) == []
    key = next(iter(Catalog(dataset).objects(C).values())).url.split("/", 3)[3]
    head = s3.head_object(Bucket=BUCKET, Key=key)  # type: ignore[attr-defined]
    assert head["StorageClass"] == "STANDARD_IA"

    set_tier(C, "GLACIER", root=dataset)
    with pytest.raises(TrackingError, match="GLACIER, which cannot be read in place"):
        query(COUNTS, root=dataset)
    first = set_tier(C, "STANDARD", root=dataset)
    assert {m.status for m in first} == {"restore requested"}
    assert all(o.restoring for o in Catalog(dataset).objects(C).values())
    second = set_tier(C, "STANDARD", root=dataset)  # moto restores at once
    assert {m.status for m in second} == {"moved"}
    assert query(COUNTS, root=dataset).height > 0  # read: last_read is now set

    now = SENT + timedelta(days=1)
    catalog = Catalog(dataset)

    def ago(days: float) -> str:
        return (now - timedelta(days=days)).isoformat()

    catalog.update(
        lambda entries: {
            k: dataclasses.replace(v, last_read=ago(40), class_changed_at=ago(45))
            for k, v in entries.items()
        }
    )
    assert {m.new for m in apply_tier_rules(C, rules, root=dataset, now=now)} == {"STANDARD_IA"}
    later = now + timedelta(days=60)
    assert {m.new for m in apply_tier_rules(C, rules, root=dataset, now=later)} == {"GLACIER_IR"}
    assert apply_tier_rules(C, rules, root=dataset, now=later) == []
    query(COUNTS, root=dataset)  # queried again ...
    warm = apply_tier_rules(C, rules, root=dataset, now=later)
    assert {(m.old, m.new) for m in warm} == {("GLACIER_IR", "STANDARD")}  # ... warmer
    assert check_classes(C, root=dataset) == []
    with pytest.raises(TrackingError, match="unknown storage class"):
        set_tier(C, "COLD", root=dataset)


def test_cli_run_show_tier(s3: object, dataset: Path, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "campaign": C, "sender": "news@sender.test", "subject": "s", "text": "t",
        "recipients": "list.csv", "archive": {"to": f"s3://{BUCKET}/{tmp_path.name}"},
    }))  # fmt: skip
    _register()
    runner = CliRunner()
    root = ["--root", str(dataset)]
    out = runner.invoke(app, ["archive", "run", str(spec), *root])
    assert out.exit_code == 0 and "no criterion holds" in out.stdout, out.output
    out = runner.invoke(app, ["archive", "run", str(spec), "--force", *root])
    assert out.exit_code == 0 and "forced" in out.stdout, out.output
    out = runner.invoke(app, ["archive", "tier", C, "--to", "glacier_ir", *root])
    assert out.exit_code == 0 and "STANDARD -> GLACIER_IR (moved" in out.stdout, out.output
    out = runner.invoke(app, ["archive", "show", C, "--check", *root, "--json"])
    shown = json.loads(out.stdout)
    assert {o["storage_class"] for o in shown["objects"]} == {"GLACIER_IR"}
    assert shown["differ"] == []
    bad = runner.invoke(app, ["archive", "tier", "nothing", "--to", "STANDARD", *root])
    assert bad.exit_code == 2 and "nothing archived" in bad.stderr
    spec.write_text(spec.read_text().replace("archive:", "archiv:"))
    bad = runner.invoke(app, ["archive", "run", str(spec), *root])
    assert bad.exit_code == 2 and "unknown key 'archiv' (did you mean 'archive'?)" in bad.stderr
