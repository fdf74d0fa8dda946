"""The raymail CLI through typer's CliRunner: send, demo, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_csv
from raymail.cli import _register, app
from raymail.sink import SinkConfig, read_capture, run_sink

pytestmark = pytest.mark.usefixtures("ray_session")
_register()
runner = CliRunner()


def _spec(path: Path, port: int, extra: str = "") -> Path:
    path.write_text(
        "campaign: clitest\nsender: news@sender.test\nsubject: 'Hi {{ name }}'\n"
        "text: 'Hello {{ name }}'\nrecipients: list.csv\n"
        f"mx_override: {{'*': '127.0.0.1:{port}'}}\ndelivery_servers: 1\nconcurrency: 2\n" + extra
    )
    return path


def test_send_prints_the_report(tmp_path: Path) -> None:
    write_csv(tmp_path / "list.csv", "email,name", [f"u{i}@a.test,N{i}" for i in range(25)])
    with run_sink(SinkConfig(), capture_dir=tmp_path / "cap") as sink:
        spec = _spec(tmp_path / "c.yaml", sink.port)
        result = runner.invoke(app, ["send", str(spec), "--run-dir", str(tmp_path / "r"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["accepted"] == 25 and report["campaign"] == "clitest"
    assert (tmp_path / "r" / "report.json").exists()


@pytest.mark.parametrize(
    ("extra", "csv", "message"),
    [
        ("subjekt: x\n", "email,name\na@b.test,A\n", "unknown key 'subjekt'"),
        ("", None, "list.csv"),
        ("", "mail,name\na@b.test,A\n", "email"),
    ],
)
def test_send_input_errors_are_one_line(
    tmp_path: Path, extra: str, csv: str | None, message: str
) -> None:
    if csv is not None:
        (tmp_path / "list.csv").write_text(csv)
    spec = _spec(tmp_path / "c.yaml", 1, extra)
    result = runner.invoke(app, ["send", str(spec), "--run-dir", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.output.strip().startswith("error:")


def test_demo_sends_each_generated_recipient_once(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--recipients", "600", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["accepted"] == 600
    assert report["sink"]["distinct_recipients"] == 600
    assert report["sink"]["recipients_more_than_once"] == 0
    per_rcpt = read_capture(out / "capture").group_by("rcpt_to").len()
    assert per_rcpt.height == 600 and per_rcpt["len"].max() == 1
    again = runner.invoke(app, ["demo", "--recipients", "10", "--out", str(out)])
    assert again.exit_code != 0 and "exists" in again.output
