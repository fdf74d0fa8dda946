"""Forwarding to customer service: the outbox keeps a message until a real SMTP server took it."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

from typer.testing import CliRunner

from raymail.cli import _register, app
from raymail.returns.forward import FORWARDED_LOG, Forwarder, Outbox
from raymail.sink import iter_capture, run_sink
from raymail.spec import ReturnsSettings

REPLY = (
    b"From: Pat <pat@customer.test>\r\nTo: reply@bounce.test\r\nSubject: Re: News\r\n"
    b"Message-ID: <r1@customer.test>\r\n\r\nWhere is my parcel?\r\n.leading dot line\r\n"
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _settings(tmp_path: Path, port: int, **retry: float) -> ReturnsSettings:
    return ReturnsSettings(
        home=str(tmp_path / "home"),
        customer_service=f"127.0.0.1:{port}",
        customer_service_address="help@shop.test",
        forward_retry={"max_attempts": 3, "initial_backoff_s": 0.0, **retry},
    )


def _outbox(settings: ReturnsSettings) -> Outbox:
    return Outbox(settings.returns_dir / "outbox")


def test_forward_waits_while_customer_service_is_down_then_delivers(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens here yet: customer service is down
    settings = _settings(tmp_path, port)
    outbox = _outbox(settings)
    assert outbox.enqueue(
        REPLY, archive_ref="seg-a:0", recipient="pat@customer.test", campaign="c1",
        category="human_reply",
    )  # fmt: skip
    forwarder = Forwarder(outbox, settings)
    down = asyncio.run(forwarder.run_due())
    assert down.failed == ["seg-a-0"] and down.sent == [] and down.waiting == 1
    item = outbox.items()[0]
    assert item.attempts == 1 and "Connect" in item.last_error and not item.parked
    # a new process sees the same outbox (it is on disk)
    outbox = _outbox(settings)
    assert [i.id for i in outbox.items()] == ["seg-a-0"]

    with run_sink(port=port, capture_dir=tmp_path / "cs") as sink:
        up = asyncio.run(Forwarder(outbox, settings).run_due())
        assert sink.stats().accepted == 1
    assert up.sent == ["seg-a-0"] and up.waiting == 0
    captured = list(iter_capture(tmp_path / "cs"))
    assert len(captured) == 1
    assert captured[0].rcpt_tos == ("help@shop.test",)
    assert captured[0].mail_from == "<>"  # null sender: a failed forward never comes back
    raw = captured[0].raw
    head, _, original = raw.partition(b"X-Raymail-Campaign: c1\r\n")
    assert original == REPLY  # unchanged, dot line included
    assert b"X-Raymail-Recipient: pat@customer.test\r\n" in head
    assert b"X-Raymail-Forwarded: human_reply; archive=seg-a:0\r\n" in head
    log = [json.loads(line) for line in (outbox.folder / FORWARDED_LOG).read_text().splitlines()]
    assert [entry["id"] for entry in log] == ["seg-a-0"]
    # the same archived message is never forwarded twice
    assert not _outbox(settings).enqueue(
        REPLY, archive_ref="seg-a:0", recipient=None, campaign=None, category="human_reply"
    )


def test_failed_forward_is_parked_not_lost_and_the_cli_retries_it(tmp_path: Path) -> None:
    port = _free_port()
    settings = _settings(tmp_path, port, initial_backoff_s=60.0)
    outbox = _outbox(settings)
    outbox.enqueue(REPLY, archive_ref="seg-b:7", recipient=None, campaign=None,
                   category="challenge_response")  # fmt: skip
    forwarder = Forwarder(outbox, settings)
    first = asyncio.run(forwarder.run_due())
    assert first.failed == ["seg-b-7"]
    assert asyncio.run(forwarder.run_due()).failed == []  # backoff: not due yet
    clock = [outbox.items()[0].next_at + 1]
    later = Forwarder(outbox, settings, clock=lambda: clock[0])
    for _ in range(2):  # attempts 2 and 3: the last one parks it
        asyncio.run(later.run_due())
        clock[0] = outbox.items()[0].next_at + 1
    item = outbox.items()[0]
    assert item.attempts == 3 and item.parked
    assert asyncio.run(later.run_due()).failed == []  # parked: no automatic retries
    assert outbox.raw(item) == REPLY  # still there

    config = tmp_path / "returns.yaml"
    config.write_text(json.dumps({"settings": settings.model_dump(mode="json")}))
    _register()
    with run_sink(port=port, capture_dir=tmp_path / "cs"):
        result = CliRunner().invoke(app, ["returns", "forward", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["sent"] == ["seg-b-7"]
    assert outbox.items() == []


def test_without_customer_service_messages_wait(tmp_path: Path) -> None:
    settings = ReturnsSettings(home=str(tmp_path / "home"))
    outbox = _outbox(settings)
    outbox.enqueue(REPLY, archive_ref="seg-c:1", recipient=None, campaign=None,
                   category="human_reply")  # fmt: skip
    result = asyncio.run(Forwarder(outbox, settings).run_due())
    assert result.waiting == 1 and "no customer_service" in result.note
