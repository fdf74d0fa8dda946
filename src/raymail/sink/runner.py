"""Two ways to run a :class:`SinkServer`: on a background thread, or in the foreground.

``run_sink`` gives tests a sink with its own event loop in this process. ``serve`` blocks
until SIGINT/SIGTERM (or, for a child process, until its parent closes stdin) and is what
``raymail sink`` and ``python -m raymail.sink`` call.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from raymail._loop import on_own_loop, serve_until_signal
from raymail.errors import SinkError
from raymail.sink.config import SinkConfig
from raymail.sink.server import SinkServer
from raymail.sink.stats import SinkStats

_JOIN_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class RunningSink:
    """A sink running on a background thread: where it listens and what it counted."""

    host: str
    port: int
    server: SinkServer

    @property
    def address(self) -> str:
        """'host:port', as a spec's ``mx_override`` wants it."""
        return self.server.address

    def stats(self) -> SinkStats:
        return self.server.stats()


@contextlib.contextmanager
def run_sink(
    config: SinkConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    capture_dir: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    stats_path: Path | None = None,
    start_timeout_s: float = 10.0,
) -> Iterator[RunningSink]:
    """Run a sink on its own thread and event loop for the ``with`` block; port 0 = any."""
    server = SinkServer(
        config,
        host=host,
        port=port,
        capture_dir=capture_dir,
        tls_cert=tls_cert,
        tls_key=tls_key,
        stats_path=stats_path,
    )
    with on_own_loop(
        lambda: server,
        name="raymail-sink",
        what="sink",
        error=SinkError,
        start_timeout_s=start_timeout_s,
        join_timeout_s=_JOIN_TIMEOUT_S,
    ):
        yield RunningSink(server.host, server.port, server)


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set ``stop`` once stdin reaches EOF: the parent closed the pipe or died.

    Reads the raw descriptor: a daemon thread blocked inside ``sys.stdin.buffer`` holds its
    lock and makes interpreter shutdown abort.
    """
    fd = sys.stdin.fileno()
    while os.read(fd, 65536):  # ends at EOF; the parent never writes after the config line
        pass
    loop.call_soon_threadsafe(stop.set)


async def _serve(
    server: SinkServer, on_ready: Callable[[SinkServer], None], stop_on_stdin_eof: bool
) -> SinkStats:
    def watch(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        threading.Thread(target=_watch_stdin, args=(loop, stop), daemon=True).start()

    await serve_until_signal(server, on_ready, watch if stop_on_stdin_eof else None)
    return server.stats()


def serve(
    config: SinkConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 2525,
    capture_dir: Path | None = None,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    stats_path: Path | None = None,
    on_ready: Callable[[SinkServer], None] = lambda server: None,
    stop_on_stdin_eof: bool = False,
) -> SinkStats:
    """Serve in the foreground until SIGINT/SIGTERM; return the final counters.

    ``on_ready`` runs once the port is bound (print the address there). With
    ``stop_on_stdin_eof`` the sink also stops when stdin closes, so a child process never
    outlives a parent that was killed.
    """
    server = SinkServer(
        config,
        host=host,
        port=port,
        capture_dir=capture_dir,
        tls_cert=tls_cert,
        tls_key=tls_key,
        stats_path=stats_path,
    )
    return asyncio.run(_serve(server, on_ready, stop_on_stdin_eof))
