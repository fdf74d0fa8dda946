"""The events dataset: validation, partitions, atomic batched parts, bot flags."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from raymail.errors import EventRowError, TrackingError
from raymail.tracking import TRACKING_SCHEMA, EventWriter, events_root, flag_hit
from raymail.tracking.bots import (
    APPLE_MPP,
    CLICK_BURST,
    GOOGLE_IMAGE_PROXY,
    SCANNER_AGENT,
    SCANNER_NETWORK,
    flag_scanner_bursts,
)

T0 = datetime(2025, 3, 14, 23, 59, 58, tzinfo=UTC)
CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0"


def hit(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "campaign": "spring",
        "at": T0,
        "kind": "open",
        "recipient": "Ann@Example.ORG",
        "source": "web",
    }
    row.update(overrides)
    return row


def test_events_root_follows_raymail_home(raymail_home: Path, tmp_path: Path) -> None:
    assert events_root() == raymail_home / "events"
    assert events_root(tmp_path) == tmp_path / "events"


def test_flush_writes_one_part_per_campaign_and_day(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path / "events")
    writer.add([hit(), hit(at=T0 + timedelta(seconds=5)), hit(campaign="autumn")])
    writer.add([hit(kind="click", link="pricing", url="https://shop.example/p", row=7)])
    assert writer.buffered == 4
    assert writer.flush() == 4
    assert writer.flush() == 0
    parts = sorted(p.relative_to(tmp_path / "events") for p in (tmp_path / "events").rglob("*"))
    folders = {str(p.parent) for p in parts if p.suffix == ".parquet"}
    assert folders == {
        "campaign=spring/date=2025-03-14",
        "campaign=spring/date=2025-03-15",
        "campaign=autumn/date=2025-03-14",
    }
    assert not [p for p in parts if p.name.startswith(".")]  # no temporary files left
    table = ds.dataset(tmp_path / "events", format="parquet", schema=TRACKING_SCHEMA).to_table()
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    assert frame.height == 4
    assert set(frame["recipient"]) == {"ann@example.org"}
    click = frame.filter(pl.col("kind") == "click").row(0, named=True)
    assert click["row"] == 7 and click["link"] == "pricing" and click["bot"] is False
    assert click["at"] == T0
    for path in (tmp_path / "events").rglob("*.parquet"):
        assert pq.read_schema(path).equals(TRACKING_SCHEMA)


def test_close_flushes_and_refuses_more(tmp_path: Path) -> None:
    with EventWriter(tmp_path) as writer:
        writer.add([hit()])
    assert len(list(tmp_path.rglob("*.parquet"))) == 1
    with pytest.raises(EventRowError, match="closed"):
        writer.add([hit()])


def test_full_buffer_flushes_by_itself(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path, max_buffered=3)
    writer.add([hit(), hit()])
    assert not list(tmp_path.rglob("*.parquet"))
    writer.add([hit()])
    assert writer.buffered == 0 and len(list(tmp_path.rglob("*.parquet"))) == 1


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"kind": "view"}, "kind"),
        ({"source": "smtp"}, "source"),
        ({"at": datetime(2025, 3, 14)}, "at"),  # naive
        ({"at": "2025-03-14"}, "at"),
        ({"campaign": "../etc"}, "campaign"),
        ({"recipient": ""}, "recipient"),
        ({"row": "7"}, "row"),
        ({"row": True}, "row"),
        ({"bot": "yes"}, "bot"),
        ({"detail": "{not json"}, "detail"),
        ({"url": 3}, "url"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_row_names_the_key_and_nothing_is_buffered(
    tmp_path: Path, overrides: dict[str, object], key: str
) -> None:
    writer = EventWriter(tmp_path)
    with pytest.raises(EventRowError, match=f"event 1: .*'{key}'"):
        writer.add([hit(), hit(**overrides)])
    assert writer.buffered == 0


def test_missing_required_key(tmp_path: Path) -> None:
    row = hit()
    del row["recipient"]
    with pytest.raises(TrackingError, match="missing required key 'recipient'"):
        EventWriter(tmp_path).add([row])


def test_detail_mapping_is_stored_as_json(tmp_path: Path) -> None:
    writer = EventWriter(tmp_path)
    writer.add([hit(detail={"esp": "x", "n": 2}), hit(detail='{"a": 1}')])
    writer.flush()
    frame = pl.read_parquet(list(tmp_path.rglob("*.parquet")))
    assert sorted(frame["detail"]) == ['{"a": 1}', '{"esp": "x", "n": 2}']


def test_failed_flush_keeps_unwritten_rows(tmp_path: Path) -> None:
    root = tmp_path / "events"
    writer = EventWriter(root)
    writer.add([hit(campaign="aaa"), hit(campaign="zzz")])
    (root / "campaign=zzz").mkdir(parents=True)
    (root / "campaign=zzz" / "date=2025-03-14").write_text("a file where a folder goes")
    with pytest.raises(OSError):
        writer.flush()
    assert writer.buffered == 1  # aaa was written, zzz waits
    (root / "campaign=zzz" / "date=2025-03-14").unlink()
    assert writer.flush() == 1
    assert len(list(root.rglob("*.parquet"))) == 2


def test_two_writers_append_to_one_folder(tmp_path: Path) -> None:
    first, second = EventWriter(tmp_path), EventWriter(tmp_path)
    first.add([hit()])
    second.add([hit()])
    first.flush()
    second.flush()
    assert len(list(tmp_path.rglob("*.parquet"))) == 2
    assert os.listdir(tmp_path) == ["campaign=spring"]


@pytest.mark.parametrize(
    ("kind", "agent", "ip", "reason"),
    [
        (
            "open",
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 "
            "(via ggpht.com GoogleImageProxy)",
            "66.102.8.1",
            GOOGLE_IMAGE_PROXY,
        ),
        ("open", "Mozilla/5.0", "17.58.1.2", APPLE_MPP),
        ("open", None, "17.58.1.2", APPLE_MPP),
        ("open", CHROME, "203.0.113.9", None),
        ("click", CHROME, "203.0.113.9", None),
        ("click", "python-requests/2.31", "203.0.113.9", SCANNER_AGENT),
        ("click", "Mozilla/5.0 (compatible; Barracuda Sentinel)", None, SCANNER_AGENT),
        ("click", CHROME, "148.163.130.7", SCANNER_NETWORK),
        ("click", CHROME, "not-an-ip", None),
        ("click", "Mozilla/5.0", "17.58.1.2", None),  # the bare agent flags opens only
    ],
)
def test_flag_hit(kind: str, agent: str | None, ip: str | None, reason: str | None) -> None:
    assert flag_hit(kind, agent, ip) == reason


def test_flag_hit_extra_lists() -> None:
    assert flag_hit("click", "AcmeGuard/1.0", None) is None
    assert flag_hit("click", "AcmeGuard/1.0", None, extra_agents=["acmeguard"]) == SCANNER_AGENT
    assert flag_hit("click", CHROME, "192.0.2.5", extra_networks=["192.0.2.0/24"]) == (
        SCANNER_NETWORK
    )


def test_click_bursts_over_several_links_are_scanners() -> None:
    def click(recipient: str, seconds: float, link: str) -> dict[str, object]:
        return hit(
            kind="click",
            recipient=recipient,
            at=T0 + timedelta(seconds=seconds),
            link=link,
            bot=False,
            bot_reason=None,
            message_id=None,
        )

    rows = [
        click("scan@x.org", 0.0, "a"),
        click("scan@x.org", 0.4, "b"),
        click("scan@x.org", 0.9, "c"),
        click("scan@x.org", 60.0, "a"),  # the person, later
        click("human@x.org", 0.0, "a"),
        click("human@x.org", 0.5, "a"),  # a double click on one link
        click("human@x.org", 30.0, "b"),
        hit(recipient="scan@x.org", bot=True, bot_reason=APPLE_MPP, message_id=None, link=None),
    ]
    frame = pl.from_arrow(pa.Table.from_pylist(rows, schema=TRACKING_SCHEMA))
    assert isinstance(frame, pl.DataFrame)
    flagged = flag_scanner_bursts(frame)
    assert flagged.height == frame.height
    assert flagged["bot"].to_list() == [True, True, True, False, False, False, False, True]
    assert flagged["bot_reason"].to_list() == [CLICK_BURST] * 3 + [None] * 4 + [APPLE_MPP]


def test_adds_from_threads_while_flushing_lose_nothing(tmp_path: Path) -> None:
    import threading

    writer = EventWriter(tmp_path, max_buffered=250)
    errors: list[BaseException] = []

    def produce(k: int) -> None:
        try:
            for n in range(50):
                writer.add([hit(recipient=f"t{k}-{n}@x.org") for _ in range(4)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    writer.close()
    assert not errors
    frame = pl.read_parquet(list(tmp_path.rglob("*.parquet")))
    assert frame.height == 4 * 50 * 4
    assert frame["recipient"].n_unique() == 4 * 50
