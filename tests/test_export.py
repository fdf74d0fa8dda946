"""`raymail export` and RunExport to a folder: results copied, working files left behind."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from conftest import make_spec
from raymail.cli import _register, app
from raymail.run.export import RunExport
from raymail.run.rundir import RunDir

_register()
runner = CliRunner()


def _run_dir(tmp_path: Path, export: str | None) -> Path:
    run = tmp_path / "run"
    RunDir(run).create(make_spec(tmp_path / "list.csv", 2525, export=export))
    (run / "outcomes").mkdir()
    pq.write_table(pa.table({"row": [1, 2]}), run / "outcomes" / "part-000000.parquet")
    (run / "journal").mkdir()
    (run / "journal" / "ds0.log").write_text("I 1 1 1\n")
    return run


def test_export_command_copies_results_not_working_files(tmp_path: Path) -> None:
    dest = tmp_path / "shared" / "spring"
    run = _run_dir(tmp_path, str(dest))
    result = runner.invoke(app, ["export", str(run)])
    assert result.exit_code == 0, result.output
    assert "2 file(s) copied" in result.output  # one ledger part, run.json
    copied = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert copied == ["outcomes/part-000000.parquet", "run.json"]
    assert pq.read_table(dest / "outcomes").num_rows == 2

    # New parts go; parts already there do not go again.
    pq.write_table(pa.table({"row": [3]}), run / "outcomes" / "part-000001.parquet")
    exporter = RunExport(run, str(dest))
    assert exporter.sync() == 2  # the new part, and run.json (this exporter never sent it)
    assert exporter.sync() == 0


def test_export_without_destination_is_a_one_line_error(tmp_path: Path) -> None:
    run = _run_dir(tmp_path, None)
    result = runner.invoke(app, ["export", str(run)])
    assert result.exit_code == 2 and "--to" in result.output
