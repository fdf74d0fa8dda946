"""Running an asyncio server (the sink, the returns server) on a thread of its own, or in the
foreground until SIGINT/SIGTERM.

Both servers have ``async start()`` (bind; afterwards the port is known) and ``async stop()``.
:func:`on_own_loop` gives tests and embedding programs one on a background thread with its
own event loop for a ``with`` block; :func:`serve_until_signal` is what the command-line
``serve`` commands run. One copy of the start/stop handshake and its bounded waits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar


class Server(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


S = TypeVar("S", bound=Server)


@contextlib.contextmanager
def on_own_loop(
    make: Callable[[], S],
    *,
    name: str,
    what: str,
    error: type[Exception],
    start_timeout_s: float,
    join_timeout_s: float,
) -> Iterator[tuple[S, asyncio.AbstractEventLoop]]:
    """``make()`` a server inside a new thread's event loop, start it, and yield it with that
    loop; stop it at the block's end. ``error`` names ``what`` did not start or stop in time;
    an exception from ``make`` or ``start`` is raised here as it is."""
    ready: concurrent.futures.Future[tuple[S, asyncio.AbstractEventLoop, asyncio.Event]] = (
        concurrent.futures.Future()
    )

    async def main() -> None:
        try:
            server = make()
            await server.start()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        stop = asyncio.Event()
        ready.set_result((server, asyncio.get_running_loop(), stop))
        try:
            await stop.wait()
        finally:
            await server.stop()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name=name, daemon=True)
    thread.start()
    try:
        server, loop, stop = ready.result(timeout=start_timeout_s)
    except concurrent.futures.TimeoutError:
        raise error(f"{what} did not start within {start_timeout_s} s") from None
    except BaseException:
        thread.join(join_timeout_s)  # start failed: the thread is already finishing
        raise
    try:
        yield server, loop
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(join_timeout_s)
        if thread.is_alive():
            raise error(f"{what} did not stop within {join_timeout_s} s")


async def serve_until_signal(
    server: S,
    on_ready: Callable[[S], None],
    also: Callable[[asyncio.AbstractEventLoop, asyncio.Event], None] | None = None,
) -> None:
    """Start ``server``, call ``on_ready``, and stop it at SIGINT/SIGTERM (or when ``also``,
    given the loop and the stop event, sets it)."""
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    if also is not None:
        also(loop, stop)
    try:
        on_ready(server)
        await stop.wait()
    finally:
        await server.stop()
