"""Sends the returns a sink rule asks for, in the background, to the returns server.

The 250 that accepted a message never waits for its return: like an MTA that bounces later,
the sink queues the return and delivers it by SMTP to ``returns_server`` (the sender's
return domain as seen from the test), retrying a refused connection or a 4xx a few times
with a short backoff. A message whose envelope sender is null (``<>``, itself a return)
never gets a return, so two sinks can never bounce mail back and forth.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Final

import aiosmtplib

from raymail.hostport import split_host_port
from raymail.sink.config import Behaviour, Rule, SinkConfig
from raymail.sink.returns import build_return
from raymail.sink.stats import SinkStats

log = logging.getLogger(__name__)

_ATTEMPTS: Final = 4
_BACKOFF_S: Final = 0.25
_TIMEOUT_S: Final = 15.0


class ReturnSender:
    """Background delivery of generated returns; ``close`` waits (bounded) for them."""

    def __init__(self, config: SinkConfig, stats: SinkStats) -> None:
        self.config = config
        self.stats = stats
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(
        self, kind: Behaviour, raw: bytes, *, mail_from: str, recipient: str, rule: Rule
    ) -> None:
        """Queue one return of ``kind`` for ``recipient`` of an accepted message."""
        if not mail_from.strip("<> "):
            self.stats.returns_skipped += 1  # never return a return
            return
        if self.config.returns_server is None:
            self.stats.returns_failed += 1
            log.warning("sink: %s for %s but no returns_server configured", kind, recipient)
            return
        reply = rule.bounce_soft_reply if kind is Behaviour.BOUNCE_SOFT else rule.bounce_hard_reply
        task = asyncio.get_running_loop().create_task(
            self._send(kind, raw, mail_from.strip("<> "), recipient, reply)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(
        self, kind: Behaviour, raw: bytes, mail_from: str, recipient: str, reply: str
    ) -> None:
        assert self.config.returns_server is not None
        host, port = split_host_port(self.config.returns_server)
        arrived = datetime.now(UTC)
        if self.config.returns_delay_ms:
            await asyncio.sleep(self.config.returns_delay_ms / 1000.0)
        sender, message = build_return(
            kind,
            raw,
            envelope_sender=mail_from,
            recipient=recipient,
            reply=reply,
            reporting_mta=self.config.hostname,
            arrived=arrived,
        )
        for attempt in range(_ATTEMPTS):
            try:
                client = aiosmtplib.SMTP(
                    hostname=host, port=port, timeout=_TIMEOUT_S, start_tls=False
                )
                async with client:  # not aiosmtplib.send: it refuses the null sender
                    await client.sendmail(sender, [mail_from], message)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                self.stats.returns_failed += 1  # the returns server refused the address
                log.warning("sink: return for %s refused: %s", recipient, exc)
                return
            except aiosmtplib.SMTPResponseException as exc:
                if exc.code >= 500:
                    self.stats.returns_failed += 1
                    return
            except (aiosmtplib.SMTPException, OSError):
                pass
            else:
                self.stats.returns_sent += 1
                return
            await asyncio.sleep(_BACKOFF_S * 2**attempt)
        self.stats.returns_failed += 1
        log.warning("sink: return for %s not delivered after %d attempts", recipient, _ATTEMPTS)

    async def close(self, timeout_s: float) -> None:
        """Let queued returns finish for up to ``timeout_s``, then cancel the rest."""
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
