"""The pipelining SMTP client against the real embedded sink on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from raymail.delivery.smtp_client import ConnectionDropped, SmtpConnection, dot_stuff
from raymail.sink import SinkConfig, read_capture, run_sink


async def _open(port: int) -> SmtpConnection:
    return await SmtpConnection.open(
        "127.0.0.1", port, helo_name="client.test", connect_timeout=5, command_timeout=5
    )


def test_dot_stuff_normalises_and_terminates() -> None:
    assert dot_stuff(b".a\n.b\r\nc") == b"..a\r\n..b\r\nc\r\n.\r\n"
    assert dot_stuff(b"x\r\n") == b"x\r\n.\r\n"


def test_pipelined_transaction_mixed_recipients(tmp_path: Path) -> None:
    config = SinkConfig(addresses={"bad@d.test": "permfail", "later@d.test": "tempfail"})
    with run_sink(config, capture_dir=tmp_path) as sink:

        async def go() -> None:
            conn = await _open(sink.port)
            assert conn.pipelining
            tx = await conn.send(
                "bounces@s.test",
                ["ok@d.test", "bad@d.test", "later@d.test"],
                b"Subject: x\r\n\r\n.leading dot\r\nbody\r\n",
            )
            assert [r.code // 100 for r in tx.rcpts] == [2, 5, 4]
            assert tx.rcpts[1].enhanced is not None and tx.rcpts[1].enhanced.startswith("5.")
            assert tx.data is not None and tx.data.code == 250
            # the connection is reusable for a second transaction
            tx2 = await conn.send("bounces@s.test", ["ok2@d.test"], b"Subject: y\r\n\r\nz\r\n")
            assert tx2.data is not None and tx2.data.code == 250
            assert conn.transactions == 2
            await conn.quit()

        asyncio.run(go())
    captured = read_capture(tmp_path)
    assert sorted(captured["rcpt_to"].to_list()) == ["ok2@d.test", "ok@d.test"]
    raw = [m for m in captured.iter_rows(named=True) if m["rcpt_to"] == "ok@d.test"]
    assert raw


def test_lockstep_when_pipelining_not_used(tmp_path: Path) -> None:
    with run_sink(SinkConfig(), capture_dir=tmp_path) as sink:

        async def go() -> None:
            conn = await _open(sink.port)
            conn.extensions.pop("PIPELINING", None)
            tx = await conn.send("b@s.test", ["a@d.test", "b@d.test"], b"Subject: x\r\n\r\nhi\r\n")
            assert [r.code for r in tx.rcpts] == [250, 250]
            assert tx.data is not None and tx.data.code == 250
            await conn.quit()

        asyncio.run(go())
    assert read_capture(tmp_path).height == 2


def test_all_recipients_refused_sends_no_data(tmp_path: Path) -> None:
    config = SinkConfig(addresses={"x@d.test": "permfail"})
    with run_sink(config, capture_dir=tmp_path) as sink:

        async def go() -> None:
            conn = await _open(sink.port)
            tx = await conn.send("b@s.test", ["x@d.test"], b"Subject: x\r\n\r\nhi\r\n")
            assert tx.rcpts[0].code // 100 == 5
            assert tx.data is None
            tx2 = await conn.send("b@s.test", ["y@d.test"], b"Subject: x\r\n\r\nhi\r\n")
            assert tx2.data is not None and tx2.data.code == 250
            await conn.quit()

        asyncio.run(go())
    assert read_capture(tmp_path)["rcpt_to"].to_list() == ["y@d.test"]


def test_drop_mid_data_is_reported_with_data_sent(tmp_path: Path) -> None:
    config = SinkConfig(addresses={"gone@d.test": "drop"})
    with run_sink(config, capture_dir=tmp_path) as sink:

        async def go() -> None:
            conn = await _open(sink.port)
            with pytest.raises(ConnectionDropped) as info:
                await conn.send("b@s.test", ["gone@d.test"], b"Subject: x\r\n\r\nhi\r\n")
            assert info.value.data_sent
            assert conn.broken

        asyncio.run(go())
    assert read_capture(tmp_path).height == 0


def test_connect_refused_is_connection_dropped() -> None:
    with run_sink(SinkConfig()) as sink:
        port = sink.port
    with pytest.raises(ConnectionDropped):
        asyncio.run(_open(port))


def test_envelope_rejects_injection() -> None:
    with run_sink(SinkConfig()) as sink:

        async def go() -> None:
            conn = await _open(sink.port)
            with pytest.raises(ValueError):
                await conn.send("b@s.test", ["a@d.test>\r\nRCPT TO:<x@y"], b"x\r\n")
            await conn.quit()

        asyncio.run(go())
