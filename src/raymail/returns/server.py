"""The returns server: the SMTP receiver for the return domain (the seed's C server).

It takes mail only for addresses it can decode: VERP bounce and unsubscribe tokens of known
campaigns, the configured reply and abuse addresses, and postmaster (RFC 5321 4.5.1).
Anything else is refused at RCPT TO, so it is never an open relay: a domain it does not
serve gets ``550 5.7.1``, an unknown or forged address in its domains ``550 5.1.1``.

Each accepted message is appended to the archive and fsync'd *before* the 250 reply; one
worker then classifies the stored messages in order, buffers events, queues forwards and
flushes (events, then suppression rules) every ``flush_interval_s``. Should the process die
between the 250 and the flush, :meth:`ReturnsProcessor.recover` classifies the stored
messages without events at the next start. A second task delivers the forward outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Final

from aiosmtpd.smtp import SMTP, Envelope, Session

from raymail.errors import ReturnsError
from raymail.hostport import split_host_port
from raymail.returns.archive import ArchivedMessage
from raymail.returns.config import ReturnsConfig
from raymail.returns.forward import Forwarder
from raymail.returns.process import ReturnsProcessor
from raymail.returns.registry import CampaignRegistry
from raymail.returns.store import ReturnsStore

log = logging.getLogger(__name__)

_READ_LIMIT: Final = 64 * 1024  # longest line accepted in DATA (RFC 5321 says 1000)
_QUEUE: Final = 1000  # stored messages waiting for the classifier before DATA waits
_STOP_TIMEOUT_S: Final = 10.0
RELAY_DENIED: Final = "550 5.7.1 <{}>: Relaying denied (this server only takes returns)"
NO_SUCH_USER: Final = "550 5.1.1 <{}>: no such recipient here (unknown or forged address)"


@dataclass(slots=True)
class ReturnsServerStats:
    """Counters since start."""

    connections: int = 0
    accepted: int = 0  # messages stored and answered 250
    refused_relay: int = 0
    refused_unknown: int = 0
    processed: int = 0
    forwarded: int = 0
    store_errors: int = 0


def _peer(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


class _Handler:
    """aiosmtpd hooks: decide RCPT, store DATA durably, hand it to the worker."""

    def __init__(self, server: ReturnsServer) -> None:
        self.server = server

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:  # fmt: skip
        session.host_name = hostname
        return [r for r in responses if not r.startswith("250-AUTH")]

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str,
        rcpt_options: list[str],
    ) -> str:  # fmt: skip
        limit = self.server.config.settings.max_recipients
        if len(envelope.rcpt_tos) >= limit:
            return f"452 4.5.3 Too many recipients (at most {limit} per message)"
        refusal = self.server.refusal(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw: bytes = envelope.original_content or b""
        owner = self.server
        try:
            message = await asyncio.to_thread(
                owner.store.archive.append,
                raw,
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                source="smtp",
                label=_peer(session),
            )
        except ReturnsError as exc:
            owner.stats.store_errors += 1
            log.error("returns: %s", exc)
            return "451 4.3.0 Cannot store the message now; try again later"
        owner.stats.accepted += 1
        await owner.queue.put((message, raw))
        return f"250 2.0.0 Stored as {message.ref}"


class _ReturnsSMTP(SMTP):
    """aiosmtpd's SMTP with long DATA lines allowed and connections counted."""

    def __init__(self, handler: _Handler, **kwargs: Any) -> None:
        self.line_length_limit = _READ_LIMIT
        super().__init__(handler, **kwargs)
        self._owner = handler.server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._owner.stats.connections += 1
        super().connection_made(transport)


class ReturnsServer:
    """One listening returns server on the running event loop: start, serve, stop."""

    def __init__(
        self,
        config: ReturnsConfig,
        *,
        host: str | None = None,
        port: int | None = None,
        registry: CampaignRegistry | None = None,
        hostname: str = "returns.raymail.localhost",
        flush_interval_s: float = 2.0,
        forward_interval_s: float = 1.0,
    ) -> None:
        listen_host, listen_port = split_host_port(config.settings.listen, listen=True)
        self.config = config
        self.host = host if host is not None else listen_host
        self.port = port if port is not None else listen_port
        self.hostname = hostname
        self.registry = registry or config.registry()
        self.store = ReturnsStore(config.settings)
        self.processor = ReturnsProcessor(self.store, self.registry)
        self.forwarder = Forwarder(self.store.outbox, config.settings)
        self.flush_interval_s = flush_interval_s
        self.forward_interval_s = forward_interval_s
        self.stats = ReturnsServerStats()
        self.queue: asyncio.Queue[tuple[ArchivedMessage, bytes] | None] = asyncio.Queue(_QUEUE)
        settings = config.settings
        fixed = {a for a in (settings.reply_address, settings.abuse_address) if a}
        self._fixed = frozenset(fixed)
        self._extra_domains = frozenset(
            {d.lower() for d in config.domains} | {a.rpartition("@")[2] for a in fixed}
        )
        self._server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    # -- the RCPT decision -------------------------------------------------------------

    def refusal(self, address: str) -> str | None:
        """None when ``address`` is ours; else the 550 reply that refuses it."""
        lowered = address.strip().strip("<>").lower()
        local, at, domain = lowered.rpartition("@")
        if not at:
            return None if lowered == "postmaster" else NO_SUCH_USER.format(lowered)
        served = self._extra_domains | self.registry.domains
        if domain not in served:
            self.registry.refresh()  # a campaign started since the last scan?
            served = self._extra_domains | self.registry.domains
        if domain not in served:
            self.stats.refused_relay += 1
            return RELAY_DENIED.format(lowered)
        if lowered in self._fixed or local == "postmaster":
            return None
        if self.registry.decode(lowered) is not None:
            return None
        self.stats.refused_unknown += 1
        return NO_SUCH_USER.format(lowered)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Classify what an earlier run stored but never classified, then listen."""
        recovered = await asyncio.to_thread(self.processor.recover)
        if recovered:
            log.warning("returns: recovered %d stored message(s) without events", recovered)
        loop = asyncio.get_running_loop()
        handler = _Handler(self)
        settings = self.config.settings

        def factory() -> _ReturnsSMTP:
            return _ReturnsSMTP(
                handler,
                hostname=self.hostname,
                ident="raymail returns ESMTP",
                data_size_limit=settings.max_message_bytes,
                timeout=300,
                loop=loop,
            )

        try:
            self._server = await loop.create_server(factory, self.host, self.port)
        except OSError as exc:
            raise ReturnsError(f"cannot listen on {self.address}: {exc.strerror or exc}") from None
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._tasks = [
            asyncio.create_task(self._work(), name="returns-classifier"),
            asyncio.create_task(self._forward(), name="returns-forwarder"),
        ]

    async def _work(self) -> None:
        """The one classifier worker: process in arrival order, flush on an interval."""
        next_flush = time.monotonic() + self.flush_interval_s
        while True:  # ends when stop() queues None
            timeout = max(next_flush - time.monotonic(), 0.0)
            try:
                item = await asyncio.wait_for(self.queue.get(), timeout)
                idle = False
            except TimeoutError:
                item, idle = None, True
            if item is None and not idle:
                await asyncio.to_thread(self.processor.flush)
                return
            if item is not None:
                message, raw = item
                try:
                    await asyncio.to_thread(self.processor.process, message, raw)
                except Exception:  # stored already: recover() retries it at the next start
                    log.exception("returns: processing %s failed", message.ref)
                self.stats.processed += 1
            if time.monotonic() >= next_flush:
                try:
                    await asyncio.to_thread(self.processor.flush)
                except Exception:  # the buffer stays; the next flush tries again
                    log.exception("returns: flush failed")
                next_flush = time.monotonic() + self.flush_interval_s

    async def _forward(self) -> None:
        """Deliver due outbox items every ``forward_interval_s`` until cancelled."""
        while True:
            try:
                result = await self.forwarder.run_due()
                self.stats.forwarded += len(result.sent)
            except Exception:  # the outbox keeps everything; try again next round
                log.exception("returns: forwarding failed")
            await asyncio.sleep(self.forward_interval_s)

    async def stop(self) -> None:
        """Stop listening, classify and flush what was stored, close the archive."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), _STOP_TIMEOUT_S)
            self._server = None
        if self._tasks:
            worker, forwarder = self._tasks
            forwarder.cancel()
            await self.queue.put(None)
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(worker, _STOP_TIMEOUT_S * 6)
            with contextlib.suppress(asyncio.CancelledError):
                await forwarder
            self._tasks = []
        self.store.close()
