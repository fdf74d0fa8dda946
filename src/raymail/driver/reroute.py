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
copy. A killed run's pending retries are resumed (:func:`resume_blocked`): a recipient
whose latest ledger row is such a refusal is owed again, avoiding every server its ledger
rows at that address say refused it, when a server of the resumed run has not; else it is
given up (or goes to its next alternate) as in-run. A refusal only the delivery journal
kept (the driver died before its checkpoint) has lost its reply, so it counts as a hard
bounce, as every journal-only failure does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raymail.driver.alternates import BLOCKED, Hop, failure_kind, hop_of, hop_works
from raymail.driver.dispatch import Work
from raymail.driver.fleet import Server
from raymail.driver.progress import Tally
from raymail.driver.settle import local_attempt, next_attempt
from raymail.run.ledger import read_outcomes
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


@dataclass(frozen=True)
class ResumeBlocked:
    """Blocked retries a killed run still owed: rows the list stream must skip, and the
    retries to queue instead, each with the servers it avoids and when it is due (Unix
    seconds), built once portion ids can be handed out."""

    rows: npt.NDArray[np.int64]
    source: pa.Table
    groups: list[tuple[frozenset[str], float, list[Hop]]]

    def works(self, new_id: Callable[[], int]) -> list[tuple[float, Work]]:
        """(due, work) of every retry: one portion per domain, attempt and avoid set."""
        return [
            (due, Work(w.task, w.rows, 0, avoid))
            for avoid, due, hops in self.groups
            for w in hop_works(self.source, hops, new_id)
        ]


NO_RESUME_BLOCKED: Final = ResumeBlocked(np.array([], np.int64), pa.table({}), [])
_REFUSAL = ["row", "attempt", "status", "smtp_code", "enhanced_status", "response", "server"]
_REFUSAL += ["source_address", "email", "alternate_of", "finished_at"]


def resume_blocked(
    spec: CampaignSpec, run_dir: Path, recipients: Path, final: pl.DataFrame, servers: set[str]
) -> ResumeBlocked:
    """Blocked retries a killed run had pending: each recipient whose latest outcome in
    ``final`` (latest per row, ledger and journals) is a blocked refusal and that some
    server in ``servers`` (the resumed run's, as :func:`server_key` names them) has not
    refused at that address. An accepted recipient's latest outcome is its acceptance,
    so it is never owed."""
    reroutes = Reroutes(spec)
    failed = final.filter(pl.col("status") == FAILED).select(["row", "attempt"])
    if not reroutes.enabled or failed.height == 0:
        return NO_RESUME_BLOCKED
    ledger = read_outcomes(run_dir, columns=_REFUSAL).filter(
        (pl.col("status") == FAILED) & pl.col("row").is_in(failed["row"].to_list())
    )
    latest = {int(r): int(a) for r, a in failed.iter_rows()}
    refused: dict[int, set[str]] = {}  # row -> servers that refused it at its latest address
    last: dict[int, dict[str, Any]] = {}
    for out in ledger.iter_rows(named=True):
        row, attempt = int(out["row"]), int(out["attempt"])
        code, text = out["smtp_code"], out["response"] or ""
        kind = failure_kind(FAILED, code, out["enhanced_status"], text)
        if kind != BLOCKED or hop_of(attempt) != hop_of(latest[row]):
            continue
        refused.setdefault(row, set()).add(str(out["source_address"] or out["server"]))
        if attempt == latest[row]:
            last[row] = out
    owed = {row: out for row, out in last.items() if servers - refused[row]}
    if not owed:
        return NO_RESUME_BLOCKED
    table = pq.read_table(recipients, filters=[("row", "in", list(owed))])
    position = {r: i for i, r in enumerate(table.column("row").to_pylist())}
    groups: dict[frozenset[str], tuple[float, list[Hop]]] = {}
    for row, out in owed.items():
        if row not in position:
            continue
        attempt = int(out["attempt"])
        delay = reroutes.delay_s
        if delay is None:
            delay = reroutes.retry.delay(local_attempt(attempt))
        ended = out["finished_at"]
        due = (ended.timestamp() if ended is not None else time.time()) + delay
        avoid = frozenset(refused[row])
        hop = Hop(position[row], out["email"], out["alternate_of"], attempt + 1)
        at, hops = groups.get(avoid, (0.0, []))
        groups[avoid] = (max(at, due), [*hops, hop])
    rows = np.sort(np.array([r for r in owed if r in position], np.int64))
    log.info("resume: %d blocked recipient(s) retried via another server", rows.size)
    return ResumeBlocked(rows, table, [(a, due, hops) for a, (due, hops) in groups.items()])
