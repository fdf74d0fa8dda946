"""Blocked recipients retried through another delivery server (``on_failure.blocked:
other_server``, issue 14).

A 5xx that refuses the *sender* (policy, reputation: :func:`failure_kind` says
``blocked``) says nothing about the address: the receiver refused the server's source
address, and another delivery server of the run may be let in. So the blocked rows go
again, same address, as the next attempt under a fresh portion id, after a delay
(``on_failure.blocked_delay_s``, else the retry policy's delay), and carry the servers
that refused them (:attr:`Work.avoid`). Such work never goes through the router (a
routing policy may well pick the blocked server again): the loop hands it only to a
healthy server not in ``avoid``. Once every healthy server of the run has refused it, the
recipient stays failed (its ledger row, with ``server`` and ``source_address``, says
which server was blocked last) or, with ``other_server_then_alternate``, moves on to its
next alternate like any blocked recipient under ``blocked: alternate``.

A blocked recipient was refused, not accepted, so the retry can never make a second
copy. A killed run's pending retries are not resumed: those recipients stay failed (with
``other_server_then_alternate``, the resume sends them to their next alternate).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from raymail.driver.alternates import BLOCKED, failure_kind
from raymail.driver.dispatch import Work
from raymail.driver.fleet import Server
from raymail.driver.progress import Tally
from raymail.driver.settle import local_attempt, next_attempt
from raymail.spec import CampaignSpec
from raymail.status import FAILED

log = logging.getLogger(__name__)
OTHER_SERVER: Final = "other_server"
THEN_ALTERNATE: Final = "other_server_then_alternate"


def server_key(server: Server) -> str:
    """What a receiver blocks: the server's source address (its name when it has none)."""
    return server.source_address or server.name


class Reroutes:
    """Which blocked rows go to another server, and the work waiting for one."""

    def __init__(self, spec: CampaignSpec) -> None:
        self.enabled = spec.on_failure.blocked in (OTHER_SERVER, THEN_ALTERNATE)
        self.delay_s = spec.on_failure.blocked_delay_s
        self.retry = spec.retry
        self.pinned: list[Work] = []  # due, waiting for a server not in its avoid set
        self.rerouted = 0  # recipients sent again through another server
        self.exhausted = 0  # recipients every server had refused (given up)

    def blocked(
        self,
        server: Server,
        work: Work,
        outcomes: pa.Table,
        tally: Tally,
        servers: set[str],
        new_id: Callable[[], int],
    ) -> tuple[Work, float] | None:
        """(the retry of ``outcomes``' blocked rows, its delay in seconds), or None when
        none was blocked or every server in ``servers`` has refused them (they stay for
        the alternates' turn). ``tally`` counts the retried rows as retrying, not failed."""
        if not self.enabled or not outcomes.num_rows:
            return None
        failed = outcomes.filter(pc.equal(outcomes.column("status"), FAILED))
        rows = [
            out["row"]
            for out in failed.select(
                ["row", "status", "smtp_code", "enhanced_status", "response"]
            ).to_pylist()
            if failure_kind(
                out["status"], out["smtp_code"], out["enhanced_status"], out["response"] or ""
            )
            == BLOCKED
        ]
        if not rows:
            return None
        avoid = work.avoid | {server_key(server)}
        if not servers - avoid:
            self.exhausted += len(rows)
            log.info(
                "%d recipient(s) of portion %d blocked by every delivery server (%s): given up",
                len(rows),
                work.task.portion,
                ", ".join(sorted(avoid)),
            )
            return None
        again = next_attempt(work, pa.array(rows, pa.int64()))
        again = Work(replace(again.task, portion=new_id()), again.rows, 0, avoid)
        tally.failed -= len(rows)
        tally.retrying += len(rows)
        self.rerouted += len(rows)
        delay = self.delay_s
        if delay is None:
            delay = self.retry.delay(local_attempt(work.task.attempt))
        return again, delay

    def take(self, server: Server, limit: int) -> list[Work]:
        """Up to ``limit`` due works ``server`` has not refused."""
        key = server_key(server)
        taken = [w for w in self.pinned if key not in w.avoid][:limit]
        if taken:
            ids = {id(w) for w in taken}
            self.pinned = [w for w in self.pinned if id(w) not in ids]
        return taken

    def strand(self, servers: set[str], tally: Tally) -> None:
        """Give up works no healthy server in ``servers`` may take any more (the others
        were given up): their rows stay failed, as their ledger rows already say."""
        keep = []
        for work in self.pinned:
            if servers - work.avoid:
                keep.append(work)
                continue
            n = work.rows.num_rows
            tally.retrying = max(tally.retrying - n, 0)
            tally.failed += n
            self.exhausted += n
        self.pinned = keep
