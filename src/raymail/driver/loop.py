"""The dispatch loop: one loop, two ways of handing work out (push or pull).

Each round reads more of the list when the queue runs low (back-pressure), moves retries
whose backoff has passed back into the queue, lets the strategy exchange work and results
with the delivery servers, watches the fleet, and keeps the ledger, router and progress
going. The strategies (``push.py``, ``pull.py``) only say how portions reach servers and
how results come back; everything a result means is settled here, the same for both.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from raymail.delivery.server import PortionResult
from raymail.driver.alternates import Alternates
from raymail.driver.dispatch import LeastLoadedRouter, Router, Work, WorkQueue
from raymail.driver.fleet import Fleet, Server
from raymail.driver.portions import PortionStream
from raymail.driver.progress import ProgressReporter, Tally
from raymail.driver.pull import PullStrategy
from raymail.driver.push import PushStrategy
from raymail.driver.reroute import Reroutes, server_key
from raymail.driver.settle import (
    Retry,
    failed_outcomes,
    next_attempt,
    settle_failed_call,
    settle_outcomes,
)
from raymail.run.ledger import Ledger
from raymail.run.recovery import recovered_outcomes
from raymail.spec import CampaignSpec

log = logging.getLogger(__name__)

_FALLBACK_ROUTER = LeastLoadedRouter()
HOP_PORTIONS = 1 << 40  # far above any list's portion ids


@dataclass
class DispatchState:
    """What the loop holds between rounds (besides the portions on servers)."""

    ready: WorkQueue = field(default_factory=WorkQueue)
    delayed: list[tuple[float, int, Work]] = field(default_factory=list)  # (due, portion, work)
    tally: Tally = field(default_factory=Tally)
    attempts: int = 0  # portion attempts handed out by this driver
    source: PortionStream | None = None  # the rest of the list, read when ready runs low
    peak_ready: int = 0  # most portions queued at once (back-pressure keeps it bounded)
    peak_inflight: int = 0  # most portions on delivery servers at once
    waiting_until: float | None = None  # set when the run stops to wait: next due (Unix s)

    @property
    def more(self) -> bool:
        """Portions still to come from the list."""
        return self.source is not None and not self.source.exhausted


class Strategy(Protocol):
    """How portions reach delivery servers and how their results come back."""

    def held(self) -> int:
        """Portions handed out and not yet settled."""
        ...

    def exchange(self) -> None:
        """Hand out work and settle what came back (waits a little when there is none)."""
        ...

    def check(self) -> None:
        """After the fleet's watch: take back work the strategy itself finds lost."""
        ...

    def close(self) -> None:
        """End the strategy's own machinery (pull mode's broker and loops)."""
        ...


class DispatchLoop:
    """Dispatches every portion of a run until each row is settled."""

    def __init__(
        self,
        spec: CampaignSpec,
        fleet: Fleet,
        router: Router,
        ledger: Ledger,
        progress: ProgressReporter,
        state: DispatchState,
        *,
        each_round: Callable[[], None] = lambda: None,
    ) -> None:
        self.spec = spec
        self.fleet = fleet
        self.router = router
        self.ledger = ledger
        self.progress = progress
        self.state = state
        self.each_round = each_round  # e.g. sizing to a target time once warm
        self._resend_doubt = spec.resends_in_doubt
        self.alternates = Alternates(spec)
        self.reroutes = Reroutes(spec)  # on_failure.blocked: other_server
        self._next_hop_id = HOP_PORTIONS
        self._starved = False  # the router once handed out nothing with nothing in flight

    def run(self) -> None:

        strategy: Strategy = (
            PullStrategy(self) if self.spec.dispatch == "pull" else PushStrategy(self)
        )
        state = self.state
        try:
            while self.has_work() or state.delayed or strategy.held() or state.more:
                if self._only_later_retries(strategy):
                    break
                self.refill()
                self.promote_delayed()
                strategy.exchange()
                state.peak_inflight = max(state.peak_inflight, strategy.held())
                self.fleet.watch()
                strategy.check()
                if self.reroutes.pinned:
                    self.reroutes.strand(self._server_keys(), state.tally)
                self.router.tick(state.ready)
                if self.ledger.due():
                    self.ledger.flush()
                self.progress.backoff = self.fleet.backoff()
                due = self.next_due_s()
                self.progress.next_retry_at = None if due is None else time.time() + due
                self.progress.update(state.tally)
                self.each_round()
        finally:
            strategy.close()

    # -- the queue -----------------------------------------------------------------------

    def has_work(self) -> bool:
        """Portions ready to hand out: the queue's, and blocked ones due for another server."""
        return bool(self.state.ready) or bool(self.reroutes.pinned)

    def _server_keys(self) -> set[str]:
        """The healthy servers, as blocked recipients name them (driver/reroute.py)."""
        return {server_key(s) for s in self.fleet.servers if s.healthy}

    def refill(self) -> None:
        """Back-pressure: read the next batch of the list only when the queue runs low.

        The low-water mark is twice what the servers can hold, so they never wait for the
        list; the queue then holds at most that plus one batch's portions.
        """
        state = self.state
        source = state.source
        low_water = max(16, 2 * len(self.fleet.servers) * self.fleet.capacity)
        while source is not None and not source.exhausted and len(state.ready) < low_water:
            for task, rows in source.next_portions():
                self._queue(Work(task, rows), source.not_before.pop(task.portion, 0.0))
        state.peak_ready = max(state.peak_ready, len(state.ready))

    def _queue(self, work: Work, not_before: float) -> None:
        """Ready now, or (a resumed deferral not yet due) delayed until ``not_before``."""
        wait = not_before - time.time()
        if wait <= 0:
            self.state.ready.push(work)
        else:
            due = time.monotonic() + wait
            heapq.heappush(self.state.delayed, (due, work.task.portion, work))

    def promote_delayed(self) -> None:
        """Retries whose backoff has passed go back into the queue."""
        now = time.monotonic()
        delayed = self.state.delayed
        while delayed and delayed[0][0] <= now:
            _, _, work = heapq.heappop(delayed)
            if work.avoid:  # blocked by some server: only another one may take it
                self.reroutes.pinned.append(work)
            else:
                self.state.ready.push(work)

    def _only_later_retries(self, strategy: Strategy) -> bool:
        """Deferral queue: when all that is left are retries due later than ``retry.linger``,
        the run stops here to wait (its process ends; a resume continues when they are due).
        Records the next due time in ``state.waiting_until``."""
        state = self.state
        retry = self.spec.retry
        if not retry.deferral_queue or self.has_work() or strategy.held() or state.more:
            return False
        if any(work.avoid for _, _, work in state.delayed):
            return False  # blocked retries wait out their (short) delay in this run
        due = self.next_due_s()
        if due is None or due <= retry.linger_s:
            return False
        state.waiting_until = time.time() + due
        return True

    def next_due_s(self) -> float | None:
        """Seconds until the next retry is due (None when none waits)."""
        delayed = self.state.delayed
        return delayed[0][0] - time.monotonic() if delayed else None

    def take(self, server: Server, limit: int, *, idle: bool) -> list[Work]:
        """The router's choice of portions for ``server``; when it hands out nothing while
        no call is in flight anywhere, the queue's next ones instead: whatever a routing
        policy believes (say, that a dead server still holds a domain), the run must go
        on to its end. The works returned are counted as handed to ``server``."""
        queue = self.state.ready
        view = self.fleet.view(server)
        works = self.reroutes.take(server, limit)  # never the router's: it may pick anyone
        if len(works) < limit:
            works += self.router.take(view, queue, limit - len(works))
        if not works and idle and queue:
            if not self._starved:
                self._starved = True
                log.warning(
                    "the router handed out no work while %d portions wait and none is in "
                    "flight; dispatching them least-loaded",
                    len(queue),
                )
            works = _FALLBACK_ROUTER.take(view, queue, limit)
        if works:
            self.fleet.hand_out(server, len(works))
            self.state.attempts += len(works)
        return works

    def _hop_ids(self) -> int:
        """Portion ids for hops when the queue hands out none (a queue built by hand)."""
        self._next_hop_id += 1
        return self._next_hop_id

    # -- settling ------------------------------------------------------------------------

    def settle_result(self, server: Server, work: Work, result: PortionResult) -> None:
        """A portion came back: ledger it, retry what was deferred, judge and learn."""
        server.inflight -= 1
        outcomes = self.alternates.link(work, result.outcomes)
        observations = result.observations
        self.ledger.add(outcomes, observations)
        retry = settle_outcomes(
            self.state.tally,
            work.task,
            outcomes,
            self.spec.retry,
            resend_doubt=self._resend_doubt,
            sent=work.rows,
        )
        self._requeue(work, retry)
        self._hop(work, self._reroute(server, work, outcomes))
        self.fleet.returned(server, outcomes, work.task.domain)
        self.router.observe(server.name, outcomes, observations)

    def settle_failure(self, server: Server, work: Work, exc: BaseException) -> None:
        """A call died with its actor (or raised): settle from the journal, requeue the rest.

        What the dead server had accepted is never sent again; what it had in flight is in
        doubt; what it never touched goes to another attempt right away.
        """
        server.inflight -= 1
        if self.fleet.call_failed(server, exc):
            work.internal_failures += 1
        task = work.task
        self.router.failed(server.name, task.portion, task.attempt)
        log.warning("portion %d failed on %s: %s", task.portion, server.name, exc)
        journal = self.fleet.journal(server.name).filter(
            (pl.col("portion") == task.portion) & (pl.col("attempt") == task.attempt)
        )
        known = pl.DataFrame(schema={"row": pl.Int64, "attempt": pl.Int32})
        recovered = recovered_outcomes(journal, known, work.rows, self.spec.campaign)
        if recovered.num_rows:
            self.ledger.add(recovered, pa.table({}))
        settled = settle_failed_call(
            self.state.tally, work, recovered, self.spec.retry, resend_doubt=self._resend_doubt
        )
        if settled.given_up.num_rows:
            failed = failed_outcomes(self.spec.campaign, work, settled.given_up, server.name, exc)
            self.ledger.add(self.alternates.link(work, failed), pa.table({}))
        self._requeue(work, settled.retry)
        self._hop(work, recovered)

    def _hop(self, work: Work, outcomes: pa.Table) -> None:
        """Settled failures the spec sends on go to their next alternate, at once."""
        new_id = self.state.ready.new_id or self._hop_ids
        self.queue_hops(self.alternates.next_hops(work, outcomes, self.state.tally, new_id))

    def _reroute(self, server: Server, work: Work, outcomes: pa.Table) -> pa.Table:
        """Rows ``server`` refused as blocked go again later, through another server;
        returns the outcomes of the rest (for the alternates' turn)."""
        new_id = self.state.ready.new_id or self._hop_ids
        keys = self._server_keys()
        again = self.reroutes.blocked(server, work, outcomes, self.state.tally, keys, new_id)
        if again is None:
            return outcomes
        item, delay_s = again
        log.info(
            "%d blocked recipient(s) of portion %d retried in %.1f s avoiding %s",
            item.task.size,
            work.task.portion,
            delay_s,
            ", ".join(sorted(item.avoid)),
        )
        due = time.monotonic() + delay_s
        heapq.heappush(self.state.delayed, (due, item.task.portion, item))
        kind = outcomes.schema.field("row").type
        retried = pa.array(item.rows.column("row").to_pylist(), kind)
        return outcomes.filter(pc.invert(pc.is_in(outcomes.column("row"), value_set=retried)))

    def queue_hops(self, hops: list[Work]) -> None:
        """Queue hop portions; an alternate on the suppression list gets a ledger row of
        its own (suppressed, at its hop) and the recipient goes on to the one after it."""
        new_id = self.state.ready.new_id or self._hop_ids
        pending = list(hops)
        if pending:
            # The failures a hop follows are ledgered before the hop can go out: a kill
            # after the hop is accepted must not leave its home failure (the bounce the
            # suppression list learns from) only in this driver's buffer; no journal has it
            # when the address was refused before DATA. Seen: 10 of 160 home rows lost.
            self.ledger.flush()
        while pending:  # bounded: each round moves a recipient one alternate further
            hop = pending.pop()
            kept, suppressed = self.alternates.screen(hop, self.spec)
            if suppressed.num_rows:
                self.ledger.add(suppressed, pa.table({}))
                self.state.tally.retrying -= suppressed.num_rows
                pending += self.alternates.next_hops(hop, suppressed, self.state.tally, new_id)
            if kept is not None:
                self.state.ready.push(kept)

    def queue_blocked(self, works: list[tuple[float, Work]]) -> None:
        """Blocked retries a resumed run owes, each due at its Unix time: delayed like
        in-run ones, then handed only to a server outside their ``avoid`` set."""
        for due, work in works:
            at = time.monotonic() + max(0.0, due - time.time())
            heapq.heappush(self.state.delayed, (at, work.task.portion, work))

    def _requeue(self, work: Work, retry: Retry) -> None:
        """Send some rows of a portion again, as the next attempt, after the retry's delay
        (and ledger the rows it gave up by age)."""
        if retry.expired is not None and retry.expired.num_rows:
            self.ledger.add(retry.expired, pa.table({}))
            self._hop(work, retry.expired)  # expired at this address: maybe the next one
        if not retry:
            return
        item = next_attempt(work, retry.rows, retry.first_at)
        due = time.monotonic() + retry.delay_s
        heapq.heappush(self.state.delayed, (due, item.task.portion, item))
