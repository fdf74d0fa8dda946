"""A scripted SMTP server on loopback: answers each recipient with a chosen reply.

The corpus generator points real MTAs (Postfix, Exim) at it. A *per-recipient* port
answers RCPT or DATA with the reply the generator assigned to that recipient; a *fixed*
port answers the greeting, HELO or MAIL with one reply (so the failure is about the
connection or the sender). A *silent* port accepts the connection and never speaks
(timeouts). Every connection is bounded in time; the server stops with its event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from replies import Reply, reply_lines

_SESSION_TIMEOUT_S = 30.0


@dataclass
class Plan:
    """What each port answers."""

    by_recipient: dict[str, Reply] = field(default_factory=dict)  # lower-cased address
    fixed: Reply | None = None
    silent: bool = False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Responder:
    """Scripted SMTP servers on 127.0.0.1, one per plan, run in a background thread."""

    def __init__(self) -> None:
        self.plans: dict[int, Plan] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[asyncio.AbstractServer] = []

    def add(self, plan: Plan) -> int:
        """Listen for ``plan`` on a new port; returns the port."""
        port = _free_port()
        self.plans[port] = plan
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(functools.partial(self._session, plan=plan), "127.0.0.1", port),
            self._loop,
        )
        self._servers.append(future.result(timeout=10))
        return port

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        async def close() -> None:
            for server in self._servers:
                server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, plan: Plan
    ) -> None:
        try:
            await asyncio.wait_for(self._converse(reader, writer, plan), _SESSION_TIMEOUT_S)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, plan: Plan
    ) -> None:
        async def say(lines: list[str]) -> None:
            writer.write("".join(f"{line}\r\n" for line in lines).encode())
            await writer.drain()

        if plan.silent:
            await asyncio.sleep(_SESSION_TIMEOUT_S)
            return
        fixed = plan.fixed
        if fixed is not None and fixed.phase == "CONN":
            await say(reply_lines(fixed, "", ""))
            if fixed.code >= 400:
                # Servers that refuse at the greeting still answer QUIT, then hang up.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(reader.readline(), 5)
                    await say(["221 bye"])
                return
        await say(["220 mx.responder.test ESMTP"])
        rcpts: list[str] = []
        sender = ""
        while True:
            raw = await reader.readline()
            if not raw:
                return
            line = raw.decode("latin-1").rstrip("\r\n")
            verb = line[:4].upper()
            if verb in {"EHLO", "HELO"}:
                if fixed is not None and fixed.phase == "HELO":
                    await say(reply_lines(fixed, "", sender))
                    continue
                if verb == "EHLO":
                    await say(["250-mx.responder.test", "250-8BITMIME", "250 SIZE 52428800"])
                else:
                    await say(["250 mx.responder.test"])
            elif verb == "MAIL":
                sender = line.partition(":")[2].strip().strip("<>").split(">")[0]
                if fixed is not None and fixed.phase == "MAIL":
                    await say(reply_lines(fixed, "", sender))
                else:
                    rcpts = []
                    await say(["250 2.1.0 Ok"])
            elif verb == "RCPT":
                rcpt = line.partition(":")[2].strip().split(">")[0].strip("<> ").lower()
                reply = plan.by_recipient.get(rcpt) or (
                    fixed if fixed is not None and fixed.phase == "RCPT" else None
                )
                if reply is not None and reply.phase == "RCPT":
                    await say(reply_lines(reply, rcpt, sender))
                else:
                    rcpts.append(rcpt)
                    await say(["250 2.1.5 Ok"])
            elif verb == "DATA":
                if not rcpts:
                    await say(["554 5.5.1 Error: no valid recipients"])
                    continue
                await say(["354 End data with <CR><LF>.<CR><LF>"])
                while True:
                    body = await reader.readline()
                    if not body or body in {b".\r\n", b".\n"}:
                        break
                replies = [plan.by_recipient.get(r) for r in rcpts]
                reply = next((r for r in replies if r is not None and r.phase == "DATA"), None)
                if reply is None and fixed is not None and fixed.phase == "DATA":
                    reply = fixed
                if reply is not None:
                    await say(reply_lines(reply, rcpts[0], sender))
                else:
                    await say(["250 2.0.0 Ok: queued"])
            elif verb == "QUIT":
                await say(["221 2.0.0 Bye"])
                return
            elif verb == "RSET":
                rcpts = []
                await say(["250 2.0.0 Ok"])
            else:
                await say(["502 5.5.2 Error: command not recognized"])


@contextlib.contextmanager
def running() -> Iterator[Responder]:
    responder = Responder()
    responder.start()
    try:
        yield responder
    finally:
        responder.stop()
