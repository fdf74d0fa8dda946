"""The SMTP side of the sink: an aiosmtpd server that accepts mail for any domain.

aiosmtpd does the protocol (it reads one command line at a time, so pipelined commands just
work); this module adds what a sink needs: PIPELINING in the EHLO reply, per-recipient
faults at RCPT TO, latency and connection drops at the end of DATA, capture, counters,
and an ``XSTATS`` command so a parent process can read the counters of a sink it spawned.
Three hot spots of aiosmtpd are replaced for throughput (about half its CPU per message):
the RFC 5322 parse of plain ``<a@b>`` paths, line-by-line DATA reading, and a 1 KB reader
buffer. Unlike aiosmtpd, DATA lines longer than 1000 octets are accepted.
It binds loopback addresses only: it is a sink for tests, demos and benchmarks, not a relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
import ssl
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from raymail.errors import SinkConfigError, SinkError
from raymail.sink.capture import CaptureWriter
from raymail.sink.config import Behaviour, SinkConfig
from raymail.sink.faults import Pick, RuleBook
from raymail.sink.returner import ReturnSender
from raymail.sink.stats import SinkStats

_DROP_GRACE_S = 5.0  # a dropped session's handler waits at most this for its cancellation
_HANG_S = 600.0  # how long a "hang" rule keeps the end of DATA unanswered
_STOP_TIMEOUT_S = 5.0
_READ_LIMIT = 64 * 1024  # bytes the SMTP reader buffers before it pauses the socket


def loopback_host(host: str) -> str:
    """The address to bind for ``host``; refuse anything that is not loopback."""
    bare = host.strip("[]")
    if bare.lower() == "localhost":
        return "127.0.0.1"  # one address, so port 0 yields one port
    try:
        addr = ipaddress.ip_address(bare)
    except ValueError:
        raise SinkConfigError(f"sink host must be a loopback address, got {host!r}") from None
    if not addr.is_loopback:
        raise SinkConfigError(f"sink host must be a loopback address, got {host!r}")
    return bare


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context for STARTTLS from a PEM certificate chain and key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise SinkConfigError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from None
    return context


def unstuff(raw: bytes) -> bytes:
    """Undo SMTP dot-stuffing (RFC 5321 4.5.2): drop the first dot of every line."""
    if raw.startswith(b"."):
        raw = raw[1:]
    return raw.replace(b"\r\n.", b"\r\n")


class _SinkEnvelope(Envelope):
    """An envelope that also remembers the rule of each accepted recipient, and the
    (client, domain) session slots it holds under ``max_sessions`` rules."""

    def __init__(self) -> None:
        super().__init__()
        self.picks: list[Pick] = []
        self.slots: list[tuple[str, str]] = []


_THROTTLED = "451 4.7.0 Too many concurrent sessions from your address (raymail sink)"


def _peer(session: Session) -> tuple[str, str]:
    """(ip, 'ip:port') of a session's client."""
    peer = session.peer
    if isinstance(peer, tuple) and len(peer) >= 2:
        ip = str(peer[0])
        return ip, f"[{ip}]:{peer[1]}" if ":" in ip else f"{ip}:{peer[1]}"
    return str(peer), str(peer)


class _Handler:
    """aiosmtpd hooks; all state they touch lives on the event loop's thread."""

    def __init__(
        self,
        rules: RuleBook,
        stats: SinkStats,
        capture: CaptureWriter | None,
        returner: ReturnSender,
    ) -> None:
        self.rules = rules
        self.stats = stats
        self.capture = capture
        self.returner = returner
        self._queue_id = 0
        self._sessions: dict[tuple[str, str], int] = {}  # open transactions per slot
        self._last_reply: dict[int, float] = {}
        self._clients: dict[str, int] = {}  # open connections per client address
        self.max_connections: int | None = None  # per client address (config)
        self.too_many_reply = "421 4.7.0 Too many connections from your address (raymail sink)"
        self._in_data = 0  # transactions waiting for their DATA reply now

    def _hold_slot(self, envelope: _SinkEnvelope, peer_ip: str, pick: Pick, address: str) -> bool:
        """Take a (client, domain) session slot for this transaction; False when full."""
        limit = pick.rule.max_sessions
        if limit is None:
            return True
        key = (peer_ip, address.rpartition("@")[2].lower())
        if key in envelope.slots:
            return True
        if self._sessions.get(key, 0) >= limit:
            return False
        self._sessions[key] = self._sessions.get(key, 0) + 1
        envelope.slots.append(key)
        return True

    def release(self, envelope: Envelope | None) -> None:
        """Give back the session slots of a finished, reset or abandoned transaction."""
        slots = getattr(envelope, "slots", None)
        while slots:
            key = slots.pop()
            left = self._sessions.get(key, 1) - 1
            if left > 0:
                self._sessions[key] = left
            else:
                self._sessions.pop(key, None)

    async def pace(self, connection: int, picks: list[Pick], busy_s: float) -> None:
        """Hold the reply until the connection's rate_per_connection allows it."""
        interval = self.rules.min_interval(picks)
        loop = asyncio.get_running_loop()
        if interval > 0.0:
            last = self._last_reply.get(connection)
            now = loop.time()
            wait = interval - (now - last) if last is not None else interval - busy_s
            if wait > 0.0:
                await asyncio.sleep(wait)
        self._last_reply[connection] = loop.time()

    def client_connected(self, ip: str) -> bool:
        """Count a new connection from ``ip``; False when it is over the client limit."""
        limit = self.max_connections
        if limit is not None and self._clients.get(ip, 0) >= limit:
            return False
        self._clients[ip] = self._clients.get(ip, 0) + 1
        return True

    def client_gone(self, ip: str, *, counted: bool) -> None:
        if counted:
            self._clients[ip] = max(self._clients.get(ip, 1) - 1, 0)

    def forget(self, connection: int) -> None:
        self._last_reply.pop(connection, None)

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """Add PIPELINING (aiosmtpd does not advertise it) and drop AUTH (a sink needs none)."""
        session.host_name = hostname  # with this hook, aiosmtpd leaves it to us
        lines = [r for r in responses if not r.startswith("250-AUTH")]
        lines.insert(len(lines) - 1, "250-PIPELINING")
        return lines

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: _SinkEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        """Decide this recipient now, so one transaction can mix 250, 4xx and 5xx."""
        pick, outcome = self.rules.at_rcpt(_peer(session)[0], address)
        if outcome is Behaviour.TEMPFAIL:
            self.stats.tempfailed += 1
            return pick.rule.tempfail_reply
        if outcome is Behaviour.PERMFAIL:
            self.stats.permfailed += 1
            return pick.rule.permfail_reply
        if not self._hold_slot(envelope, _peer(session)[0], pick, address):
            self.stats.throttled += 1
            return _THROTTLED
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.picks.append(pick)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: _SinkEnvelope) -> str:
        """Wait the rule's latency (and pace), then drop the connection or accept (capture)."""
        self._in_data += 1
        self.stats.peak_in_data = max(self.stats.peak_in_data, self._in_data)
        try:
            return await self._data(server, session, envelope)
        finally:
            self._in_data -= 1
            self.release(envelope)

    async def _data(self, server: SMTP, session: Session, envelope: _SinkEnvelope) -> str:
        latency_s, drop = self.rules.at_data(envelope.picks)
        if self.rules.hangs(envelope.picks):
            self.stats.hung += 1
            await asyncio.sleep(_HANG_S)  # bounded; the client gives up first
            return "451 4.4.1 Hung transaction released (raymail sink)"
        if latency_s > 0.0:
            await asyncio.sleep(latency_s)
        await self.pace(id(server), envelope.picks, latency_s)
        if drop:
            self.stats.dropped += 1
            self.stats.dropped_recipients += len(envelope.rcpt_tos)
            if server.transport is not None:
                server.transport.close()
            # connection_lost cancels this handler; the reply below never reaches anyone.
            await asyncio.sleep(_DROP_GRACE_S)
            return "421 4.4.2 Connection dropped (raymail sink)"
        data: bytes = envelope.original_content or b""
        if self.capture is not None:
            self.capture.write(
                mail_from=envelope.mail_from or "",
                rcpt_tos=envelope.rcpt_tos,
                data=data,
                peer=_peer(session)[1],
            )
        self.stats.transactions += 1
        self.stats.accepted += len(envelope.rcpt_tos)
        self.stats.bytes += len(data)
        for rcpt, pick in zip(envelope.rcpt_tos, envelope.picks, strict=True):
            kind = self.rules.return_for(pick)
            if kind is not None:
                self.returner.schedule(
                    kind, data, mail_from=envelope.mail_from or "", recipient=rcpt, rule=pick.rule
                )
        self._queue_id += 1
        return f"250 2.0.0 OK queued as S{self._queue_id:08X}"


# A plain <local@domain> path: parsed by one regex instead of aiosmtpd's RFC 5322 parser,
# which costs more than the rest of a transaction. Anything else falls back to aiosmtpd.
_SIMPLE_PATH = re.compile(r"<([A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+)>\s*(.*)", re.S)


class _SinkSMTP(SMTP):
    """aiosmtpd's SMTP protocol plus connection tracking, XSTATS, and the speed-ups."""

    def __init__(
        self, handler: _Handler, sessions: set[_SinkSMTP], read_limit: int, **kwargs: Any
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

    def _create_envelope(self) -> _SinkEnvelope:
        return _SinkEnvelope()

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


class SinkServer:
    """One listening sink on the running event loop: start, serve, stop."""

    def __init__(
        self,
        config: SinkConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        capture_dir: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        stats_path: Path | None = None,
    ) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise SinkConfigError("STARTTLS needs both a certificate and a key")
        if not 0 <= port <= 65535:
            raise SinkConfigError(f"sink port must be within 0..65535, got {port}")
        self.config = config or SinkConfig()
        self.host = loopback_host(host)
        self.port = port
        self._capture_dir = capture_dir
        self._tls = tls_context(tls_cert, tls_key) if tls_cert and tls_key else None
        self._stats_path = stats_path
        self._stats = SinkStats()
        self._sessions: set[_SinkSMTP] = set()
        self._server: asyncio.Server | None = None
        self._handler: _Handler | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def stats(self) -> SinkStats:
        """A copy of the counters (safe to call from another thread: plain int reads)."""
        return self._stats.copy()

    async def start(self) -> None:
        """Bind and listen; afterwards ``port`` is the real port (also when 0 was asked)."""
        capture = CaptureWriter(self._capture_dir) if self._capture_dir is not None else None
        handler = _Handler(
            RuleBook(self.config), self._stats, capture, ReturnSender(self.config, self._stats)
        )
        self._handler = handler
        cfg = self.config
        handler.max_connections = cfg.max_connections_per_client
        handler.too_many_reply = cfg.too_many_connections_reply
        loop = asyncio.get_running_loop()

        def factory() -> _SinkSMTP:
            return _SinkSMTP(
                handler,
                self._sessions,
                _READ_LIMIT,
                hostname=cfg.hostname,
                ident="raymail sink ESMTP",
                data_size_limit=cfg.max_message_bytes,
                tls_context=self._tls,
                timeout=cfg.idle_timeout_s,
                loop=loop,
            )

        try:
            self._server = await loop.create_server(factory, self.host, self.port)
        except OSError as exc:
            if capture is not None:
                capture.close()
            raise SinkError(f"cannot listen on {self.address}: {exc.strerror or exc}") from None
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, close open sessions, close capture, write stats JSON if asked."""
        if self._server is not None:
            self._server.close()
            for session in list(self._sessions):
                if session.transport is not None:
                    session.transport.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), _STOP_TIMEOUT_S)
            for _ in range(50):  # up to ~0.5 s for closed sessions to finish
                if not self._sessions:
                    break
                await asyncio.sleep(0.01)
            self._server = None
        if self._handler is not None:
            await self._handler.returner.close(_STOP_TIMEOUT_S)
        if self._handler is not None and self._handler.capture is not None:
            self._handler.capture.close()
        if self._stats_path is not None:
            self._stats.write_json(self._stats_path)
