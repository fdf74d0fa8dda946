"""The sink's SMTP protocol: aiosmtpd's, plus connection tracking, XSTATS and speed-ups.

aiosmtpd does the protocol (it reads one command line at a time, so pipelined commands just
work). Three hot spots of it are replaced for throughput (about half its CPU per message):
the RFC 5322 parse of plain ``<a@b>`` paths, line-by-line DATA reading, and a 1 KB reader
buffer. Unlike aiosmtpd, DATA lines longer than 1000 octets are accepted.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from aiosmtpd.smtp import SMTP

from raymail.sink.handler import SinkEnvelope, SinkHandler


def unstuff(raw: bytes) -> bytes:
    """Undo SMTP dot-stuffing (RFC 5321 4.5.2): drop the first dot of every line."""
    if raw.startswith(b"."):
        raw = raw[1:]
    return raw.replace(b"\r\n.", b"\r\n")


# A plain <local@domain> path: parsed by one regex instead of aiosmtpd's RFC 5322 parser,
# which costs more than the rest of a transaction. Anything else falls back to aiosmtpd.
_SIMPLE_PATH = re.compile(r"<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+)>\s*(.*)", re.S)


class SinkSMTP(SMTP):
    """aiosmtpd's SMTP protocol plus connection tracking, XSTATS, and the speed-ups."""

    def __init__(
        self, handler: SinkHandler, sessions: set[SinkSMTP], read_limit: int, **kwargs: Any
    ) -> None:
        # aiosmtpd sizes its StreamReader by line_length_limit (1001), and a reader pauses
        # the socket whenever it holds twice its limit: every few KB of DATA. A larger
        # limit lets a message arrive in a few reads. Command lines stay capped by
        # command_size_limit, which aiosmtpd checks after reading the line.
        self.line_length_limit = read_limit
        super().__init__(handler, **kwargs)
        self._sink_handler = handler
        self._sessions = sessions

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        match = _SIMPLE_PATH.fullmatch(arg)
        if match is not None:
            return match.group(1), match.group(2)
        address, rest = super()._getaddr(arg)
        return address, rest

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the message in large chunks instead of line by line."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        raw = await self._read_message()
        if raw is None:
            self.envelope = self._create_envelope()
            await self.push("552 5.3.4 Error: Too much mail data")
            return
        content = unstuff(raw)
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self.envelope = self._create_envelope()
        await self.push(status)

    async def _read_message(self) -> bytes | None:
        """The dot-stuffed message before the final '.CRLF'; None (drained) when too big."""
        reader = self._reader
        limit = self.data_size_limit + 3 if self.data_size_limit else 0  # + final ".CRLF"
        chunks: list[bytes] = []
        size = 0
        tail = b"\r\n"  # the two bytes before the next chunk: DATA's own CRLF at first
        while True:  # each round consumes >= 1 byte; it ends at the terminator or EOF
            try:
                chunk = await reader.readuntil(b".\r\n")
                ended = (chunk if len(chunk) >= 5 else tail + chunk)[-5:-3] == b"\r\n"
            except asyncio.LimitOverrunError as exc:  # no terminator within the read limit
                chunk = await reader.readexactly(exc.consumed)
                ended = False
            size += len(chunk)
            if limit and size > limit:
                chunks.clear()  # keep draining to the terminator, keep nothing
            else:
                chunks.append(chunk)
            if ended:
                break
            tail = (tail + chunk)[-2:]
        if limit and size > limit:
            return None
        return b"".join(chunks)[:-3]

    def _create_envelope(self) -> SinkEnvelope:
        return SinkEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None:  # not the STARTTLS re-entry
            stats = self._sink_handler.stats
            stats.connections += 1
            self._sessions.add(self)
            stats.peak_connections = max(stats.peak_connections, len(self._sessions))
            peer = transport.get_extra_info("peername")
            self._client_ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
            self._refused = not self._sink_handler.client_connected(self._client_ip)
        super().connection_made(transport)

    async def _handle_client(self) -> None:
        """Beyond the per-client connection limit: 421 instead of the banner, then close."""
        if getattr(self, "_refused", False):
            self._sink_handler.stats.connections_refused += 1
            await self.push(self._sink_handler.too_many_reply)
            if self.transport is not None:
                self.transport.close()
            return
        await super()._handle_client()

    def connection_lost(self, error: Exception | None) -> None:
        if self in self._sessions and hasattr(self, "_client_ip"):
            self._sink_handler.client_gone(self._client_ip, counted=not self._refused)
        self._sessions.discard(self)
        self._sink_handler.release(self.envelope)
        self._sink_handler.forget(id(self))
        super().connection_lost(error)

    def _set_rset_state(self) -> None:
        """RSET (and aiosmtpd's own resets) end the transaction: free its session slots."""
        handler = getattr(self, "_sink_handler", None)
        if handler is not None:
            handler.release(getattr(self, "envelope", None))
        super()._set_rset_state()  # type: ignore[no-untyped-call]

    async def smtp_XSTATS(self, arg: str | None) -> None:
        """Counters as one JSON line: how a parent reads a sink process's stats."""
        await self.push("250 " + json.dumps(self._sink_handler.stats.to_dict()))
