"""The streaming driver: lists read in batches, portions planned as they are needed.

Speed and memory are the scale benchmark's business; these tests prove the behaviour that
makes memory flat: several batches, a bounded queue, and still everyone exactly once,
duplicates found across batches and rejects with their input row numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_spec, write_csv
from raymail.driver.campaign import run_campaign
from raymail.driver.portions import PortionStream
from raymail.intake.recipients import intake_recipients, load_recipients
from raymail.run.ledger import COMPACT_PARTS, Ledger, final_outcomes, ledger_parts, read_outcomes
from raymail.run.rundir import RunDir
from raymail.schema import OUTCOME_SCHEMA
from raymail.sink import SinkConfig, read_capture, run_sink


def _messy_csv(path: Path) -> Path:
    """40 rows: duplicates far apart (other batches), bad addresses, malformed rows, IDNA."""
    rows = [f"user{i}@d{i % 3}.test,N{i}" for i in range(30)]
    rows[3] = "joerg@Bücher.DE,Umlaut"
    rows[7] = "not-an-address,Bad"
    rows[12] = "a@b.test,too,many"  # malformed: three fields
    rows[13] = '"broken\nacross@lines.test",Q'  # a quoted field spanning two lines
    rows += [
        "USER1@D1.TEST,Repeat of row 2 (case differs)",
        "user5@d2.test,Repeat of row 6",
        "Joerg@XN--BCHER-KVA.DE,Repeat of row 4 once normalised",
        "user1@d1.test,Second repeat of row 2",
        "fresh@new.test,New",
        "fresh@new.test,Repeat inside the last batch",
    ]
    return write_csv(path, "email,name", rows)


@pytest.mark.parametrize("batch_rows", [1, 4, 7, 1000])
def test_intake_in_batches_equals_loading_the_whole_file(tmp_path: Path, batch_rows: int) -> None:
    csv = _messy_csv(tmp_path / "list.csv")
    whole = load_recipients(csv)
    result = intake_recipients(csv, tmp_path, "recipients.parquet", batch_rows=batch_rows)
    table = pq.read_table(tmp_path / "recipients.parquet")
    rejects = pq.read_table(tmp_path / "rejects.parquet")
    assert table.equals(whole.table.cast(table.schema))
    assert rejects.equals(whole.rejects)
    assert result.batches == (1 if batch_rows > 36 else 2 if batch_rows > 30 else result.batches)
    assert result.batches > 1 or batch_rows > 30
    assert (result.accepted, result.rejected) == (whole.accepted, whole.rejected)
    reasons = dict(zip(rejects["row"].to_pylist(), rejects["reason"].to_pylist(), strict=True))
    assert reasons[31] == reasons[34] == "duplicate of row 2"
    assert reasons[32] == "duplicate of row 6"
    assert reasons[33] == "duplicate of row 4"
    assert reasons[36] == "duplicate of row 35"
    assert reasons[13].startswith("malformed CSV row")
    assert not reasons[8].startswith("duplicate") and not reasons[14].startswith("duplicate")
    assert set(reasons) == {8, 13, 14, 31, 32, 33, 34, 36}


def test_intake_reads_parquet_in_batches(tmp_path: Path) -> None:
    emails = [f"p{i % 50}@d{i % 50 % 4}.test" for i in range(120)]  # rows 51.. repeat 1..50
    source = tmp_path / "list.parquet"
    pq.write_table(pa.table({"email": emails, "n": list(range(120))}), source)
    result = intake_recipients(source, tmp_path, "recipients.parquet", batch_rows=16)
    assert result.batches == 8
    assert result.accepted == 50 and result.duplicates == 70
    rejects = pl.read_parquet(tmp_path / "rejects.parquet")
    expected = [f"duplicate of row {(r - 1) % 50 + 1}" for r in range(51, 121)]
    assert rejects["row"].to_list() == list(range(51, 121))
    assert rejects["reason"].to_list() == expected
    assert pl.read_parquet(tmp_path / "recipients.parquet")["n"].to_list() == [
        str(i) for i in range(50)
    ]


def test_portion_stream_plans_each_row_once_from_bounded_batches(tmp_path: Path) -> None:
    domains = ["a.test"] * 7 + ["b.test"] * 2 + ["c.test"]  # uneven domains
    emails = [f"u{i}@{domains[i % 10]}" for i in range(500)]
    source = tmp_path / "list.parquet"
    pq.write_table(pa.table({"email": emails}), source)
    intake_recipients(source, tmp_path, "recipients.parquet")
    skip = np.arange(1, 501, 9, dtype=np.int64)  # settled already
    prev_rows = np.array([2, 3, 4], dtype=np.int64)  # tried once before
    stream = PortionStream(
        tmp_path / "recipients.parquet", 20, first_id=100, batch_rows=32, carry_limit=40,
        skip=skip, prev_rows=prev_rows, prev_attempts=np.array([1, 1, 2], dtype=np.int64),
    )  # fmt: skip
    planned: list[int] = []
    ids: list[int] = []
    while not stream.exhausted:
        for task, rows in stream.next_portions():
            assert "prev_attempt" not in rows.column_names
            assert set(rows["domain"].to_pylist()) == {task.domain}
            assert task.size == rows.num_rows <= 20
            row_list = rows["row"].to_pylist()
            if {2, 3, 4} & set(row_list):
                assert task.attempt == (3 if 4 in row_list else 2)
            else:
                assert task.attempt == 1
            planned += row_list
            ids.append(task.portion)
    assert stream.batches == 16  # 500 rows / 32
    assert sorted(planned) == sorted(set(range(1, 501)) - set(skip.tolist()))
    assert ids == list(range(100, 100 + len(ids)))


def test_ledger_merges_parts_and_a_crash_mid_merge_doubles_nothing(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path, flush_interval_s=0)
    rows = 0
    for flush in range(COMPACT_PARTS * 2 + 3):
        table = OUTCOME_SCHEMA.empty_table().to_pydict()
        table["row"] = [flush * 10 + i for i in range(10)]
        table["attempt"] = [1] * 10
        n = len(table["row"])
        full = {k: (v if v else [None] * n) for k, v in table.items()}
        ledger.add(pa.table(full, schema=OUTCOME_SCHEMA), pa.table({}))
        ledger.flush()
        rows += n
    parts = ledger_parts(tmp_path / "outcomes")
    assert len(parts) == 2 + 3  # two merged files and three small parts
    assert sorted(read_outcomes(tmp_path)["row"].to_list()) == list(range(rows))
    # a merge that crashed after writing the merged file, before removing its parts:
    merged = parts[0]
    first, last = (int(x) for x in merged.stem.split("-")[1:])
    for n in range(first, last + 1):
        one = pq.read_table(merged).slice((n - first) * 10, 10)
        pq.write_table(one, merged.with_name(f"part-{n:06d}.parquet"))
    assert sorted(read_outcomes(tmp_path)["row"].to_list()) == list(range(rows))
    assert Ledger(tmp_path).outcomes._next == COMPACT_PARTS * 2 + 3  # numbering goes on


@pytest.mark.usefixtures("ray_session")
def test_campaign_streams_the_list_with_bounded_queue(tmp_path: Path) -> None:
    n = 1200
    emails = [f"user{i}@d{i % 5}.test" for i in range(n)]
    emails[1100] = "user7@D2.test"  # repeats row 8, twenty batches earlier
    emails[1101] = "bad address"
    source = tmp_path / "list.parquet"
    pq.write_table(pa.table({"email": emails, "name": [f"N{i}" for i in range(n)]}), source)
    capture = tmp_path / "capture"
    with run_sink(SinkConfig(), capture_dir=capture) as sink:
        spec = make_spec(source, sink.port, batch_rows=50, portion_size=10)
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
    assert report.accepted == n - 2 and report.rejected_input == 2
    per_rcpt = read_capture(capture).group_by("rcpt_to").len()
    assert per_rcpt.height == n - 2 and per_rcpt["len"].max() == 1
    rejects = pl.read_parquet(tmp_path / "run" / "rejects.parquet")
    assert rejects.select("row", "reason").rows() == [
        (1101, "duplicate of row 8"),
        (1102, rejects["reason"][1]),
    ]
    final = final_outcomes(read_outcomes(tmp_path / "run"))
    assert final["row"].n_unique() == final.height == n - 2
    assert not {1101, 1102} & set(final["row"].to_list())

    stream = RunDir(tmp_path / "run").manifest()["stream"]
    assert stream["batches"] == n // 50
    assert stream["portions"] >= (n - 2) // 10
    capacity = spec.concurrency + max(2, spec.concurrency // 2)  # per server, push mode
    low_water = max(16, 2 * spec.delivery_servers * capacity)
    # never more queued than the low-water mark plus one batch (and its carry) in portions:
    # the whole list planned at once would queue every portion
    assert stream["peak_ready_portions"] <= low_water + (50 + 100) // 10 + 5
    assert stream["peak_ready_portions"] < stream["portions"] / 2
    assert stream["peak_inflight_portions"] <= spec.delivery_servers * capacity
