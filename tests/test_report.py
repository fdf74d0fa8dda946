"""The report counts each recipient once, by its latest attempt, whether the ledger is
settled in one pass or in several (large runs)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymail.run import report
from raymail.schema import OUTCOME_SCHEMA
from raymail.status import ACCEPTED, DEFERRED, FAILED, IN_DOUBT, Status


def _part(path: Path, rows: list[tuple[int, int, Status, str]], start: datetime) -> None:
    """Outcome rows (row, attempt, status, domain) as one ledger part."""
    n = len(rows)
    data: dict[str, pa.Array] = {}
    for field in OUTCOME_SCHEMA:
        if field.name == "row":
            data[field.name] = pa.array([r[0] for r in rows], field.type)
        elif field.name == "attempt":
            data[field.name] = pa.array([r[1] for r in rows], field.type)
        elif field.name == "status":
            data[field.name] = pa.array([r[2] for r in rows], field.type)
        elif field.name == "domain":
            data[field.name] = pa.array([r[3] for r in rows], field.type)
        elif field.name == "email":
            data[field.name] = pa.array([f"u{r[0]}@{r[3]}" for r in rows], field.type)
        elif field.name in ("started_at", "finished_at"):
            times = [start + timedelta(milliseconds=i) for i in range(n)]
            data[field.name] = pa.array(times, field.type)
        else:
            data[field.name] = pa.nulls(n, field.type)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(data, schema=OUTCOME_SCHEMA), path)


def test_counts_by_latest_attempt_in_one_pass_or_many(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    domains = ("a.test", "b.test", "c.test")
    first = [(r, 1, DEFERRED if r % 5 == 0 else ACCEPTED, domains[r % 3]) for r in range(1000)]
    first += [(r, 1, FAILED, "z.test") for r in range(1000, 1010)]
    # retries, in a later part: every fifth recipient accepted on attempt 2, except every
    # 25th, which ends in doubt; row 0 once more on attempt 3 (refused for good)
    later = [
        (r, 2, IN_DOUBT if r % 25 == 0 else ACCEPTED, domains[r % 3]) for r in range(0, 1000, 5)
    ]
    later.append((0, 3, FAILED, "a.test"))
    t0 = datetime(2026, 11, 23, tzinfo=UTC)
    _part(tmp_path / "outcomes" / "part-00000.parquet", first, t0)
    _part(tmp_path / "outcomes" / "part-00001.parquet", later, t0 + timedelta(hours=1))

    results = []
    for per_pass in (10_000, 97):  # one pass; eleven passes
        monkeypatch.setattr(report, "_ROWS_PER_PASS", per_pass)
        counts, doubted = report._fates(tmp_path)
        results.append((report._status_counts(counts), report._per_domain(counts)))
        assert doubted.len() == 40  # ever in doubt: rows 0, 25, ..., 975
    (totals, per_domain), (totals_many, per_domain_many) = results
    assert totals == totals_many and per_domain == per_domain_many
    assert totals[ACCEPTED] == 1000 - 40 and totals[IN_DOUBT] == 39
    assert totals[FAILED] == 10 + 1 and totals[DEFERRED] == 0
    assert sum(totals.values()) == 1010  # each recipient once
    assert per_domain["z.test"] == {ACCEPTED: 0, DEFERRED: 0, FAILED: 10}
