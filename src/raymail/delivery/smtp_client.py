"""A small SMTP client connection with PIPELINING (RFC 2920) and STARTTLS (RFC 3207).

aiosmtplib (which raymail uses for single messages elsewhere) reads one reply per command
and drops bytes that arrive while a parsed reply waits to be picked up, so it cannot send
MAIL, RCPT and DATA in one write. Bulk delivery lives on that round trip saving, so the
delivery servers use this connection class instead: one write for the whole envelope, then
the replies read in order.

The bytes on the wire (one receive buffer, replies parsed in batches, deadlines as timers)
are smtp_wire's ReplyProtocol; this module is the SMTP dialogue on top of it.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from raymail.delivery.smtp_wire import ConnectionDropped, Reply, ReplyProtocol
from raymail.errors import SmtpProtocolError

__all__ = [
    "DROPPED",
    "ConnectTiming",
    "ConnectionDropped",
    "Reply",
    "SmtpConnection",
    "SmtpRefused",
    "Transaction",
    "dot_stuff",
]

_UNSAFE_ADDRESS = re.compile(r"[\r\n<> ]").search  # characters an envelope address cannot hold

# Reply used for recipients whose fate is decided by the connection dropping.
DROPPED = Reply(0, "connection dropped")

# ``before_data`` may return one of these: it takes the body's write and runs it once the
# journal's in-flight mark is in the file (with None), or never (with the write's error).
BodyWrite = Callable[[BaseException | None], None]
DeferBody = Callable[[BodyWrite], None]


@dataclass(slots=True)
class Transaction:
    """The replies to one mail transaction."""

    mail: Reply
    rcpts: list[Reply]
    data: Reply | None  # None when no recipient was accepted (nothing was sent)
    seconds: float = 0.0


@dataclass(slots=True)
class ConnectTiming:
    connect_s: float
    banner_s: float


def dot_stuff(message: bytes) -> bytes:
    """Normalise line endings to CRLF, double leading dots, and append the terminator."""
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    if not stuffed.endswith(b"\r\n"):
        stuffed += b"\r\n"
    return stuffed + b".\r\n"


@dataclass
class SmtpConnection:
    """An open SMTP session after EHLO (and STARTTLS when used)."""

    host: str
    port: int
    wire: ReplyProtocol
    command_timeout: float
    data_timeout: float
    extensions: dict[str, str] = field(default_factory=dict)
    timing: ConnectTiming = field(default_factory=lambda: ConnectTiming(0.0, 0.0))
    transactions: int = 0
    tls: bool = False
    last_used: float = field(default_factory=time.monotonic)
    broken: bool = False
    errors_in_row: int = 0  # 5xx transactions in a row (shaping replaces such connections)
    usual_s: float = 0.0  # moving average of its transaction times (tarpit detection)
    limit_key: str = ""  # the MX host whose connection permit this holds (the pool's)
    # The next transaction's envelope, already sent with the last body: (key, payload, tx).
    _prefetched: tuple[tuple[str, tuple[str, ...]], bytes, Transaction, float] | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        helo_name: str,
        source_address: str | None = None,
        starttls: str = "opportunistic",
        verify_certificates: bool = False,
        connect_timeout: float = 30.0,
        command_timeout: float = 60.0,
        data_timeout: float = 120.0,
    ) -> SmtpConnection:
        """Connect, read the banner, EHLO (HELO fallback) and upgrade with STARTTLS."""
        started = time.perf_counter()
        local_addr = (source_address, 0) if source_address else None
        loop = asyncio.get_running_loop()
        wire = ReplyProtocol(loop)
        try:
            async with asyncio.timeout(connect_timeout):
                await loop.create_connection(lambda: wire, host, port, local_addr=local_addr)
        except (OSError, TimeoutError) as exc:
            raise ConnectionDropped(f"cannot connect to {host}:{port}: {exc}") from None
        connected = time.perf_counter()
        conn = cls(host, port, wire, command_timeout, data_timeout)
        try:
            banner = await conn.read_reply(connect_timeout)
            conn.timing = ConnectTiming(connected - started, time.perf_counter() - connected)
            if banner.code != 220:
                conn.close()
                raise SmtpRefused(banner)
            await conn._hello(helo_name)
            if starttls != "never" and "STARTTLS" in conn.extensions:
                await conn._starttls(host, verify_certificates, helo_name)
            elif starttls == "required":
                await conn.quit()
                raise SmtpRefused(
                    Reply(421, "4.7.10 STARTTLS required by the spec but not offered")
                )
        except BaseException:
            conn.close()
            raise
        return conn

    async def _hello(self, helo_name: str) -> None:
        reply = await self.command(f"EHLO {helo_name}")
        if reply.code == 250:
            self.extensions = _parse_ehlo(reply.text)
            return
        reply = await self.command(f"HELO {helo_name}")
        if reply.code != 250:
            raise SmtpRefused(reply)
        self.extensions = {}

    async def _starttls(self, host: str, verify: bool, helo_name: str) -> None:
        reply = await self.command("STARTTLS")
        if reply.code != 220:
            raise SmtpRefused(reply)
        context = ssl.create_default_context()
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        wire = self.wire
        transport = wire.transport
        if transport is None or transport.is_closing() or wire.unread():
            self.broken = True  # bytes after the 220 would be plaintext injected into TLS
            raise ConnectionDropped(f"STARTTLS with {host} failed: unexpected data")
        try:
            async with asyncio.timeout(self.command_timeout):
                tls = await wire.loop.start_tls(
                    transport,
                    wire,
                    context,
                    server_hostname=host,
                    ssl_handshake_timeout=self.command_timeout,
                )
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            self.broken = True
            raise ConnectionDropped(f"STARTTLS with {host} failed: {exc}") from None
        if tls is None:
            self.broken = True
            raise ConnectionDropped(f"STARTTLS with {host} failed: no transport")
        wire.transport = tls
        wire.tls = True
        self.tls = True
        await self._hello(helo_name)

    @property
    def reusable(self) -> bool:
        """Healthy, with no envelope left open for a message that was not sent."""
        return not self.broken and self._prefetched is None

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.extensions

    async def read_reply(self, timeout: float | None = None) -> Reply:
        """Read one (possibly multi-line) reply within ``timeout`` (default: commands')."""
        return (await self._replies(1, timeout))[0]

    async def _replies(self, count: int, timeout: float | None = None) -> list[Reply]:
        """Read ``count`` replies under one deadline (one timer, not a task per line)."""
        try:
            return await self.wire.replies(count, timeout or self.command_timeout)
        except TimeoutError:
            self.broken = True
            raise ConnectionDropped("timed out waiting for an SMTP reply") from None
        except SmtpProtocolError:
            self.broken = True  # the stream is out of step: nothing after it can be read
            raise

    def _write(self, data: bytes) -> None:
        transport = self.wire.transport
        if transport is None or transport.is_closing():
            self.broken = True
            raise ConnectionDropped("connection closed")
        transport.write(data)

    async def _drain(self, timeout: float | None = None) -> None:
        """Wait until the socket takes what was written (bounded); free when it already has."""
        try:
            await self.wire.drain(timeout or self.command_timeout)
        except (ConnectionError, TimeoutError) as exc:
            self.broken = True
            raise ConnectionDropped(f"connection lost while writing: {exc!r}") from None
        except ConnectionDropped:
            self.broken = True
            raise

    async def command(self, line: str) -> Reply:
        """Send one command line and read its reply."""
        if "\r" in line or "\n" in line:
            raise ValueError("an SMTP command line cannot contain CR or LF")
        self._write(line.encode("utf-8") + b"\r\n")
        await self._drain()
        return await self.read_reply()

    @property
    def prefetched(self) -> bool:
        """The next transaction's envelope is already open on this connection."""
        return self._prefetched is not None

    async def send(
        self,
        mail_from: str,
        rcpts: list[str],
        message: bytes,
        before_data: Callable[[], DeferBody | None] | None = None,
        then: tuple[str, list[str], bytes] | None = None,
    ) -> Transaction:
        """Run one mail transaction; pipelined when the server offers PIPELINING.

        ``before_data`` runs just before the message body is written: the last moment at
        which the recipients' fate is still certainly "not delivered"; when it returns a
        function, the body's write is handed to it (to run once the journal's in-flight mark
        is in the file: see ``Journal.mark_then``) instead of made at once. ``then`` names the
        next transaction: its envelope rides in the same write as this body (RFC 2920
        §3.1 lets message content start a command group), halving the writes per message.
        Raises ConnectionDropped when the connection dies; its ``data_sent`` says whether
        the message may have been accepted.
        """
        for address in (mail_from, *rcpts):
            if not address or _UNSAFE_ADDRESS(address):
                raise ValueError(f"unsafe address in envelope: {address!r}")
        started = time.perf_counter()
        done_at: float | None = None
        key = (mail_from, tuple(rcpts))
        if self._prefetched is not None:
            if self._prefetched[0] != key:  # an envelope is open for another message
                self.broken = True
                raise ConnectionDropped("pipelined envelope does not match the message")
            # Its clock started when its envelope was written, with the last body: its
            # seconds are its own replies' wait, comparable with an unpipelined one's.
            _, payload, tx, started = self._prefetched
            self._prefetched = None
        else:
            payload = dot_stuff(message)
            envelope = self._envelope(mail_from, rcpts, message, payload)
            if self.pipelining:
                tx = await self._send_pipelined(envelope, len(rcpts))
            else:
                tx = await self._send_lockstep(envelope, len(rcpts))
        accepted = any(r.klass == 2 for r in tx.rcpts) and tx.mail.klass == 2
        if accepted and tx.data is not None and tx.data.code == 354:
            defer = before_data() if before_data is not None else None
            ahead = None
            if then is not None and self.pipelining:
                for address in (then[0], *then[1]):
                    if not address or _UNSAFE_ADDRESS(address):
                        then = None  # unsafe: let its own send() reject it
                        break
            if then is not None and self.pipelining:
                next_payload = dot_stuff(then[2])
                lines = self._envelope(then[0], then[1], then[2], next_payload)
                ahead = ((then[0], tuple(then[1])), next_payload, len(then[1]))
                ahead_at = time.perf_counter()
                body = payload + "".join(f"{x}\r\n" for x in lines).encode() + b"DATA\r\n"
            else:
                body = payload
            if defer is None:
                self._write(body)
            else:
                defer(self._body_write(body))
            try:
                await self._drain(self.data_timeout)
                tx.data = await self.read_reply(self.data_timeout)
                done_at = (
                    time.perf_counter()
                )  # its fate is known: the next envelope's wait is not its own
            except ConnectionDropped as exc:
                raise ConnectionDropped(str(exc), data_sent=True) from None
            if ahead is not None:
                try:
                    replies = await self._replies(ahead[2] + 2)
                    nxt = Transaction(replies[0], replies[1:-1], replies[-1])
                    self._prefetched = (ahead[0], ahead[1], nxt, ahead_at)
                except ConnectionDropped:
                    self.broken = True  # this message's fate is known; the next one retries
        elif tx.data is not None and tx.data.code == 354:
            # Pipelined DATA was accepted though no recipient was: end it empty.
            self._write(b".\r\n")
            await self._drain()
            await self.read_reply()
            tx.data = None
            await self._reset()
        elif tx.mail.klass == 2:
            # MAIL refused nothing but no RCPT or the DATA command was refused: keep the
            # DATA reply (it decides the accepted recipients' fate) and reset the envelope.
            if not accepted:
                tx.data = None
            await self._reset()
        else:
            tx.data = None
        self.transactions += 1
        self.last_used = time.monotonic()
        tx.seconds = (done_at or time.perf_counter()) - started
        return tx

    def _body_write(self, body: bytes) -> BodyWrite:
        """The deferred write of a body (and the next envelope riding with it)."""

        def write(error: BaseException | None) -> None:
            if error is not None:  # its in-flight mark never reached the journal: never sent
                self.broken = True
                self.wire.fail_with(error)
                return
            transport = self.wire.transport
            if transport is None or transport.is_closing():
                self.broken = True  # dropped meanwhile: the wait for the reply sees it
                return
            transport.write(body)

        return write

    def _envelope(
        self, mail_from: str, rcpts: list[str], message: bytes, payload: bytes
    ) -> list[str]:
        mail_cmd = f"MAIL FROM:<{mail_from}>"
        if "SIZE" in self.extensions:
            mail_cmd += f" SIZE={len(payload)}"
        if "8BITMIME" in self.extensions and _has_8bit(message):
            mail_cmd += " BODY=8BITMIME"
        return [mail_cmd, *(f"RCPT TO:<{r}>" for r in rcpts)]

    async def _send_pipelined(self, envelope: list[str], n_rcpt: int) -> Transaction:
        self._write("".join(f"{line}\r\n" for line in envelope).encode() + b"DATA\r\n")
        await self._drain()
        replies = await self._replies(n_rcpt + 2)
        return Transaction(replies[0], replies[1:-1], replies[-1])

    async def _send_lockstep(self, envelope: list[str], n_rcpt: int) -> Transaction:
        mail = await self.command(envelope[0])
        if mail.klass != 2:
            return Transaction(mail, [mail] * n_rcpt, None)
        rcpts = [await self.command(line) for line in envelope[1:]]
        if not any(r.klass == 2 for r in rcpts):
            return Transaction(mail, rcpts, None)
        data = await self.command("DATA")
        return Transaction(mail, rcpts, data)

    async def _reset(self) -> None:
        reply = await self.command("RSET")
        if reply.code != 250:
            self.broken = True

    async def quit(self) -> None:
        """Say QUIT politely (bounded), then close."""
        try:
            transport = self.wire.transport
            if not self.broken and transport is not None and not transport.is_closing():
                self._write(b"QUIT\r\n")
                await self.wire.drain(2.0)
                await self.wire.replies(1, 2.0)
        except (OSError, TimeoutError, SmtpProtocolError):
            pass
        finally:
            self.close()

    def close(self) -> None:
        self.broken = True
        transport = self.wire.transport
        if transport is not None and not transport.is_closing():
            transport.close()


class SmtpRefused(SmtpProtocolError):
    """The server refused the session (banner, EHLO/HELO, STARTTLS)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"{reply.code} {reply.text}")
        self.reply = reply


def _parse_ehlo(text: str) -> dict[str, str]:
    extensions: dict[str, str] = {}
    for line in text.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            extensions[keyword.upper()] = params
    return extensions


def _has_8bit(message: bytes) -> bool:
    return not message.isascii()
