"""The learned policy: portions go where the expected time to the last delivery is least.

On each plan (every ``REPLAN_S`` at most, and at once after a demotion or when a server
appears) the router

1. estimates each (server, domain) pair's connection-seconds per delivered recipient from
   the routing table plus this run's evidence, pooled across domains on the same MX host
   or network (``estimates.py``);
2. solves the makespan program over the work still waiting, given what each server still
   has in hand (``plan.py``), using pairs it knows, or every pair of a domain nobody knows
   yet, and rounds the result to whole portions per server and domain;
3. lists the unknown pairs worth one trial portion (``exploration.py``), which servers take
   before their plan while the spec's exploration share allows.

A server whose plan is empty gets nothing: that is how a slow server is kept from holding
the last portions of a domain a fast server would finish sooner, and how a fast server is
not buried (the plan gives it only what it can finish by the common end). An unknown pair
has one piece of ``TRIAL_RECIPIENTS`` out at a time, counted per server and MX host (the
spec's mx_override and probes say which domains share one), so a bad guess costs a few
recipients' time. A pair whose recent
transactions turn to 4xx/5xx is demoted for a cooldown (``demotion.py``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
from numpy.typing import NDArray

from raymail.driver.dispatch import ServerView, Work, WorkQueue
from raymail.routing.base import BaseRouter, Given, ServerHandles, expected_keys
from raymail.routing.demotion import Demotions
from raymail.routing.estimates import (
    BAD,
    BUSY,
    OK,
    RCPT,
    TRIAL_RECIPIENTS,
    TX,
    Estimates,
    PairStats,
    estimate,
)
from raymail.routing.exploration import offers
from raymail.routing.model import UNKNOWN_MX, PortionEvidence, network_of
from raymail.routing.plan import Plan, round_portions, solve
from raymail.routing.runlog import ESTIMATES_END, ESTIMATES_START, PLAN_START
from raymail.routing.snapshots import estimates_frame, plan_frame
from raymail.spec import CampaignSpec

REPLAN_S = 0.25
ACTIVE_S = 5.0  # a server neither asking nor holding work this long is left out of plans
EXPECTED_GRACE_S = 15.0  # servers the spec promises count as present this long
END_SLACK_S = 0.2
END_FACTOR = 1.2

Pair = tuple[str, str]


class LearnedRouter(BaseRouter):
    """Makespan-minimising, learning router (the default policy)."""

    policy = "learned"

    def __init__(
        self,
        spec: CampaignSpec,
        *,
        run_dir: str | Path | None = None,
        servers: ServerHandles | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(spec, run_dir=run_dir, servers=servers, clock=clock)
        self.stats = PairStats(self.table.load(self.half_life_s))
        self.demotions = Demotions(clock, self._event)
        self.expected = Counter(expected_keys(spec))
        self.last_seen: dict[str, float] = {}  # actor name -> when it last asked
        self.quota: dict[str, dict[str, int]] = {}  # route key -> domain -> portions
        self.offers: dict[str, list[str]] = {}  # route key -> domains to try, best first
        self.plan: Plan | None = None
        self.plan_domains: list[str] = []
        self._planned: set[str] = set()  # the domains the plan was made for
        self._plan_at = -math.inf
        self._dirty = True
        self._mean: dict[Pair, float] = {}
        self._usable: set[Pair] = set()  # pairs the plan may use
        self._unsure: set[Pair] = set()  # pairs without enough evidence
        self._blind: set[str] = set()  # domains no server has enough evidence for
        self._explored = 0.0  # recipients given to trial portions in this run
        self._budget = 0.0  # recipients trial portions may still take
        self._given_total = 0.0
        self._ready: dict[str, float] = {}  # clock time each server frees a connection
        self._slots: dict[str, float] = {}
        self._portion_size: dict[str, float] = {}  # mean waiting portion size per domain
        self._plan_end = math.inf
        self.trials = 0
        self.plans = 0
        self._started_recorded = False
        for domain, target in (spec.mx_override or {}).items():  # MX hosts known up front
            host = target.rpartition(":")[0].strip("[]").lower()
            if domain != "*" and host:
                self.stats.set_groups(self.stats.domain(domain), host, network_of(host))

    # -- take ----------------------------------------------------------------------------

    def take(self, server: ServerView, queue: WorkQueue, limit: int) -> list[Work]:
        now = self.clock()
        self.queue = queue
        key = self.register(server)
        if server.name not in self.last_seen:
            self._dirty = True
        self.last_seen[server.name] = now
        waiting = set(queue.domains())
        if not waiting <= self._planned:  # e.g. retries back from their backoff
            self._dirty = True
        if self.plan is None or self._dirty or now - self._plan_at >= REPLAN_S:
            self._replan(queue, now)
        # unknown pairs: one trial piece out per server and MX host (what one teaches, the
        # host's other domains share), so a slow server is not tried twice at once; a piece
        # costs a few recipients' time where a whole portion would cost a portion's
        held = Counter((g.key, self._host(g.domain)) for g in self.outstanding.values())
        taken: list[Work] = []
        while len(taken) < limit:
            domain, trial = self._next(key, waiting, held)
            if domain is None:
                break
            unsure = trial or (key, domain) in self._unsure
            work = queue.pop(domain, at_most=TRIAL_RECIPIENTS if unsure else None)
            if work is None:
                waiting.discard(domain)
                continue
            quota = self.quota.get(key, {})
            if not trial and quota.get(domain, 0) > 0:
                quota[domain] -= 1
            if trial:
                self.trials += 1
                self._explored += work.task.size
                self._budget -= work.task.size
            held[(key, self._host(domain))] += 1
            self._given_total += work.task.size
            cost = work.task.size * self._cost(key, domain)
            slots = self._slots.get(key, float(self.spec.concurrency))
            self._ready[key] = max(self._ready.get(key, now), now) + cost / slots
            self.give(server, key, work, cost)
            taken.append(work)
        return taken

    def _next(self, key: str, waiting: set[str], held: Counter[Pair]) -> tuple[str | None, bool]:
        """(domain, is a trial): trials first, then the plan, then domains nobody knows."""
        if self._budget > 0:
            for domain in self.offers.get(key, []):
                if domain in waiting and held[(key, self._host(domain))] == 0:
                    self.offers[key].remove(domain)
                    return domain, True
        quota = self.quota.get(key, {})
        candidates = [
            d
            for d, n in quota.items()
            if n > 0
            and d in waiting
            and not ((key, d) in self._unsure and held[(key, self._host(d))])
            and self._in_time(key, d)
        ]
        if candidates:
            return max(candidates, key=quota.__getitem__), False
        for domain in self._blind & waiting:  # idle slots: trying these costs nothing
            if held[(key, self._host(domain))] == 0:
                return domain, False
        return None, False

    def server_gone(self, server: str) -> None:
        super().server_gone(server)
        self.last_seen.pop(server, None)  # out of the plans until it asks again
        self._dirty = True

    def _host(self, domain: str) -> str:
        """The domain's MX host group when known (probes, evidence, the spec's
        mx_override), else the domain itself."""
        group = int(self.stats.mx_group[self.stats.domain(domain)])
        return f"mx#{group}" if group >= 0 else domain

    def _in_time(self, key: str, domain: str) -> bool:
        """End game: a portion that would finish after the plan's end on this server goes
        only if no other server would finish it clearly sooner (the plan is fluid; the last
        whole portions are not, and one slow portion at the end sets the makespan)."""
        size = self._portion_size.get(domain, 1.0)
        now = self.clock()
        finish = max(self._ready.get(key, now), now) + size * self._cost(key, domain)
        if finish <= self._plan_end + END_SLACK_S:
            return True
        others = [
            max(ready, now) + size * self._mean[(other, domain)]
            for other, ready in self._ready.items()
            if other != key and (other, domain) in self._usable
        ]
        return not others or finish <= END_FACTOR * min(others)

    def _cost(self, key: str, domain: str) -> float:
        """Expected connection-seconds per recipient of one pair (0.05 s if unplanned)."""
        return self._mean.get((key, domain), 0.05)

    # -- plan ----------------------------------------------------------------------------

    def _active_keys(self, now: float) -> Counter[str]:
        """Route keys that can take work now, counted in actors (each has its slots)."""
        busy = {g.name for g in self.outstanding.values()}
        names = [n for n, seen in self.last_seen.items() if now - seen < ACTIVE_S or n in busy]
        active = Counter(self.names[n] for n in names)
        if now - self.started < EXPECTED_GRACE_S:
            for key, count in self.expected.items():
                active[key] = max(active[key], count)
        return active

    def _replan(self, queue: WorkQueue, now: float) -> None:
        self._dirty = False
        self._plan_at = now
        self.demotions.expire()
        work_by: dict[str, int] = {}
        portions_by: dict[str, int] = {}
        for item in queue:
            work_by[item.task.domain] = work_by.get(item.task.domain, 0) + item.task.size
            portions_by[item.task.domain] = portions_by.get(item.task.domain, 0) + 1
        active = self._active_keys(now)
        keys, domains = sorted(active), list(work_by)
        self.plan_domains = domains
        self._planned = set(domains)
        if not keys or not domains:
            self.quota, self.offers = {}, {}
            self.plan = Plan(np.zeros((len(keys), len(domains))), 0.0)
            return
        ks = np.array([self.stats.key(k) for k in keys])
        ds = np.array([self.stats.domain(d) for d in domains])
        est = self.estimates(keys, domains, ks, ds)
        mean = est.effective()
        blocked = np.asarray(self._mask(keys, domains, self.demotions.demoted) | est.excluded)
        blocked[:, blocked.all(axis=0)] = False  # nobody left: everybody may try
        probation = self._mask(keys, domains, self.demotions.probation)
        known = est.confident & ~blocked & ~probation
        has_known = np.asarray(known.any(axis=0), dtype=bool)
        # known pairs; in a domain nobody knows, every pair at its prior
        tau = np.where(known | ~has_known[None, :], mean, np.inf)
        tau = np.where(blocked, np.inf, np.maximum(tau, self._floor(keys, domains, now)))
        work = np.array([work_by[d] for d in domains], dtype=np.float64)
        portions = np.array([portions_by[d] for d in domains], dtype=np.int64)
        slots = np.array([active[k] * self.spec.concurrency for k in keys], dtype=np.float64)
        backlog = self._backlog(keys, slots, now)
        self.plan = solve(tau, work, slots, backlog)
        self.plans += 1
        self._plan_end = now + self.plan.makespan
        self._slots = {k: float(slots[i]) for i, k in enumerate(keys)}
        self._ready = {k: now + float(backlog[i] / slots[i]) for i, k in enumerate(keys)}
        self._portion_size = {d: work_by[d] / portions_by[d] for d in domains}
        counts = round_portions(self.plan.share, portions)
        self.quota = {
            key: {d: int(counts[i, j]) for j, d in enumerate(domains) if counts[i, j] > 0}
            for i, key in enumerate(keys)
        }
        candidates = (~est.confident | probation) & ~blocked
        self.offers = {}
        groups = self.stats.mx_group[ds]
        shared = np.array([work[groups == g].sum() if g >= 0 else 0.0 for g in groups])
        reach = np.maximum(work, shared)  # what a trial on one domain of an MX teaches
        trial = float(TRIAL_RECIPIENTS)
        for offer in offers(est, mean, known, candidates, probation, work, portions, reach, trial):
            self.offers.setdefault(keys[offer.server], []).append(domains[offer.domain])
        share = self.settings.exploration * (self._given_total + float(work.sum()))
        self._budget = share - self._explored
        self._mean = {
            (k, d): float(mean[i, j]) for i, k in enumerate(keys) for j, d in enumerate(domains)
        }
        self._usable = {(keys[i], domains[j]) for i, j in np.argwhere(np.isfinite(tau))}
        self._unsure = {(keys[i], domains[j]) for i, j in np.argwhere(~est.confident)}
        self._blind = {domains[j] for j in np.nonzero(~est.confident.any(axis=0))[0]}
        if not self._started_recorded and self.records is not None:
            self._started_recorded = True
            demoted = self.demotions.demoted
            self.records.write(ESTIMATES_START, estimates_frame(keys, domains, est, demoted))
            self.records.write(PLAN_START, plan_frame(keys, domains, self.plan, counts))

    def estimates(
        self, keys: list[str], domains: list[str], ks: NDArray[np.int64], ds: NDArray[np.int64]
    ) -> Estimates:
        """What the plan believes about these pairs (the oracle overrides this)."""
        del keys, domains
        return estimate(self.stats, ks, ds)

    @staticmethod
    def _mask(keys: list[str], domains: list[str], pairs: set[Pair]) -> NDArray[np.bool_]:
        mask = np.zeros((len(keys), len(domains)), dtype=bool)
        if pairs:
            rows = {k: i for i, k in enumerate(keys)}
            cols = {d: j for j, d in enumerate(domains)}
            for key, domain in pairs:
                if key in rows and domain in cols:
                    mask[rows[key], cols[domain]] = True
        return mask

    def _floor(self, keys: list[str], domains: list[str], now: float) -> NDArray[np.float64]:
        """What unknown pairs' portions still out say already: one out for t seconds with n
        recipients takes at least about t / n per recipient (censored evidence)."""
        floor = np.zeros((len(keys), len(domains)))
        rows = {k: i for i, k in enumerate(keys)}
        cols = {d: j for j, d in enumerate(domains)}
        for given in self.outstanding.values():
            i, j = rows.get(given.key), cols.get(given.domain)
            if i is None or j is None or (given.key, given.domain) not in self._unsure:
                continue
            floor[i, j] = max(floor[i, j], (now - given.at) / max(given.size, 1))
        return floor

    def _backlog(
        self, keys: list[str], slots: NDArray[np.float64], now: float
    ) -> NDArray[np.float64]:
        """Connection-seconds each server still has to do for portions in hand."""
        index = {k: i for i, k in enumerate(keys)}
        held = Counter(g.key for g in self.outstanding.values())
        backlog = np.zeros(len(keys))
        for given in self.outstanding.values():
            i = index.get(given.key)
            if i is None:
                continue
            running = min(1.0, slots[i] / max(held[given.key], 1))
            left = given.cost_s - (now - given.at) * running
            backlog[i] += max(left, 0.2 * given.cost_s)
        return backlog

    # -- learning ------------------------------------------------------------------------

    def learn(self, key: str, evidence: PortionEvidence, given: Given | None) -> None:
        if not evidence.domain:
            return
        k, d = self.stats.key(key), self.stats.domain(evidence.domain)
        run = self.stats.run
        mx_weight: dict[str, float] = {}
        for (_, _, mx), sums in evidence.sums.items():
            run[TX, k, d] += sums[0]
            run[RCPT, k, d] += sums[1]
            run[BUSY, k, d] += sums[2]
            run[OK, k, d] += sums[7]
            run[BAD, k, d] += sums[8] + sums[9]
            if mx != UNKNOWN_MX:
                mx_weight[mx] = mx_weight.get(mx, 0.0) + sums[0]
        if mx_weight:
            mx = max(mx_weight, key=mx_weight.__getitem__)
            self.stats.set_groups(d, mx, network_of(mx))
        if self.demotions.judge((key, evidence.domain), evidence.bad_flags):
            self._dirty = True
        if (key, evidence.domain) in self._unsure:  # a trial came back: plan with it now
            self._dirty = True

    def on_probes(self, probes: pl.DataFrame) -> None:
        for server, domain, mx, rtt in probes.select(
            "server", "domain", "mx_host", "rtt_ms"
        ).iter_rows():
            if not server or not domain:
                continue
            k, d = self.stats.key(str(server)), self.stats.domain(str(domain))
            if rtt is not None:
                self.stats.rtt[k, d] = float(rtt)
            if mx:
                self.stats.set_groups(d, str(mx), network_of(str(mx)))

    def _event(self, event: str, server: str, domain: str, detail: str) -> None:
        if self.records is not None:
            self.records.event(self.elapsed(), event, server, domain, detail)

    def probe_domains(self) -> list[str]:
        if self.plan is None or not self.plan.share.size:
            return super().probe_domains()
        order = np.argsort(-self.plan.share.sum(axis=0))
        ranked = [self.plan_domains[int(j)] for j in order]
        return list(dict.fromkeys([*ranked, *self.seen_domains]))

    def record_state(self) -> None:
        if self.records is None or not self.stats.keys or not self.seen_domains:
            return
        keys, domains = list(self.stats.keys), list(self.seen_domains)
        ks = np.array([self.stats.key(k) for k in keys])
        ds = np.array([self.stats.domain(d) for d in domains])
        est = estimate(self.stats, ks, ds)
        frame = estimates_frame(keys, domains, est, self.demotions.demoted)
        self.records.write(ESTIMATES_END, frame)
        self.records.write_summary(
            {
                "plans": self.plans,
                "trials": self.trials,
                "trial_recipients": self._explored,
                "given_recipients": self._given_total,
                "exploration_share": self.settings.exploration,
            }
        )
