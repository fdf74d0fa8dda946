"""The SMTP client's transport: an asyncio.Protocol with one receive buffer.

StreamReader costs a coroutine, a future and a buffer copy per reply line; profiles put
the delivery servers' SMTP client at about 30% of their CPU, most of it there. Here
``data_received`` parses every complete reply in the buffer at once, so a group of
pipelined replies that arrives in one segment wakes the waiting coroutine once (or not at
all, when it is already there). Deadlines cost no timer per wait either: each wait moves
the connection's deadline, and one timer per connection, re-armed lazily when it fires
early, enforces it (with timeouts of a minute and replies in milliseconds it fires about
once a minute instead of being scheduled and cancelled twice per message).
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from dataclasses import dataclass
from typing import cast

from raymail.errors import SmtpProtocolError

_ENHANCED_RE = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\b")
MAX_LINE = 4096  # an SMTP reply line, CRLF included (RFC 5321 allows 512)
MAX_REPLY_LINES = 100
MAX_PENDING = 2**16  # bytes without a line end: the peer is not speaking SMTP


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: the code and the text lines joined by newlines."""

    code: int
    text: str

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 enhanced status code at the start of the text, if any."""
        match = _ENHANCED_RE.match(self.text)
        return match.group(1) if match else None

    @property
    def klass(self) -> int:
        return self.code // 100


class ConnectionDropped(SmtpProtocolError):
    """The peer closed or reset the connection, or a reply timed out.

    ``data_sent`` tells whether the message body had been written completely: then the
    server may have accepted it, and the recipients' fate is unknown ("in doubt").
    """

    def __init__(self, message: str, *, data_sent: bool = False) -> None:
        super().__init__(message)
        self.data_sent = data_sent


class ReplyProtocol(asyncio.Protocol):
    """Parses replies as bytes arrive; ``replies(n)`` waits until n are ready.

    Replies parsed before the connection ended (a 421 then close) are still handed out;
    the error is raised only to a wait that the ready replies cannot satisfy.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.tls = False
        self._buffer = bytearray()
        self._lines: list[str] = []  # the text lines of a multi-line reply not yet complete
        self._ready: deque[Reply] = deque()
        self._error: tuple[type[SmtpProtocolError], str] | None = None
        self._raise: BaseException | None = None  # a failure from outside the wire (fail_with)
        self._waiter: asyncio.Future[None] | None = None
        self._deadline = 0.0  # loop time by which the current wait must be satisfied
        self._timer: asyncio.TimerHandle | None = None  # fires at or before the deadline
        self._want = 0
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # No isinstance check: uvloop's transports (Ray's async actors run on uvloop)
        # have asyncio.Transport's methods without deriving from it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return  # out of step or ended: nothing after it is read
        buffer = self._buffer
        if not buffer and data.endswith(b"\n"):
            self._parse(data)  # the usual case: whole replies, parsed without a copy
        else:
            buffer += data
            end = buffer.rfind(b"\n")
            if end < 0:
                if len(buffer) > MAX_PENDING:
                    self._fail(ConnectionDropped, "connection lost: SMTP reply line too long")
                return
            chunk = bytes(buffer[: end + 1])
            del buffer[: end + 1]
            self._parse(chunk)
        waiter = self._waiter
        if waiter is not None and len(self._ready) >= self._want and not waiter.done():
            waiter.set_result(None)

    def _parse(self, chunk: bytes) -> None:
        lines = self._lines
        ready = self._ready
        raws = chunk.split(b"\n")
        raws.pop()  # what follows the last line end: nothing
        for raw in raws:
            if len(raw) >= MAX_LINE or len(raw) < 3 or not raw[:3].isdigit():
                self._fail(SmtpProtocolError, f"malformed SMTP reply line: {raw[:80]!r}")
                return
            lines.append(raw[4:].rstrip(b"\r\n").decode("utf-8", "replace"))
            if raw[3:4] != b"-":
                ready.append(Reply(int(raw[:3]), lines[0] if len(lines) == 1 else "\n".join(lines)))
                lines.clear()
            elif len(lines) >= MAX_REPLY_LINES:
                self._fail(SmtpProtocolError, "SMTP reply has too many lines")
                return

    def eof_received(self) -> bool:
        self._fail(ConnectionDropped, "connection closed by the server")
        # Half-open like StreamReader's: a write after the peer's FIN still goes out
        # and fails on the socket; over TLS the SSL layer closes (it must).
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if exc is None:
            self._fail(ConnectionDropped, "connection closed by the server")
        else:
            self._fail(ConnectionDropped, f"connection lost: {exc}")
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        drain = self._drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    # the connection's side

    def _fail(self, kind: type[SmtpProtocolError], message: str) -> None:
        if self._error is None:
            self._error = (kind, message)
            self._buffer.clear()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail_with(self, exc: BaseException) -> None:
        """End this connection's waits with ``exc``: a failure outside the wire (the journal
        write an unsent body waited for)."""
        self._raise = exc
        self._fail(ConnectionDropped, f"connection given up: {exc!r}")

    def error(self) -> BaseException:
        """A fresh exception for the recorded failure (each raise its own traceback)."""
        if self._raise is not None:
            return self._raise
        kind, message = self._error or (ConnectionDropped, "connection closed")
        return kind(message)

    async def replies(self, count: int, timeout: float) -> list[Reply]:
        """The next ``count`` replies, waited for under one deadline.

        Raises TimeoutError when the deadline passes, or the recorded failure.
        """
        ready = self._ready
        if len(ready) < count and self._error is None:
            loop = self.loop
            waiter = loop.create_future()
            self._waiter = waiter
            self._want = count
            deadline = self._deadline = loop.time() + timeout
            timer = self._timer
            if timer is None or timer.when() > deadline:
                if timer is not None:
                    timer.cancel()
                self._timer = loop.call_at(deadline, self._check_deadline)
            try:
                await waiter
            finally:
                self._waiter = None
        if len(ready) >= count:
            if count == 1:
                return [ready.popleft()]
            return [ready.popleft() for _ in range(count)]
        raise self.error()

    def _check_deadline(self) -> None:
        """The connection's timer: expire the wait past its deadline, else re-arm."""
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # no wait: the next one arms a timer of its own
        if self.loop.time() >= self._deadline - 0.001:  # timers may run a tick early
            waiter.set_exception(TimeoutError())
        else:
            self._timer = self.loop.call_at(self._deadline, self._check_deadline)

    async def drain(self, timeout: float) -> None:
        """Wait while the transport has paused writing (its buffer above high water)."""
        if not self._paused:
            return
        transport = self.transport
        if self._error is not None or transport is None or transport.is_closing():
            raise ConnectionDropped("connection lost while writing")
        waiter = self.loop.create_future()
        self._drain_waiter = waiter
        timer = self.loop.call_later(timeout, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._drain_waiter = None
        if self._paused:
            raise ConnectionDropped("connection lost while writing")

    def unread(self) -> int:
        """Bytes received and not yet handed out as replies (must be 0 before STARTTLS)."""
        return len(self._buffer) + len(self._ready) + len(self._lines)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())
