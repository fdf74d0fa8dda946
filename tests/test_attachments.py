"""Attachments: multipart/mixed with base64 parts, per campaign and per recipient; missing
or oversized files are a spec error (campaign) or a rejected row with the reason."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import polars as pl
import pytest

from conftest import make_spec, write_csv
from raymail.compose.checks import recipient_checks
from raymail.compose.message import MessageTemplate
from raymail.driver.campaign import run_campaign
from raymail.errors import SpecError
from raymail.intake.recipients import intake_recipients
from raymail.sink import SinkConfig, read_capture, run_sink
from raymail.spec import load_spec


def _files(tmp_path: Path) -> tuple[Path, Path, Path]:
    brochure = tmp_path / "brochure.pdf"
    brochure.write_bytes(b"%PDF-1.4 " + bytes(range(256)) * 40)
    invoice = tmp_path / "invoices" / "inv-1.csv"
    invoice.parent.mkdir()
    invoice.write_text("item,price\nbook,12\n", encoding="utf-8")
    accent = tmp_path / "invoices" / "reçu été.txt"
    accent.write_text("merci\n", encoding="utf-8")
    return brochure, invoice, accent


def _parts(raw: bytes) -> list[email.message.MIMEPart]:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message.get_content_type() == "multipart/mixed"
    return list(message.iter_parts())


def test_campaign_and_recipient_files_become_base64_parts(tmp_path: Path) -> None:
    brochure, invoice, accent = _files(tmp_path)
    spec = make_spec(
        tmp_path / "list.csv",
        25,
        html="<p>Hi {{ name }}</p>",
        attachments={"files": [str(brochure)], "column": "files"},
    )
    template = MessageTemplate(spec)
    assert not template.shareable  # a per-recipient column: one message each
    raw = template.render("a@x.test", {"name": "Ann", "files": f"invoices/inv-1.csv; {accent}"})
    body, *attached = _parts(raw)
    assert body.get_content_type() == "multipart/alternative"
    names = [p.get_filename() for p in attached]
    assert names == ["brochure.pdf", "inv-1.csv", "reçu été.txt"]  # RFC 2231 for the last
    assert attached[0].get_content_type() == "application/pdf"
    assert attached[0]["Content-Transfer-Encoding"] == "base64"
    assert attached[0].get_content() == brochure.read_bytes()
    assert attached[1].get_content().replace("\r\n", "\n") == invoice.read_text()
    body_lines = raw.split(b"\r\n\r\n", 1)[1].split(b"\r\n")
    assert max(map(len, body_lines)) <= 78  # base64 in 76-character lines
    # Without a per-recipient column the campaign's files ride on a shared message too.
    shared = MessageTemplate(
        make_spec(
            tmp_path / "list.csv",
            25,
            subject="Hi",
            text="Hello\n",
            attachments={"files": [str(brochure)]},
        )
    )
    assert shared.shareable
    body, pdf = _parts(shared.render_shared(["a@x.test", "b@x.test"]))
    assert body.get_content() == "Hello\r\n" and pdf.get_content() == brochure.read_bytes()


def test_campaign_file_missing_or_too_big_is_a_spec_error(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(b"x" * 2000)
    for files, cap, message in (
        (["nope.pdf"], 10_000, r"attachments.files': attachment .*nope.pdf: file not found"),
        (["big.bin"], 1000, r"2000 bytes in all, above attachments.max_bytes \(1000\)"),
    ):
        path = tmp_path / "c.yaml"
        path.write_text(
            "campaign: c\nsender: a@s.test\nsubject: s\ntext: t\nrecipients: l.csv\n"
            f"attachments: {{files: {files}, max_bytes: {cap}}}\n",
            encoding="utf-8",
        )
        with pytest.raises(SpecError, match=message):
            load_spec(path)


def test_rows_with_missing_or_oversized_files_are_rejected_with_the_reason(tmp_path: Path) -> None:
    brochure, _, _ = _files(tmp_path)
    (tmp_path / "huge.bin").write_bytes(b"x" * 20_000)
    csv = write_csv(
        tmp_path / "list.csv",
        "email,name,files",
        [
            "ok@x.test,A,invoices/inv-1.csv",
            "gone@x.test,B,invoices/missing.pdf",
            "huge@x.test,C,huge.bin",
            "none@x.test,D,",
        ],
    )
    spec = make_spec(
        csv, 25, attachments={"files": [str(brochure)], "column": "files", "max_bytes": 15_000}
    )
    run = tmp_path / "run"
    run.mkdir()
    result = intake_recipients(csv, run, "recipients.parquet", row_check=recipient_checks(spec))
    assert (result.accepted, result.rejected) == (2, 2)
    kept = pl.read_parquet(run / "recipients.parquet")["email"].to_list()
    assert kept == ["ok@x.test", "none@x.test"]
    rejects = pl.read_parquet(run / "rejects.parquet").sort("row")
    assert rejects["row"].to_list() == [2, 3] and set(rejects["field"]) == {"files"}
    gone, huge = rejects["reason"].to_list()
    assert "missing.pdf: file not found" in gone
    assert "above attachments.max_bytes (15000)" in huge


@pytest.mark.usefixtures("ray_session")
@pytest.mark.slow
def test_attachments_reach_the_sink(tmp_path: Path) -> None:
    brochure, _, _ = _files(tmp_path)
    csv = write_csv(
        tmp_path / "list.csv",
        "email,name,files",
        [f"u{i}@d{i % 2}.test,N{i},invoices/inv-1.csv" for i in range(20)]
        + ["bad@d0.test,Bad,invoices/absent.csv"],
    )
    with run_sink(SinkConfig(), capture_dir=tmp_path / "cap") as sink:
        spec = make_spec(csv, sink.port, attachments={"files": [str(brochure)], "column": "files"})
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
    assert report.accepted == 20 and report.rejected_input == 1
    captured = read_capture(tmp_path / "cap", with_data=True)
    assert captured.height == 20 and "bad@d0.test" not in captured["rcpt_to"].to_list()
    for raw in captured["data"].to_list():
        _, pdf, invoice = _parts(raw)
        assert pdf.get_content() == brochure.read_bytes()
        assert invoice.get_filename() == "inv-1.csv"
