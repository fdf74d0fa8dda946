"""The sink as a source of returns: accept (250), then bounce or reply to the envelope sender.

A second sink plays the returns server and captures what the first one generates.
"""

from __future__ import annotations

import email
import smtplib
from email.message import Message
from pathlib import Path

import pytest

from helpers import wait_for
from raymail.sink import SinkConfig, SinkConfigError, iter_capture, parse_config, run_sink
from raymail.sink.capture import CapturedMessage

pytestmark = pytest.mark.timeout(60)

ORIGINAL = (
    b"From: Shop <news@shop.test>\r\nTo: {rcpt}\r\nSubject: Spring sale\r\n"
    b"Message-ID: <abc.123@shop.test>\r\nX-Raymail-Campaign: spring\r\n\r\nHello.\r\n"
)


def _send(port: int, sender: str, rcpt: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.sendmail(sender, [rcpt], ORIGINAL.replace(b"{rcpt}", rcpt.encode()))


def _returns(capture: Path, n: int) -> dict[str, tuple[str, tuple[str, ...], Message]]:
    """Captured returns by the recipient they are about: (mail_from, rcpt_tos, parsed)."""

    def captured() -> list[CapturedMessage]:
        found = list(iter_capture(capture)) if capture.exists() else []
        return found if len(found) >= n else []

    found = wait_for(f"{n} returns captured", captured, 15, 0.05)
    out = {}
    for item in found:
        parsed = email.message_from_bytes(item.raw)
        about = str(parsed["From"]) if "Delivery" not in str(parsed["From"]) else ""
        if not about:
            status = next(p for p in parsed.walk() if p.get_content_type().endswith("status"))
            about = str(_parts(status)[1]["Final-Recipient"]).split("; ")[1]
        out[about] = (item.mail_from, item.rcpt_tos, parsed)
    return out


def _parts(message: Message) -> list[Message]:
    """The parts of a multipart message (or of a message/delivery-status: its field blocks)."""
    payload = message.get_payload()
    assert isinstance(payload, list), message.get_content_type()
    return [part for part in payload if isinstance(part, Message)]


def _text(message: Message) -> str:
    """The undecoded text of a single-part message."""
    payload = message.get_payload()
    assert isinstance(payload, str), message.get_content_type()
    return payload


def test_sink_generates_dsns_and_replies_to_the_envelope_sender(tmp_path: Path) -> None:
    with run_sink(capture_dir=tmp_path / "returns") as returns_server:
        config = parse_config(
            {
                "hostname": "mx.sink.test",
                "addresses": {"gone@a.test": "bounce_hard", "away@a.test": "auto_reply",
                              "person@a.test": "human_reply"},
                "domains": {"full.test": {"returns": "bounce_soft"}},
                "returns_server": returns_server.address,
            }
        )  # fmt: skip
        with run_sink(config, capture_dir=tmp_path / "sink") as sink:
            verp = "bounces+0123abcd@bounce.test"
            for rcpt in ("gone@a.test", "anyone@full.test", "away@a.test", "person@a.test",
                         "fine@a.test"):  # fmt: skip
                _send(sink.port, verp, rcpt)
            got = _returns(tmp_path / "returns", 4)
            # counted once the returns server's session has ended
            wait_for("4 returns counted", lambda: sink.stats().returns_sent >= 4, 10, 0.05)
            stats = sink.stats()
        assert stats.accepted == 5 and stats.returns_sent == 4 and stats.returns_failed == 0
    assert set(got) == {"gone@a.test", "anyone@full.test", "away@a.test", "person@a.test"}
    assert all(rcpts == (verp,) for _, rcpts, _ in got.values())  # to the VERP address

    mail_from, _, hard = got["gone@a.test"]
    assert mail_from == "<>"  # a bounce never bounces
    assert hard.get_content_type() == "multipart/report"
    assert hard.get_param("report-type") == "delivery-status"
    assert hard["Auto-Submitted"] == "auto-replied" and hard["To"] == verp
    text, status, headers = _parts(hard)
    assert "<gone@a.test>: host mx.sink.test said: 550 5.1.1" in _text(text)
    per_message, per_recipient = _parts(status)
    assert per_message["Reporting-MTA"] == "dns; mx.sink.test"
    assert per_recipient["Final-Recipient"] == "rfc822; gone@a.test"
    assert per_recipient["Action"] == "failed" and per_recipient["Status"] == "5.1.1"
    assert per_recipient["Diagnostic-Code"].startswith("smtp; 550 5.1.1 Recipient address")
    assert headers.get_content_type() == "text/rfc822-headers"
    original = _text(headers)
    assert "Message-ID: <abc.123@shop.test>" in original and "Hello." not in original
    assert "X-Raymail-Campaign: spring" in original

    _, _, soft = got["anyone@full.test"]
    soft_status = _parts(_parts(soft)[1])[1]
    assert soft_status["Status"] == "4.2.2" and soft_status["Action"] == "failed"
    assert "452 4.2.2" in soft_status["Diagnostic-Code"]

    mail_from, _, vacation = got["away@a.test"]
    assert mail_from == "<>" and vacation["Auto-Submitted"] == "auto-replied"
    assert vacation["In-Reply-To"] == "<abc.123@shop.test>"
    assert vacation["Subject"] == "Out of Office: Spring sale"

    mail_from, _, reply = got["person@a.test"]
    assert mail_from == "person@a.test" and reply["Subject"] == "Re: Spring sale"
    assert "Auto-Submitted" not in reply and reply["References"] == "<abc.123@shop.test>"


def test_no_return_for_a_null_sender_or_without_a_returns_server(tmp_path: Path) -> None:
    config = SinkConfig.model_validate({"addresses": {"gone@a.test": "bounce_hard"}})
    with run_sink(config, capture_dir=tmp_path / "sink") as sink:
        _send(sink.port, "", "gone@a.test")  # itself a bounce: never answered with one
        _send(sink.port, "sender@s.test", "gone@a.test")  # nowhere to send the DSN
        stats = sink.stats()
    assert stats.accepted == 2
    assert (stats.returns_skipped, stats.returns_failed, stats.returns_sent) == (1, 1, 0)


def test_returns_config_is_checked() -> None:
    with pytest.raises(SinkConfigError, match=r"default\.returns"):
        parse_config({"default": {"returns": "permfail"}})
    with pytest.raises(SinkConfigError, match="returns_server"):
        parse_config({"returns_server": "no port"})
    with pytest.raises(SinkConfigError, match=r"bounce_hard_reply"):
        parse_config({"default": {"bounce_hard_reply": "250 fine"}})
    config = parse_config({"addresses": {"X@A.test": "auto_reply"}})
    assert config.addresses == {"x@a.test": "auto_reply"}
