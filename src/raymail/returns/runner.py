"""Two ways to run a :class:`ReturnsServer`: on a background thread, or in the foreground.

``run_returns_server`` gives tests (and embedding programs) a server with its own event loop
in this process; ``serve_returns`` blocks until SIGINT/SIGTERM and is what
``raymail returns serve`` calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

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
    ready: concurrent.futures.Future[tuple[ReturnsServer, asyncio.Event]] = (
        concurrent.futures.Future()
    )
    loop_box: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        loop_box.append(asyncio.get_running_loop())
        try:
            server = ReturnsServer(config, host=host, port=port, **options)
            await server.start()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        stop = asyncio.Event()
        ready.set_result((server, stop))
        try:
            await stop.wait()
        finally:
            await server.stop()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name="raymail-returns")
    thread.daemon = True
    thread.start()
    try:
        server, stop = ready.result(timeout=start_timeout_s)
    except concurrent.futures.TimeoutError:
        raise ReturnsError(f"returns server did not start within {start_timeout_s} s") from None
    except BaseException:
        thread.join(_JOIN_TIMEOUT_S)
        raise
    loop = loop_box[0]
    try:
        yield RunningReturnsServer(server, loop)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(_JOIN_TIMEOUT_S)
        if thread.is_alive():
            raise ReturnsError(f"returns server did not stop within {_JOIN_TIMEOUT_S} s")


async def _serve(server: ReturnsServer, on_ready: Callable[[ReturnsServer], None]) -> None:
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        on_ready(server)
        await stop.wait()
    finally:
        await server.stop()


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
        await _serve(server, on_ready)
        return server

    return asyncio.run(main())
