"""Import (Maildir, mbox, .eml, run ledgers), the returns report, and re-classification."""

from __future__ import annotations

import json
import mailbox
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from returnruns import make_run, verp
from typer.testing import CliRunner

from raymail.cli import _register, app
from raymail.delivery.records import OutcomeBuilder
from raymail.returns.config import ReturnsConfig
from raymail.returns.events import events_for
from raymail.returns.importer import import_messages
from raymail.returns.process import ReturnsProcessor
from raymail.returns.reclassify import reclassify
from raymail.returns.report import returns_report
from raymail.returns.store import ReturnsStore
from raymail.returns.verdict import Classification
from raymail.run.ledger import Ledger
from raymail.spec import ReturnsSettings
from raymail.status import ACCEPTED, FAILED

DSN = (
    "From: MAILER-DAEMON@mx.a.test\r\nTo: {verp}\r\nDelivered-To: {verp}\r\n"
    "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
    'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
    "--b\r\nContent-Type: text/plain\r\n\r\nI'm sorry.\r\n"
    "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.a.test\r\n\r\n"
    "Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: {status}\r\n"
    "Diagnostic-Code: smtp; {diag}\r\n\r\n--b--\r\n"
)
VACATION = (
    b"From: dee@d.test\r\nTo: bounces@bounce.test\r\nSubject: Out of office\r\n"
    b"Auto-Submitted: auto-replied\r\n\r\nI am away until Monday.\r\n"
)


def _dsn(rcpt: str, status: str, diag: str) -> bytes:
    return DSN.format(verp=verp(rcpt), rcpt=rcpt, status=status, diag=diag).encode()


def _config(tmp_path: Path) -> ReturnsConfig:
    make_run(tmp_path)
    settings = ReturnsSettings(home=str(tmp_path / "home"), max_message_bytes=2048)
    return ReturnsConfig(settings=settings, runs=[str(tmp_path / "runs")])


def _mail(tmp_path: Path) -> Path:
    root = tmp_path / "inbox"
    root.mkdir()
    box = mailbox.Maildir(str(root / "maildir"), create=True)
    box.add(_dsn("ann@a.test", "5.1.1", "550 5.1.1 no such user"))
    mbox = mailbox.mbox(str(root / "old.mbox"), create=True)
    mbox.add(_dsn("bob@b.test", "4.2.2", "452 4.2.2 mailbox full"))
    mbox.add(VACATION)
    mbox.flush()
    mbox.close()
    (root / "single.eml").write_bytes(_dsn("cy@c.test", "5.7.1", "550 5.7.1 blocked by policy"))
    (root / "empty.eml").write_bytes(b"")
    (root / "huge.eml").write_bytes(b"Subject: x\r\n\r\n" + b"y" * 4000)
    return root


def _cli(*args: str) -> Any:
    _register()
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_import_archives_classifies_and_skips_duplicates(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config_file = tmp_path / "returns.json"
    config_file.write_text(config.model_dump_json())
    inbox = _mail(tmp_path)
    first = json.loads(_cli("returns", "import", str(inbox), "-c", str(config_file)).output)
    assert first["messages"] == 4 and first["rejected"] == 2 and first["duplicates"] == 0
    assert first["suppressed"] == 1  # ann: hard bounce; bob: one soft bounce; cy: blocked
    again = json.loads(_cli("returns", "import", str(inbox), "-c", str(config_file)).output)
    assert again["messages"] == 0 and again["duplicates"] == 4

    store = ReturnsStore(config.settings)
    events = {e["recipient"]: e for e in store.events.read().to_dicts()}
    assert {r: e["category"] for r, e in events.items()} == {
        "ann@a.test": "hard_bounce_address",
        "bob@b.test": "mailbox_full",
        "cy@c.test": "blocked",
        "dee@d.test": "auto_reply",
    }
    assert events["ann@a.test"]["campaign"] == "spring"  # from the Delivered-To token
    assert store.archive.index()["source"].unique().to_list() == ["import"]
    rejects = {Path(str(r["item"])).name: str(r["reason"]) for r in store.rejects()}
    assert rejects["empty.eml"] == "unreadable or empty"
    assert "larger than max_message_bytes" in rejects["huge.eml"]


def _ledger_run(tmp_path: Path) -> Path:
    run = make_run(tmp_path, "autumn")
    ledger = Ledger(run)
    out = OutcomeBuilder("autumn", "ds0", None, 0, 1, "a.test")
    started = datetime.now(UTC)
    for row, email, status, code, enhanced, text in (
        (1, "ann@a.test", FAILED, 550, "5.1.1", "550 5.1.1 <ann@a.test>: user unknown"),
        (2, "bob@b.test", FAILED, 554, "5.7.1", "554 5.7.1 Service unavailable; client "
         "host blocked using zen.spamhaus.org"),
        (3, "cy@c.test", FAILED, None, None, "template: merge field 'x' is missing"),
        (4, "dee@gone.test", FAILED, None, None, "gone.test has no MX records and no address"),
        (5, "eve@a.test", ACCEPTED, 250, "2.0.0", "250 2.0.0 OK"),
    ):  # fmt: skip
        out.add(row=row, email=email, status=status, smtp_code=code, enhanced_status=enhanced,
                response=text, mx_host=None, message_id=None, started_at=started)  # fmt: skip
    ledger.add(out.table(), pa.table({}))
    ledger.flush()
    return run


def test_ledger_rejections_become_events_once(tmp_path: Path) -> None:
    config = _config(tmp_path)
    run = _ledger_run(tmp_path)
    config_file = tmp_path / "returns.json"
    config_file.write_text(config.model_dump_json())
    result = json.loads(_cli("returns", "import", str(run), "-c", str(config_file)).output)
    assert result["events"] == 3 and result["suppressed"] == 2
    assert result["ledger_runs"] == [str(run)]
    store = ReturnsStore(config.settings)
    events = {e["recipient"]: e for e in store.events.read().to_dicts()}
    assert set(events) == {"ann@a.test", "bob@b.test", "dee@gone.test"}  # not the template
    assert events["ann@a.test"]["category"] == "hard_bounce_address"
    assert events["bob@b.test"]["category"] == "blocked"  # our reputation, not the address
    assert events["dee@gone.test"]["category"] == "hard_bounce_domain"
    assert {e["source"] for e in events.values()} == {"ledger"}
    assert sorted(store.suppression.active()["email"].to_list()) == ["ann@a.test", "dee@gone.test"]
    again = json.loads(_cli("returns", "import", str(run), "-c", str(config_file)).output)
    assert again["events"] == 0


def test_report_summarises_by_category_reason_and_domain(tmp_path: Path) -> None:
    config = _config(tmp_path)
    processor = ReturnsProcessor(ReturnsStore(config.settings), config.registry())
    import_messages([_mail(tmp_path)], processor)
    report = returns_report(processor.store)
    assert report["messages"] == 4 and report["events"] == 4 and report["rejects"] == 2
    assert report["by_category"]["auto_reply"] == 1
    assert report["by_category"]["hard_bounce_address"] == 1
    assert {"category": "mailbox_full", "reason": "mailboxfull", "count": 1} in report["by_reason"]
    assert report["by_domain"]["a.test"] == {"hard_bounce_address": 1}
    assert report["suppressed"] == 1 and report["by_campaign"]["spring"] >= 2
    config_file = tmp_path / "returns.json"
    config_file.write_text(config.model_dump_json())
    as_json = json.loads(_cli("returns", "report", "--json", "-c", str(config_file)).output)
    assert as_json["by_category"] == report["by_category"]
    table = _cli("returns", "report", "-c", str(config_file)).output
    assert "by category and reason" in table and "mailboxfull" in table


def test_reclassify_reports_and_applies_changed_verdicts(tmp_path: Path) -> None:
    config = _config(tmp_path)
    store = ReturnsStore(config.settings)
    processor = ReturnsProcessor(store, config.registry())
    raw = _dsn("ann@a.test", "5.1.1", "550 5.1.1 no such user")
    message = store.archive.append(raw, mail_from="<>", rcpt_tos=[verp("ann@a.test")],
                                   source="smtp", label="old")  # fmt: skip
    # what an older classifier said about it
    old = Classification("unknown", "undefined", recipients=["ann@a.test"], source="none")
    store.events.add(events_for(old, message, campaign="spring"))
    processor.process(*store.archive.read(
        store.archive.append(VACATION, mail_from="", rcpt_tos=[], source="smtp", label="v").ref
    ))  # fmt: skip
    processor.flush()
    store.archive.close()
    assert store.suppression.active().height == 0

    dry = reclassify(processor)
    assert dry.messages == 2 and dry.changed == 1 and not dry.applied
    assert dry.transitions == {"unknown -> hard_bounce_address": 1}
    assert dry.changed_refs == [message.ref]
    assert store.suppression.active().height == 0  # a dry run records nothing

    config_file = tmp_path / "returns.json"
    config_file.write_text(config.model_dump_json())
    applied = json.loads(_cli("returns", "reclassify", "--apply", "-c", str(config_file)).output)
    assert applied["changed"] == 1 and applied["newly_suppressed"] == ["ann@a.test"]
    current = store.events.read().filter(archive_ref=message.ref)
    assert current["category"].to_list() == ["hard_bounce_address"]  # the new verdict wins
    assert store.events.read(current=False).height == 3  # the old one is kept
    assert reclassify(processor).changed == 0
