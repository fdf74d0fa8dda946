"""The SMTP client's reply parsing over real loopback sockets.

Two kinds of real server: Postfix's smtp-sink (pipelining, drops, 421s, slow DATA), and
small scripted asyncio servers in the test's own loop that write replies in chosen
fragments (a multi-line reply split mid-line across segments, a reply cut off by close),
which no off-the-shelf server does on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from helpers.certs import self_signed
from helpers.postfix_mta import smtp_sink
from raymail.delivery.smtp_client import ConnectionDropped, SmtpConnection
from raymail.errors import SmtpProtocolError
from raymail.sink import read_capture, run_sink

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Run = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    """Runs a test's coroutine on the stdlib loop and on uvloop (Ray's async actors, so
    the delivery servers, run on uvloop; its transports do not subclass asyncio's)."""
    if request.param == "asyncio":
        return asyncio.run
    uvloop = pytest.importorskip("uvloop")

    def on_uvloop(main: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)

    return on_uvloop


@contextlib.asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[int]:
    """A loopback server running ``script`` for each connection; yields its port."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def _send_pieces(writer: asyncio.StreamWriter, *pieces: bytes) -> None:
    """Each piece its own segment (the server's socket has TCP_NODELAY, and it waits)."""
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.05)


async def _open(port: int, timeout: float = 5.0) -> SmtpConnection:
    return await SmtpConnection.open(
        "127.0.0.1",
        port,
        helo_name="client.test",
        connect_timeout=timeout,
        command_timeout=timeout,
        data_timeout=timeout,
    )


def test_multiline_reply_split_across_reads(run: Run) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _send_pieces(writer, b"22", b"0 split ", b"banner\r\n")
        await reader.readline()  # EHLO
        await _send_pieces(
            writer, b"250-srv.test\r\n250-PIPE", b"LINING\r\n250-SIZE 10", b"00\r", b"\n25"
        )
        await _send_pieces(writer, b"0 8BITMIME\r\n")
        await reader.readline()  # QUIT
        await _send_pieces(writer, b"221 bye\r\n")

    async def go() -> None:
        async with scripted(script) as port:
            conn = await _open(port)
            assert conn.extensions == {"PIPELINING": "", "SIZE": "1000", "8BITMIME": ""}
            await conn.quit()
            assert conn.broken  # closed after QUIT

    run(go())


def test_pipelined_replies_in_one_segment_and_prefetched_envelope(run: Run) -> None:
    """All of a group's replies written at once; the next envelope rides with the body."""
    seen: list[bytes] = []

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready\r\n")
        await reader.readline()
        writer.write(b"250-srv.test\r\n250 PIPELINING\r\n")
        for body_reply in (b"250 2.0.0 first\r\n", b"250 2.0.0 second\r\n"):
            group: list[bytes] = []
            while not group or group[-1] != b"DATA\r\n":
                group.append(await reader.readline())
            seen.extend(group)
            # MAIL, three RCPTs (one refused), DATA: five replies in one write
            writer.write(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n250 ok\r\n354 go\r\n")
            body = await reader.readuntil(b"\r\n.\r\n")
            seen.append(body)
            writer.write(body_reply)
        await reader.readline()  # QUIT
        writer.write(b"221 bye\r\n")

    async def go() -> None:
        async with scripted(script) as port:
            conn = await _open(port)
            rcpts = ["a@d.test", "b@d.test", "c@d.test"]
            then = ("s@s.test", rcpts, b"Subject: 2\r\n\r\ntwo\r\n")
            tx = await conn.send("s@s.test", rcpts, b"Subject: 1\r\n\r\none\r\n", then=then)
            assert [r.code for r in tx.rcpts] == [250, 550, 250]
            assert tx.rcpts[1].enhanced == "5.1.1"
            assert tx.data is not None and tx.data.text == "2.0.0 first"
            assert conn.prefetched and not conn.reusable
            tx2 = await conn.send("s@s.test", rcpts, then[2])
            assert tx2.data is not None and tx2.data.text == "2.0.0 second"
            assert conn.reusable and conn.transactions == 2
            await conn.quit()

    run(go())
    assert seen[0] == b"MAIL FROM:<s@s.test>\r\n"
    assert seen.count(b"DATA\r\n") == 2 and len(seen) == 12
    assert seen[5] == b"Subject: 1\r\n\r\none\r\n.\r\n"


def test_pipelined_group_split_across_reads_then_body_reply_cut(run: Run) -> None:
    """A group's replies in fragments that cut codes and lines; then the body's multi-line
    reply stops mid-way with a close: the message is in doubt, never deferred."""

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 ready\r\n")
        await reader.readline()
        writer.write(b"250-srv.test\r\n250 PIPELINING\r\n")
        while await reader.readline() != b"DATA\r\n":
            pass
        await _send_pieces(
            writer, b"250 ok\r\n2", b"50 ok\r\n250-o", b"k\r\n250 fine\r\n354 go\r\n"
        )
        await reader.readuntil(b"\r\n.\r\n")
        await _send_pieces(writer, b"250-2.0.0 queued\r\n250-as")  # and the close

    async def go() -> None:
        async with scripted(script) as port:
            conn = await _open(port)
            calls: list[str] = []
            with pytest.raises(ConnectionDropped) as info:
                await conn.send(
                    "s@s.test",
                    ["a@d.test", "b@d.test"],
                    b"x\r\n",
                    before_data=lambda: calls.append("x"),
                )
            assert info.value.data_sent and calls == ["x"] and conn.broken

    run(go())


def test_smtp_sink_pipelined_many_recipients_and_reuse(run: Run) -> None:
    with smtp_sink("-c") as port:

        async def go() -> None:
            conn = await _open(port)
            assert conn.pipelining
            rcpts = [f"r{i}@d.test" for i in range(40)]
            for i in range(5):
                nxt = ("s@s.test", rcpts, b"Subject: n\r\n\r\nx\r\n") if i < 4 else None
                tx = await conn.send("s@s.test", rcpts, b"Subject: n\r\n\r\nx\r\n", then=nxt)
                assert [r.code for r in tx.rcpts] == [250] * 40
                assert tx.data is not None and tx.data.code == 250
            assert conn.transactions == 5 and conn.reusable
            await conn.quit()

        run(go())


def test_smtp_sink_421_mid_pipeline_is_a_drop_before_data(run: Run) -> None:
    with smtp_sink("-Q", "RCPT") as port:

        async def go() -> None:
            conn = await _open(port)
            with pytest.raises(ConnectionDropped) as info:
                await conn.send("s@s.test", ["a@d.test"], b"Subject: x\r\n\r\ny\r\n")
            assert not info.value.data_sent and conn.broken

        run(go())


def test_smtp_sink_421_then_close_is_read_as_a_reply(run: Run) -> None:
    """Replies parsed before the close are handed out; the next read is a drop."""
    with smtp_sink("-Q", "RCPT") as port:

        async def go() -> None:
            conn = await _open(port)
            assert (await conn.command("MAIL FROM:<s@s.test>")).code == 250
            rcpt = await conn.command("RCPT TO:<a@d.test>")
            assert rcpt.code == 421 and rcpt.enhanced == "4.0.0"  # then the sink closes
            with pytest.raises(ConnectionDropped):
                await conn.command("NOOP")
            assert conn.broken

        run(go())


def test_smtp_sink_drop_after_body_is_in_doubt(run: Run) -> None:
    with smtp_sink("-q", ".") as port:

        async def go() -> None:
            conn = await _open(port)
            calls: list[str] = []
            with pytest.raises(ConnectionDropped) as info:
                await conn.send(
                    "s@s.test",
                    ["a@d.test"],
                    b"Subject: x\r\n\r\ny\r\n",
                    before_data=lambda: calls.append("x"),
                )
            assert info.value.data_sent and calls == ["x"]
            assert conn.broken and not conn.reusable

        run(go())


def test_data_reply_timeout_is_in_doubt_and_bounded(run: Run) -> None:
    with smtp_sink("-W", ".:5") as port:

        async def go() -> None:
            conn = await _open(port, timeout=0.5)
            started = time.monotonic()
            with pytest.raises(ConnectionDropped, match="timed out") as info:
                await conn.send("s@s.test", ["a@d.test"], b"Subject: x\r\n\r\ny\r\n")
            assert info.value.data_sent and conn.broken
            assert time.monotonic() - started < 3
            conn.close()

        run(go())


def test_deadlines_follow_each_wait_not_the_first(run: Run) -> None:
    """A short data timeout after long command waits, and a slow body reply within a
    long data timeout after short command waits: one timer per connection serves both."""
    with smtp_sink("-W", ".:1") as port:

        async def go() -> None:
            conn = await SmtpConnection.open(
                "127.0.0.1", port, helo_name="c.test", command_timeout=5, data_timeout=0.3
            )
            started = time.monotonic()
            with pytest.raises(ConnectionDropped, match="timed out") as info:
                await conn.send("s@s.test", ["a@d.test"], b"x\r\n")
            assert info.value.data_sent and time.monotonic() - started < 0.9
            conn.close()
            conn = await SmtpConnection.open(
                "127.0.0.1", port, helo_name="c.test", command_timeout=0.3, data_timeout=5
            )
            tx = await conn.send("s@s.test", ["a@d.test"], b"x\r\n")  # answered after 1 s
            assert tx.data is not None and tx.data.code == 250 and tx.seconds >= 0.9
            await conn.quit()

        run(go())


def test_envelope_reply_timeout_is_not_in_doubt(run: Run) -> None:
    with smtp_sink("-w", "5") as port:

        async def go() -> None:
            conn = await _open(port, timeout=0.5)
            calls: list[str] = []
            with pytest.raises(ConnectionDropped, match="timed out") as info:
                await conn.send(
                    "s@s.test", ["a@d.test"], b"x\r\n", before_data=lambda: calls.append("x")
                )
            assert not info.value.data_sent and not calls and conn.broken
            conn.close()

        run(go())


def test_banner_timeout_and_connection_lost_mid_reply(run: Run) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _send_pieces(writer, b"220 hi\r\n")
        await reader.readline()
        await _send_pieces(writer, b"250-srv.test\r\n250-PIPEL")  # then closes mid-line

    async def go() -> None:
        async with scripted(silent) as port:
            started = time.monotonic()
            with pytest.raises(ConnectionDropped, match="timed out"):
                await _open(port, timeout=0.3)
            assert time.monotonic() - started < 2
        async with scripted(cut) as port:
            with pytest.raises(ConnectionDropped, match="closed by the server"):
                await _open(port)

    run(go())


def test_malformed_reply_is_a_protocol_error(run: Run) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 hi\r\n")
        await reader.readline()
        writer.write(b"hello there\r\n")
        await asyncio.sleep(1)

    async def go() -> None:
        async with scripted(script) as port:
            with pytest.raises(SmtpProtocolError, match="malformed"):
                await _open(port)

    run(go())


def test_starttls_upgrade_keeps_pipelining_on_the_same_connection(tmp_path: Path, run: Run) -> None:
    cert, key = self_signed(tmp_path)
    with run_sink(capture_dir=tmp_path / "cap", tls_cert=cert, tls_key=key) as sink:

        async def go() -> None:
            conn = await _open(sink.port)
            assert conn.tls and conn.pipelining
            rcpts = ["t1@tls.test", "t2@tls.test"]
            then = ("s@s.test", ["t3@tls.test"], b"Subject: 2\r\n\r\ntwo\r\n")
            tx = await conn.send("s@s.test", rcpts, b"Subject: 1\r\n\r\none\r\n", then=then)
            assert tx.data is not None and tx.data.code == 250
            tx2 = await conn.send(*then)
            assert tx2.data is not None and tx2.data.code == 250
            await conn.quit()

        run(go())
        stats = sink.stats()
    assert stats.connections == 1
    captured = sorted(read_capture(tmp_path / "cap")["rcpt_to"].to_list())
    assert captured == ["t1@tls.test", "t2@tls.test", "t3@tls.test"]
