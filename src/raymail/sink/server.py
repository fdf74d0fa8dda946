"""The SMTP side of the sink: an aiosmtpd server that accepts mail for any domain.

This module binds, serves and stops one listening sink; what it does with each transaction
(faults at RCPT TO, latency and drops at the end of DATA, capture, counters) is in
``handler.py``, and aiosmtpd's protocol with PIPELINING, ``XSTATS`` (so a parent process can
read the counters of a sink it spawned) and its throughput speed-ups is in ``protocol.py``.
It binds loopback addresses only: it is a sink for tests, demos and benchmarks, not a relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from pathlib import Path

from raymail.errors import SinkConfigError, SinkError
from raymail.sink.capture import CaptureWriter
from raymail.sink.config import SinkConfig
from raymail.sink.faults import RuleBook
from raymail.sink.handler import SinkHandler
from raymail.sink.protocol import SinkSMTP
from raymail.sink.returner import ReturnSender
from raymail.sink.stats import SinkStats

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
        self._sessions: set[SinkSMTP] = set()
        self._server: asyncio.Server | None = None
        self._handler: SinkHandler | None = None

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def stats(self) -> SinkStats:
        """A copy of the counters (safe to call from another thread: plain int reads)."""
        return self._stats.copy()

    async def start(self) -> None:
        """Bind and listen; afterwards ``port`` is the real port (also when 0 was asked)."""
        capture = CaptureWriter(self._capture_dir) if self._capture_dir is not None else None
        handler = SinkHandler(
            RuleBook(self.config), self._stats, capture, ReturnSender(self.config, self._stats)
        )
        self._handler = handler
        cfg = self.config
        handler.max_connections = cfg.max_connections_per_client
        handler.too_many_reply = cfg.too_many_connections_reply
        loop = asyncio.get_running_loop()

        def factory() -> SinkSMTP:
            return SinkSMTP(
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
