"""The returns server over real SMTP on loopback: what it accepts, stores, decides and keeps."""

from __future__ import annotations

import os
import selectors
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from returnruns import SECRET, make_run, verp

from helpers import wait_for
from raymail.compose.verp import TokenKind, TokenSigner
from raymail.returns.archive import Archive
from raymail.returns.config import ReturnsConfig
from raymail.returns.runner import RunningReturnsServer, run_returns_server
from raymail.returns.store import ReturnsStore
from raymail.spec import ReturnsSettings

pytestmark = pytest.mark.timeout(120)


def _config(tmp_path: Path, **settings: Any) -> ReturnsConfig:
    make_run(tmp_path)
    values: dict[str, Any] = {
        "home": str(tmp_path / "home"),
        "reply_address": "reply@bounce.test",
        "abuse_address": "abuse@bounce.test",
        "max_message_bytes": 4096,
        "max_recipients": 3,
    }
    values.update(settings)
    return ReturnsConfig(settings=ReturnsSettings(**values), runs=[str(tmp_path / "runs")])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningReturnsServer]:
    with run_returns_server(_config(tmp_path), port=0, flush_interval_s=0.1) as rs:
        yield rs


def _send(rs: RunningReturnsServer, rcpt: str, message: bytes, sender: str = "") -> str:
    with smtplib.SMTP(rs.host, rs.port, timeout=10) as client:
        client.ehlo("mta.test")
        client.mail(sender)
        code, reply = client.rcpt(rcpt)
        assert code == 250, reply
        code, reply = client.data(message)
        assert code == 250, reply
    return reply.decode()


def _events(rs: RunningReturnsServer, n: int) -> list[dict[str, Any]]:
    store = ReturnsStore(rs.server.config.settings)
    wait_for(f"{n} events", lambda: store.events.read().height >= n, 20.0, 0.05)
    return store.events.read().to_dicts()


PROSE_BOUNCE = (
    b"From: MAILER-DAEMON@mx.b.test\r\nSubject: Mail delivery failed\r\n\r\n"
    b"This message was created automatically by mail delivery software.\r\n\r\n"
    b"A message that you sent could not be delivered to one or more of its recipients.\r\n"
    b"This is a permanent error. The following address(es) failed:\r\n\r\n"
    b"    mailbox no longer exists\r\n    550 5.1.1 user unknown\r\n"
)


def test_refuses_relay_unknown_and_forged_addresses(server: RunningReturnsServer) -> None:
    good = verp("bob@b.test")
    tampered = good[:20] + ("0" if good[20] != "0" else "1") + good[21:]
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.ehlo("mta.test")
        assert "auth" not in client.esmtp_features
        client.mail("")
        for address in ("someone@elsewhere.test", "bounces+x@bounce.test.attacker.test"):
            code, reply = client.rcpt(address)
            assert code == 550 and reply.startswith(b"5.7.1"), (address, reply)
        for address in (
            tampered,
            verp("bob@b.test", campaign="not-ours"),
            f"bounces+{TokenSigner('spring', 'guess').token(TokenKind.BOUNCE, None)}@bounce.test",
            "bounces@bounce.test",
            "info@bounce.test",
            verp("bob@b.test", TokenKind.UNSUBSCRIBE).replace("unsubscribe+", "bounces+"),
        ):
            code, reply = client.rcpt(address)
            assert code == 550 and reply.startswith(b"5.1.1"), (address, reply)
        for address in (good, "Reply@Bounce.test", "abuse@bounce.test"):
            assert client.rcpt(address)[0] == 250, address
        code, reply = client.rcpt("postmaster@bounce.test")
        assert code == 452 and b"Too many recipients" in reply  # max_recipients: 3
    assert server.server.stats.refused_relay == 2
    assert server.server.stats.refused_unknown == 6


def test_message_size_is_capped(server: RunningReturnsServer) -> None:
    big = b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n"
    with smtplib.SMTP(server.host, server.port, timeout=10) as client:
        client.ehlo("mta.test")
        assert client.has_extn("size") and client.esmtp_features["size"] == "4096"
        code, _ = client.mail("", options=["SIZE=9000"])
        assert code == 552
        client.rset()
        client.mail("")
        client.rcpt(verp("ann@a.test"))
        code, _ = client.data(big * 100)
        assert code == 552
    assert server.server.stats.accepted == 0


def test_dsn_to_verp_address_is_stored_classified_and_suppressed(
    server: RunningReturnsServer,
) -> None:
    reply = _send(server, verp("bob@b.test"), PROSE_BOUNCE)
    ref = reply.split("Stored as ")[1]
    message, raw = server.server.store.archive.read(ref)
    assert raw == PROSE_BOUNCE and message.mail_from == "<>"
    (event,) = _events(server, 1)
    # the bounce names nobody: the recipient comes from the VERP token via the run's list
    assert event["recipient"] == "bob@b.test" and event["campaign"] == "spring"
    assert event["category"] == "hard_bounce_address" and event["archive_ref"] == ref
    store = ReturnsStore(server.server.config.settings)
    wait_for("suppression", lambda: store.suppression.active().height == 1, 20.0, 0.05)
    assert store.suppression.active()["email"].to_list() == ["bob@b.test"]


def test_list_unsubscribe_mail_is_a_removal_request(server: RunningReturnsServer) -> None:
    _send(server, verp("cy@c.test", TokenKind.UNSUBSCRIBE), b"Subject: unsubscribe\r\n\r\n\r\n")
    (event,) = _events(server, 1)
    assert (event["recipient"], event["category"], event["source"]) == (
        "cy@c.test",
        "remove_request",
        "list-unsubscribe",
    )
    store = ReturnsStore(server.server.config.settings)
    wait_for("suppression", lambda: store.suppression.active().height == 1, 20.0, 0.05)


def test_reply_is_tied_to_its_recipient_by_message_id(server: RunningReturnsServer) -> None:
    signer = TokenSigner("spring", SECRET)
    message_id = f"<{signer.recipient_tag('ann@a.test').hex()}.{signer.campaign_tag}@shop.test>"
    reply = (
        "From: Ann at home <ann.private@home.test>\r\nTo: reply@bounce.test\r\n"
        f"Subject: Re: News\r\nIn-Reply-To: {message_id}\r\nReferences: {message_id}\r\n\r\n"
        "Do you ship to Canada?\r\n"
    ).encode()
    _send(server, "reply@bounce.test", reply, sender="ann.private@home.test")
    (event,) = _events(server, 1)
    assert (event["recipient"], event["campaign"], event["category"]) == (
        "ann@a.test",
        "spring",
        "human_reply",
    )
    # no customer service configured: it waits in the outbox, never dropped
    (item,) = server.server.store.outbox.items()
    assert item.recipient == "ann@a.test" and server.server.store.outbox.raw(item) == reply


def _serve_process(config: Path) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "raymail.cli", "returns", "serve", "--config", str(config),
         "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    buffer = b""
    deadline = time.monotonic() + 60
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while b"listening on" not in buffer:  # bounded by the deadline
            remaining = deadline - time.monotonic()
            if remaining <= 0 or proc.poll() is not None:
                proc.kill()
                raise AssertionError(f"returns server did not start: {buffer!r}")
            if selector.select(remaining):
                buffer += os.read(proc.stdout.fileno(), 4096)
    line = buffer.split(b"listening on ", 1)[1].split(b" ", 1)[0]
    return proc, int(line.rpartition(b":")[2])


def test_message_is_on_disk_before_250_and_survives_a_kill(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config_file = tmp_path / "returns.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    proc, port = _serve_process(config_file)
    try:
        body = PROSE_BOUNCE + b".a line that starts with a dot\r\n"
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.ehlo("mta.test")
            client.mail("")
            client.rcpt(verp("ann@a.test"))
            code, reply = client.data(body)
            assert code == 250
            os.kill(proc.pid, signal.SIGKILL)  # at once: no flush, no close, no seal
    finally:
        proc.kill()
        proc.wait(10)
    ref = reply.decode().split("Stored as ")[1]
    archive = Archive(config.settings.returns_dir / "archive")
    index = archive.index()  # seals the dead server's segment
    assert index["ref"].to_list() == [ref]
    assert archive.read(ref)[1] == body
    # the next start classifies what the killed server stored but never recorded
    with run_returns_server(config, port=0) as rs:
        (event,) = _events(rs, 1)
        assert event["archive_ref"] == ref and event["recipient"] == "ann@a.test"
    with run_returns_server(config, port=0) as rs:
        assert len(_events(rs, 1)) == 1  # recovered once, not again
