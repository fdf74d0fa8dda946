"""The top-level API a notebook or a Ray job imports: names, laziness, version, errors."""

from __future__ import annotations

import inspect
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import polars as pl
import pytest

import raymail
from raymail import errors


def test_every_public_name_resolves_to_what_its_module_defines() -> None:
    from raymail.driver import campaign
    from raymail.run import ledger, report

    assert raymail.run_campaign is campaign.run_campaign
    assert raymail.resume_campaign is campaign.resume_campaign
    assert raymail.build_report is report.build_report
    assert raymail.scan_outcomes is ledger.scan_outcomes
    for name in raymail.__all__:
        assert getattr(raymail, name) is not None, name


def test_dir_lists_the_api_for_completion() -> None:
    listed = dir(raymail)
    for name in ("run_campaign", "resume_campaign", "build_report", "scan_outcomes",
                 "load_spec", "CampaignSpec", "RaymailError", "__version__"):  # fmt: skip
        assert name in listed
    assert "importlib" not in listed and "TYPE_CHECKING" not in listed
    assert listed == sorted(listed)


def test_an_unknown_name_is_an_attribute_error_naming_it() -> None:
    with pytest.raises(AttributeError, match="'run_campain'"):
        raymail.run_campain  # noqa: B018


def test_the_version_comes_from_the_package_metadata() -> None:
    assert raymail.__version__ == version("raymail")


def test_the_whole_error_tree_is_exported() -> None:
    tree = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, errors.RaymailError)
    }
    assert tree <= set(raymail.__all__)
    assert raymail.RunLockedError is errors.RunLockedError
    assert issubclass(raymail.SpecError, ValueError)


def test_importing_raymail_does_not_import_ray_or_polars() -> None:
    code = (
        "import sys, raymail; raymail.RaymailError; "
        "print(sorted(m for m in ('ray', 'polars', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_scan_outcomes_reads_a_runs_ledger_lazily(tmp_path: Path) -> None:
    from raymail.delivery.records import OutcomeBuilder, now
    from raymail.run.ledger import Ledger
    from raymail.status import ACCEPTED, DEFERRED

    out = OutcomeBuilder("c", "ds0", None, 3, 1, "a.test")
    for row, status in [(1, ACCEPTED), (2, DEFERRED), (5, ACCEPTED)]:
        out.add(row, f"u{row}@a.test", status, 250, None, "ok", "mx.a.test", None, now())
    ledger = Ledger(tmp_path, 60.0)
    ledger.add(out.table(), pl.DataFrame().to_arrow())
    ledger.flush()
    frame = raymail.scan_outcomes(tmp_path)
    assert isinstance(frame, pl.LazyFrame)
    accepted = frame.filter(pl.col("status") == ACCEPTED).select("row").collect()
    assert accepted["row"].to_list() == [1, 5]


def test_scan_outcomes_is_lazy_and_empty_for_a_run_without_a_ledger(tmp_path: Path) -> None:
    frame = raymail.scan_outcomes(str(tmp_path))
    assert isinstance(frame, pl.LazyFrame)
    collected = frame.select("row", "status").collect()
    assert collected.height == 0 and collected.columns == ["row", "status"]
