"""Two ways to run a :class:`ReturnsServer`: on a background thread, or in the foreground.

``run_returns_server`` gives tests (and embedding programs) a server with its own event loop
in this process; ``serve_returns`` blocks until SIGINT/SIGTERM and is what
``raymail returns serve`` calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from raymail._loop import on_own_loop, serve_until_signal
from raymail.errors import ReturnsError
from raymail.returns.config import ReturnsConfig
from raymail.returns.server import ReturnsServer

_JOIN_TIMEOUT_S: Final = 90.0


@dataclass(frozen=True)
class RunningReturnsServer:
    """A returns server on a background thread."""

    server: ReturnsServer
    loop: asyncio.AbstractEventLoop

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        return self.server.address

    def call(self, func: Callable[[], Any], timeout_s: float = 30.0) -> Any:
        """Run ``func`` on the server's loop (e.g. a flush) and return its result."""

        async def run() -> Any:
            result = func()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout_s)


@contextlib.contextmanager
def run_returns_server(
    config: ReturnsConfig,
    *,
    host: str | None = None,
    port: int | None = None,
    start_timeout_s: float = 30.0,
    **options: Any,
) -> Iterator[RunningReturnsServer]:
    """Run a returns server on its own thread and loop for the ``with`` block."""
    with on_own_loop(
        lambda: ReturnsServer(config, host=host, port=port, **options),
        name="raymail-returns",
        what="returns server",
        error=ReturnsError,
        start_timeout_s=start_timeout_s,
        join_timeout_s=_JOIN_TIMEOUT_S,
    ) as (server, loop):
        yield RunningReturnsServer(server, loop)


def serve_returns(
    config: ReturnsConfig,
    *,
    host: str | None = None,
    port: int | None = None,
    on_ready: Callable[[ReturnsServer], None] = lambda server: None,
) -> ReturnsServer:
    """Serve in the foreground until SIGINT/SIGTERM; return the stopped server (its stats)."""

    async def main() -> ReturnsServer:
        server = ReturnsServer(config, host=host, port=port)
        await serve_until_signal(server, on_ready)
        return server

    return asyncio.run(main())
