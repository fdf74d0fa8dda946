"""Bad input a new user meets first: a spreadsheet's CSV, a public secret, a broken template.

Each through run_campaign (or the real CLI) against the sink on loopback: a bad row goes to
rejects.parquet and the rest is sent; what can never work stops the run before anything
is sent, with one error naming the key or template and what to do.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from conftest import make_spec
from raymail.cli import _register, app
from raymail.driver.campaign import run_campaign
from raymail.errors import SpecError, TemplateError
from raymail.run.ledger import read_outcomes
from raymail.sink import SinkConfig, read_capture, run_sink
from raymail.spec import VERP_SECRET_FILE, load_spec, parse_spec

pytestmark = pytest.mark.usefixtures("ray_session")

PEOPLE = ["Ann", "Jörg", "Zoë “Z”", "Cy", "Dee"]


def _spreadsheet_csv(path: Path, encoding: str) -> Path:
    """A list exported in cp1252: 'ö', 'ë' and curly quotes are not UTF-8 there."""
    lines = ["email,name", *(f"p{i}@a.test,{name}" for i, name in enumerate(PEOPLE))]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def _captured(capture: Path) -> pl.DataFrame:
    try:
        return read_capture(capture)
    except Exception:  # nothing was ever captured: no capture file at all
        return pl.DataFrame({"rcpt_to": []}, schema={"rcpt_to": pl.String})


def test_invalid_utf8_rows_are_rejected_and_the_rest_is_sent(tmp_path: Path) -> None:
    csv = _spreadsheet_csv(tmp_path / "export.csv", "cp1252")
    with run_sink(SinkConfig(), capture_dir=tmp_path / "cap") as sink:
        report = run_campaign(make_spec(csv, sink.port), tmp_path / "run", live_progress=False)
    assert report.accepted == 3 and report.rejected_input == 2
    rejects = pl.read_parquet(tmp_path / "run" / "rejects.parquet")
    assert rejects["row"].to_list() == [2, 3]
    assert rejects["field"].to_list() == ["name", "name"]
    assert all("not valid utf-8" in r and "recipients_encoding" in r for r in rejects["reason"])
    sent = set(read_capture(tmp_path / "cap")["rcpt_to"].to_list())
    assert sent == {"p0@a.test", "p3@a.test", "p4@a.test"}


def test_recipients_encoding_reads_the_whole_list(tmp_path: Path) -> None:
    csv = _spreadsheet_csv(tmp_path / "export.csv", "cp1252")
    with run_sink(SinkConfig(), capture_dir=tmp_path / "cap") as sink:
        spec = make_spec(csv, sink.port, recipients_encoding="cp1252")
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
    assert report.accepted == 5 and report.rejected_input == 0
    kept = pl.read_parquet(tmp_path / "run" / "recipients.parquet")
    assert kept["name"].to_list() == PEOPLE
    assert read_capture(tmp_path / "cap")["rcpt_to"].n_unique() == 5


def test_unknown_encoding_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"recipients_encoding.*unknown encoding 'klingon'"):
        make_spec(tmp_path / "x.csv", 1, recipients_encoding="klingon")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("Hi {{ name }} {{ ''.__class__.__mro__[1].__subclasses__() }}", "sandbox"),
        ("Hi {{ name }", "text template, line 1"),
        ("Hi {{ name | shout }}", "No filter named 'shout'"),
        ("Hi {{ name }}, your code {{ coupon }}", "merge field 'coupon' is missing"),
    ],
)
def test_a_template_that_can_never_render_stops_before_sending(
    tmp_path: Path, text: str, problem: str
) -> None:
    csv = _spreadsheet_csv(tmp_path / "list.csv", "utf-8")
    with run_sink(SinkConfig(), capture_dir=tmp_path / "cap") as sink:
        spec = make_spec(csv, sink.port, text=text)
        with pytest.raises(TemplateError, match="text template") as caught:
            run_campaign(spec, tmp_path / "run", live_progress=False)
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)
    assert _captured(tmp_path / "cap").height == 0
    assert read_outcomes(tmp_path / "run").height == 0


def test_a_row_specific_failure_fails_that_row_only(tmp_path: Path) -> None:
    csv = tmp_path / "list.csv"
    csv.write_text("email,n\na@a.test,0\nb@a.test,2\nc@a.test,4\n", encoding="utf-8")
    with run_sink(SinkConfig(), capture_dir=tmp_path / "cap") as sink:
        spec = make_spec(csv, sink.port, subject="Hi", text="{{ 8 // (n | int) }}")
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
    assert report.accepted == 2 and report.failed == 1


def test_the_public_example_secret_is_refused_by_the_cli(tmp_path: Path) -> None:
    data = {
        "campaign": "c",
        "sender": "news@sender.test",
        "subject": "s",
        "text": "t",
        "recipients": "list.csv",
        "verp_secret": "change-me",
    }
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data), encoding="utf-8")
    _register()
    result = CliRunner().invoke(app, ["send", str(spec), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2
    message = result.stderr if hasattr(result, "stderr") else result.output
    assert "verp_secret" in message and "secrets.token_urlsafe(32)" in message
    assert not (tmp_path / "run").exists()


def test_without_a_secret_one_is_made_once_in_raymail_home(raymail_home: Path) -> None:
    data = {"campaign": "c", "sender": "news@s.test", "subject": "s", "text": "t"}
    first = parse_spec({**data, "recipients": "a.csv"})
    secret_file = raymail_home / VERP_SECRET_FILE
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert len(first.verp_secret) >= 40 and first.verp_secret == secret_file.read_text().strip()
    spec_file = raymail_home / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({**data, "recipients": "b.csv"}), encoding="utf-8")
    assert load_spec(spec_file).verp_secret == first.verp_secret  # what the returns side loads
