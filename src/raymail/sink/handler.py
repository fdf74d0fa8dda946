"""What the sink does with each transaction: the aiosmtpd handler hooks.

Faults per recipient at RCPT TO (from the rule book), session limits per client and domain,
latency, hangs and connection drops at the end of DATA, capture of accepted messages,
returns it writes itself, and the counters. All state lives on the event loop's thread.
"""

from __future__ import annotations

import asyncio

from aiosmtpd.smtp import SMTP, Envelope, Session

from raymail.sink.capture import CaptureWriter
from raymail.sink.config import Behaviour
from raymail.sink.faults import Pick, RuleBook
from raymail.sink.returner import ReturnSender
from raymail.sink.stats import SinkStats

_DROP_GRACE_S = 5.0  # a dropped session's handler waits at most this for its cancellation
_HANG_S = 600.0  # how long a "hang" rule keeps the end of DATA unanswered


class SinkEnvelope(Envelope):
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


class SinkHandler:
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

    def _hold_slot(self, envelope: SinkEnvelope, peer_ip: str, pick: Pick, address: str) -> bool:
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
        envelope: SinkEnvelope,
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

    async def handle_DATA(self, server: SMTP, session: Session, envelope: SinkEnvelope) -> str:
        """Wait the rule's latency (and pace), then drop the connection or accept (capture)."""
        self._in_data += 1
        self.stats.peak_in_data = max(self.stats.peak_in_data, self._in_data)
        try:
            return await self._data(server, session, envelope)
        finally:
            self._in_data -= 1
            self.release(envelope)

    async def _data(self, server: SMTP, session: Session, envelope: SinkEnvelope) -> str:
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
