"""``raymail returns classify`` and classify_paths over files, directories, Maildir and mbox."""

from __future__ import annotations

import json
import mailbox
import shutil
from pathlib import Path

import polars as pl
import typer
from typer.testing import CliRunner

from raymail.cli import returns as returns_cli
from raymail.returns import classify_paths

DATA = Path(__file__).resolve().parents[1] / "data" / "returns"
COLUMNS = {"path", "category", "reason", "recipients", "status", "smtp_code", "diagnostic"}


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        """Test root."""

    returns_cli.register(app)
    return app


def test_cli_prints_json_lines(tmp_path: Path) -> None:
    for name in ("dsn_postfix_userunknown", "vacation_de", "arf_abuse"):
        shutil.copy(DATA / f"{name}.eml", tmp_path / f"{name}.eml")
    result = CliRunner().invoke(_app(), ["returns", "classify", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert len(rows) == 3
    assert all(set(row) >= COLUMNS for row in rows)
    by_name = {Path(row["path"]).stem: row for row in rows}
    assert by_name["dsn_postfix_userunknown"]["category"] == "hard_bounce_address"
    assert by_name["dsn_postfix_userunknown"]["recipients"] == ["rcpt@example.org"]
    assert by_name["dsn_postfix_userunknown"]["smtp_code"] == 550
    assert by_name["vacation_de"]["category"] == "auto_reply"
    assert by_name["arf_abuse"]["category"] == "complaint"


def test_cli_missing_path_is_a_clean_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(_app(), ["returns", "classify", str(tmp_path / "nope")])
    assert result.exit_code == 2


def test_classify_paths_reads_maildir_and_mbox(tmp_path: Path) -> None:
    names = ["dsn_spam", "text_qmail_userunknown", "remove_de"]
    maildir = mailbox.Maildir(str(tmp_path / "Maildir"), create=True)
    box = mailbox.mbox(str(tmp_path / "returns.mbox"), create=True)
    for name in names:
        raw = (DATA / f"{name}.eml").read_bytes()
        maildir.add(raw)
        box.add(raw)
    box.flush()
    box.close()
    single = tmp_path / "single.eml"
    shutil.copy(DATA / "dsn_virus.eml", single)

    frame = classify_paths([tmp_path / "Maildir", tmp_path / "returns.mbox", single])
    assert isinstance(frame, pl.DataFrame)
    assert set(frame.columns) >= COLUMNS
    assert frame.height == 7
    assert frame.schema["recipients"] == pl.List(pl.String())
    assert frame.schema["smtp_code"] == pl.Int64()
    counts = dict(frame.group_by("category").len().iter_rows())
    assert counts == {"content_rejected": 3, "hard_bounce_address": 2, "remove_request": 2}
    mbox_rows = frame.filter(pl.col("path").str.contains("returns.mbox#"))
    assert mbox_rows.height == 3


def test_classify_paths_empty() -> None:
    frame = classify_paths([])
    assert frame.height == 0
    assert set(frame.columns) >= COLUMNS


def test_cli_classify_loads_no_cli_framework(tmp_path: Path) -> None:
    """`raymail returns classify` skips typer, rich, pydantic, pyarrow and polars (start-up)."""
    import subprocess
    import sys

    shutil.copy(DATA / "dsn_postfix_userunknown.eml", tmp_path / "a.eml")
    probe = (
        "import sys\nfrom raymail.cli import main\n"
        f"sys.argv = ['raymail', 'returns', 'classify', {str(tmp_path)!r}]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'typer', 'rich', 'pydantic', 'pyarrow', 'polars', 'click'})\n"
        "print(code, heavy, file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stderr.strip().splitlines()[-1] == "0 []", done.stderr
    row = json.loads(done.stdout.splitlines()[0])
    assert row["reason"] == "userunknown" and row["recipients"]
    missing = subprocess.run(
        [sys.executable, "-m", "raymail.cli", "returns", "classify", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "no such file or directory" in missing.stderr
