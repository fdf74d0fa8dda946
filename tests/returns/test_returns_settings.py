"""ReturnsSettings in the campaign spec and the returns config; the driver's resume rule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymail.driver.campaign import CampaignDriver
from raymail.errors import ReturnsError, SpecError
from raymail.returns.config import parse_returns_config
from raymail.run.rundir import RECIPIENTS, RunDir
from raymail.spec import parse_spec
from raymail.status import ACCEPTED, SUPPRESSED

BASE: dict[str, Any] = {
    "campaign": "c",
    "sender": "news@shop.test",
    "subject": "s",
    "text": "t",
    "recipients": "r.csv",
}


def test_defaults_live_under_raymail_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RAYMAIL_HOME", str(tmp_path / "rm"))
    spec = parse_spec({**BASE, "returns": {}})
    assert spec.returns is not None
    assert spec.returns.suppression_file == tmp_path / "rm" / "suppression.parquet"
    assert spec.returns.returns_dir == tmp_path / "rm" / "returns"
    rules = spec.returns.rules
    assert (rules.hard_bounce_after, rules.soft_bounce_after) == (1, 3)
    assert rules.soft_bounce_window_days == 30 and rules.complaints and rules.remove_requests
    assert parse_spec(BASE).returns is None


def test_errors_name_the_key() -> None:
    typo = r"unknown key 'returns\.rules\.soft_bounce_aftr' \(did you mean 'soft_bounce_after'\?\)"
    with pytest.raises(SpecError, match=typo):
        parse_spec({**BASE, "returns": {"rules": {"soft_bounce_aftr": 2}}})
    with pytest.raises(SpecError, match=r"returns\.abuse_address"):
        parse_spec({**BASE, "returns": {"abuse_address": "not an address"}})
    with pytest.raises(SpecError, match="customer_service_address"):
        parse_spec({**BASE, "returns": {"customer_service": "127.0.0.1:25"}})
    with pytest.raises(SpecError, match=r"returns\.rules\.hard_bounce_after"):
        parse_spec({**BASE, "returns": {"rules": {"hard_bounce_after": 0}}})
    with pytest.raises(ReturnsError, match=r"unknown key 'setings' \(did you mean 'settings'\?\)"):
        parse_returns_config({"setings": {}}, "returns.yaml")


def test_returns_section_survives_the_run_directory(tmp_path: Path) -> None:
    spec = parse_spec({**BASE, "returns": {"home": str(tmp_path), "rules": {"complaints": False}}})
    run = RunDir(tmp_path / "run")
    run.create(spec)
    assert run.spec().returns == spec.returns


def test_resume_treats_suppressed_rows_as_settled(tmp_path: Path) -> None:
    spec = parse_spec(BASE)
    driver = CampaignDriver(spec, RunDir(tmp_path / "run"), resume=True)
    recipients = pa.table(
        {"row": [1, 2, 3], "email": ["a@x.test", "b@x.test", "c@x.test"], "domain": ["x.test"] * 3}
    )
    final = pl.DataFrame(
        {"row": [1, 2], "status": [ACCEPTED, SUPPRESSED], "attempt": [1, 0], "portion": [0, None]},
        schema={"row": pl.Int64, "status": pl.String, "attempt": pl.Int32, "portion": pl.Int64},
    )
    (tmp_path / "run").mkdir(exist_ok=True)
    pq.write_table(recipients, tmp_path / "run" / RECIPIENTS)
    remaining, _tally = driver._remaining(final)  # the rest of the list, as a stream
    planned = [rows for _, rows in remaining.next_portions()]
    assert [r for rows in planned for r in rows.column("row").to_pylist()] == [3]
    assert remaining.exhausted
