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

A server is handed no more than ``HORIZON_S`` of work beyond what it holds, by the plan's
estimate and, once it has had work for a while, by the pace it keeps (shaping may hold it
to fewer connections than the plan counts): with a slow receiver the rest waits in the
driver's queue for whichever server frees up first, instead of being committed up front to
one whose estimate may be wrong. A server whose plan is empty gets nothing: that is how a
slow server is kept from holding the last portions of a domain a fast server would finish
sooner, and how a fast server is not buried (the plan gives it only what it can finish by
the common end). An unknown pair
has one piece of ``TRIAL_RECIPIENTS`` out at a time, counted per server and MX host (the
spec's mx_override and probes say which domains share one), so a bad guess costs a few
recipients' time. A pair whose recent
transactions turn to 4xx/5xx is demoted for a cooldown (``demotion.py``).

What the router keeps between calls is in three named parts (``policy_state.py``): the
servers' presence, the current schedule, and the exploration budget; the queue is read in
``take`` and never kept.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
from numpy.typing import NDArray

from raymail.driver.dispatch import ServerView, Work, WorkQueue
from raymail.hostport import split_host_port
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
from raymail.routing.policy_state import ExplorationBudget, GivenBack, Pair, Presence, Schedule
from raymail.routing.runlog import ESTIMATES_END, ESTIMATES_START, PLAN_START
from raymail.routing.snapshots import estimates_frame, plan_frame
from raymail.spec import CampaignSpec

REPLAN_S = 0.25
END_SLACK_S = 0.2
END_FACTOR = 1.2
HORIZON_S = 4.0  # a server is handed at most this much expected work beyond what it holds


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
        self.presence = Presence(Counter(expected_keys(spec)), self.started)
        self.schedule = Schedule()
        self.budget = ExplorationBudget(self.settings.exploration)
        self.given_back = GivenBack()
        self.dirty = True  # the schedule must be made again before the next take
        self.plans = 0
        self._start_recorded = False
        for domain, target in (spec.mx_override or {}).items():  # MX hosts known up front
            host = split_host_port(target)[0].lower()
            if domain != "*" and host:
                self.stats.set_groups(self.stats.domain(domain), host, network_of(host))

    @property
    def trials(self) -> int:
        return self.budget.trials

    # -- take ----------------------------------------------------------------------------

    def take(self, server: ServerView, queue: WorkQueue, limit: int) -> list[Work]:
        now = self.clock()
        key = self.register(server)
        if self.presence.asked(server.name, now):
            self.dirty = True
        waiting = set(queue.domains())
        schedule = self.schedule
        if not schedule.covers(waiting):  # e.g. retries back from their backoff
            self.dirty = True
        if schedule.plan is None or self.dirty or now - schedule.at >= REPLAN_S:
            schedule = self._replan(queue, now)
        # unknown pairs: one trial piece out per server and MX host (what one teaches, the
        # host's other domains share), so a slow server is not tried twice at once; a piece
        # costs a few recipients' time where a whole portion would cost a portion's
        held = Counter((g.key, self._host(g.domain)) for g in self.outstanding.values())
        holding = sum(g.size for g in self.outstanding.values() if g.key == key)  # recipients
        taken: list[Work] = []
        while len(taken) < limit:
            domain, trial = self._next(key, waiting, held)
            if domain is None:
                break
            if not trial and self._full(key, now, holding):
                break  # the rest waits here, for whichever server frees up first
            unsure = trial or (key, domain) in schedule.unsure
            work = queue.pop(domain, at_most=TRIAL_RECIPIENTS if unsure else None)
            if work is None:
                waiting.discard(domain)
                continue
            quota = schedule.quota.get(key, {})
            if not trial and quota.get(domain, 0) > 0:
                quota[domain] -= 1
            size = work.task.size
            self.budget.spend(size, trial=trial)
            held[(key, self._host(domain))] += 1
            cost = schedule.booked(key, domain, size, now, self.spec.concurrency)
            self.give(server, key, work, cost)
            self.given_back.handed(key, now)
            holding += size
            taken.append(work)
        return taken

    def _full(self, key: str, now: float, holding: int) -> bool:
        """``key``, holding ``holding`` recipients, has ``HORIZON_S`` of work already: by
        the plan's estimate, or by the pace it has kept lately (and at least two recipients
        per connection)."""
        schedule = self.schedule
        if schedule.ready.get(key, now) - now > HORIZON_S:
            return True
        pace = self.given_back.pace(key, now)
        if pace is None:
            return False
        slots = schedule.slots.get(key, float(self.spec.concurrency))
        return holding >= max(pace * HORIZON_S, 2.0 * slots)

    def _next(self, key: str, waiting: set[str], held: Counter[Pair]) -> tuple[str | None, bool]:
        """(domain, is a trial): trials first, then the plan, then domains nobody knows."""
        schedule = self.schedule
        if self.budget.left > 0:
            for domain in schedule.offers.get(key, []):
                if domain in waiting and held[(key, self._host(domain))] == 0:
                    schedule.offers[key].remove(domain)
                    return domain, True
        quota = schedule.quota.get(key, {})
        candidates = [
            d
            for d, n in quota.items()
            if n > 0
            and d in waiting
            and not ((key, d) in schedule.unsure and held[(key, self._host(d))])
            and self._in_time(key, d)
        ]
        if candidates:
            return max(candidates, key=quota.__getitem__), False
        for domain in schedule.blind & waiting:  # idle slots: trying these costs nothing
            if held[(key, self._host(domain))] == 0:
                return domain, False
        return None, False

    def server_gone(self, server: str) -> None:
        super().server_gone(server)
        self.presence.gone(server)
        self.dirty = True

    def _host(self, domain: str) -> str:
        """The domain's MX host group when known (probes, evidence, the spec's
        mx_override), else the domain itself."""
        group = int(self.stats.mx_group[self.stats.domain(domain)])
        return f"mx#{group}" if group >= 0 else domain

    def _in_time(self, key: str, domain: str) -> bool:
        """End game: a portion that would finish after the plan's end on this server goes
        only if no other server would finish it clearly sooner (the plan is fluid; the last
        whole portions are not, and one slow portion at the end sets the makespan)."""
        schedule = self.schedule
        size = schedule.portion_size.get(domain, 1.0)
        now = self.clock()
        finish = max(schedule.ready.get(key, now), now) + size * schedule.cost(key, domain)
        if finish <= schedule.end + END_SLACK_S:
            return True
        others = [
            max(ready, now) + size * schedule.mean[(other, domain)]
            for other, ready in schedule.ready.items()
            if other != key and (other, domain) in schedule.usable
        ]
        return not others or finish <= END_FACTOR * min(others)

    # -- plan ----------------------------------------------------------------------------

    def _replan(self, queue: WorkQueue, now: float) -> Schedule:
        """A new schedule for what ``queue`` holds now (it is read, not kept)."""
        self.dirty = False
        self.demotions.expire()
        work_by: dict[str, int] = {}
        portions_by: dict[str, int] = {}
        for item in queue:
            work_by[item.task.domain] = work_by.get(item.task.domain, 0) + item.task.size
            portions_by[item.task.domain] = portions_by.get(item.task.domain, 0) + 1
        active = self.presence.active(now, self.names, (g.name for g in self.outstanding.values()))
        keys, domains = sorted(active), list(work_by)
        if not keys or not domains:
            empty = Plan(np.zeros((len(keys), len(domains))), 0.0)
            # nothing to plan: no quotas or offers; the rest of what was believed stays
            self.schedule = dataclasses.replace(
                self.schedule, plan=empty, domains=domains, at=now, quota={}, offers={}
            )
            return self.schedule
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
        # Servers still learning a domain others know: planned as no better than the best
        # known one, so their share waits in the queue for their trial (not handed to the
        # known server all at once); the censored floor hands it back if the trial is slow.
        hold = ~est.confident & ~blocked & ~probation & has_known[None, :]
        best = np.where(known, mean, np.inf).min(axis=0)
        tau = np.where(hold, np.maximum(mean, best[None, :]), tau)
        tau = np.where(blocked, np.inf, np.maximum(tau, self._floor(keys, domains, now)))
        work = np.array([work_by[d] for d in domains], dtype=np.float64)
        portions = np.array([portions_by[d] for d in domains], dtype=np.int64)
        slots = np.array([active[k] * self.spec.concurrency for k in keys], dtype=np.float64)
        backlog = self._backlog(keys, slots, now)
        plan = solve(tau, work, slots, backlog)
        self.plans += 1
        counts = np.where(hold, 0, round_portions(plan.share, portions))
        tau = np.where(hold, np.inf, tau)  # usable below: only what the plan may hand out
        candidates = (~est.confident | probation) & ~blocked
        groups = self.stats.mx_group[ds]
        shared = np.array([work[groups == g].sum() if g >= 0 else 0.0 for g in groups])
        reach = np.maximum(work, shared)  # what a trial on one domain of an MX teaches
        trial = float(TRIAL_RECIPIENTS)
        offered: dict[str, list[str]] = {}
        for offer in offers(est, mean, known, candidates, probation, work, portions, reach, trial):
            offered.setdefault(keys[offer.server], []).append(domains[offer.domain])
        self.budget.renew(float(work.sum()))
        self.schedule = Schedule(
            plan=plan,
            domains=domains,
            at=now,
            end=now + plan.makespan,
            quota={
                key: {d: int(counts[i, j]) for j, d in enumerate(domains) if counts[i, j] > 0}
                for i, key in enumerate(keys)
            },
            offers=offered,
            mean={
                (k, d): float(mean[i, j]) for i, k in enumerate(keys) for j, d in enumerate(domains)
            },
            usable={(keys[i], domains[j]) for i, j in np.argwhere(np.isfinite(tau))},
            unsure={(keys[i], domains[j]) for i, j in np.argwhere(~est.confident)},
            blind={domains[j] for j in np.nonzero(~est.confident.any(axis=0))[0]},
            portion_size={d: work_by[d] / portions_by[d] for d in domains},
            slots={k: float(slots[i]) for i, k in enumerate(keys)},
            ready={k: now + float(backlog[i] / slots[i]) for i, k in enumerate(keys)},
        )
        if not self._start_recorded and self.records is not None:
            self._start_recorded = True
            demoted = self.demotions.demoted
            self.records.write(ESTIMATES_START, estimates_frame(keys, domains, est, demoted))
            self.records.write(PLAN_START, plan_frame(keys, domains, plan, counts))
        return self.schedule

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
            if i is None or j is None or (given.key, given.domain) not in self.schedule.unsure:
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
        if given is not None:
            self.given_back.add(key, self.clock(), given.size)
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
            self.dirty = True
        if (key, evidence.domain) in self.schedule.unsure:  # a trial came back: plan now
            self.dirty = True

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

    def probe_domains(self, waiting: list[str]) -> list[str]:
        """The planned domains, most planned work first, then those seen before."""
        plan = self.schedule.plan
        if plan is None or not plan.share.size:
            return super().probe_domains(waiting)
        order = np.argsort(-plan.share.sum(axis=0))
        ranked = [self.schedule.domains[int(j)] for j in order]
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
                "trial_recipients": self.budget.explored,
                "given_recipients": self.budget.given,
                "exploration_share": self.settings.exploration,
            }
        )
