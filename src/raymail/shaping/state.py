"""One MX host's shaping state and how replies move it.

A rule that matches a reply applies its action (fewer connections, lower rate, suspend);
with no rule, a "slow down" signal (421, connection refused, a tarpit-slow reply) is a
multiplicative decrease, never below the connections that were open and working when the
refusal came (a receiver refusing the sixth connection allows five). Successes add one
connection per ``increase_every`` transactions (additive increase) after the rule's quiet
time, up to ``max_connections``; a limit refused at the same level twice is probed again
only half as often, so the 421s a converged sender collects keep falling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from raymail.shaping.rules import ShapingRule, ShapingSettings, match_rule


@dataclass(slots=True)
class HostState:
    """Limits of one MX host (domains on the same MX share them)."""

    mx_host: str
    limit: float  # connections allowed (all delivery servers together)
    max_limit: int
    rate: float | None = None  # messages per second learned; None: not lowered
    max_rate: float | None = None  # a fixed cap (spec ``shaping.hosts``); None: none
    observed_rate: float = 0.0  # messages per second seen lately (where lower_rate starts)
    messages_per_connection: int | None = None
    suspended_until: float = 0.0  # monotonic seconds
    reason: str = ""  # the reply that caused the last backoff
    backoff_at: float = 0.0
    quiet_s: float = 0.0  # no increase before backoff_at + quiet_s
    successes: int = 0
    throttles: int = 0
    ceiling: int = 0  # the limit last refused
    probe_every: int = 0  # successes per +1 at the ceiling (doubles per refusal there)
    history: list[tuple[float, float, str]] = field(default_factory=list)

    def in_backoff(self, now: float) -> bool:
        return self.suspended_until > now or self.limit < self.max_limit or self.rate is not None

    def allowed_rate(self) -> float | None:
        """Messages per second allowed now: the learned rate under the fixed cap."""
        if self.rate is None:
            return self.max_rate
        return self.rate if self.max_rate is None else min(self.rate, self.max_rate)

    def on_success(self, settings: ShapingSettings, transactions: int, now: float) -> None:
        """Additive increase (and the way back from a rule's rate or limit)."""
        if now < self.backoff_at + self.quiet_s:
            return
        self.successes += transactions
        every = settings.increase_every
        if self.ceiling and math.floor(self.limit) + 1 >= self.ceiling:
            every = max(every, self.probe_every)
        while self.successes >= every:
            self.successes -= every
            if self.rate is not None:
                self.rate *= 1.25
                if self.rate > (self.max_rate or 1e6):
                    self.rate = None  # back to normal (or to the fixed cap)
            elif self.limit < self.max_limit:
                self.limit = min(self.limit + 1, self.max_limit)
                self._log(now, "increase")

    def on_reply(
        self,
        settings: ShapingSettings,
        rules: list[ShapingRule],
        code: int,
        text: str,
        open_ok: int,
        now: float,
        *,
        signal: bool = False,
    ) -> ShapingRule | None:
        """A non-2xx reply (or a refused connection: ``signal``). Returns the rule applied.

        ``open_ok`` is how many connections to the MX were open and working at the time.
        """
        rule = match_rule(rules, code, text)
        if rule is None and not (signal or code == 421):
            return None  # an ordinary 4xx/5xx about a recipient: no shaping
        self.throttles += 1
        self.reason = f"{code} {text}".strip()
        self.backoff_at = now
        self.successes = 0
        if rule is None:
            self._decrease(settings, settings.decrease, open_ok)
            self.quiet_s = 1.0
        elif rule.action == "fewer_connections":
            self._decrease(settings, rule.factor, open_ok)
            self.quiet_s = rule.recover_after_s
        elif rule.action == "lower_rate":
            start = self.allowed_rate() or self.observed_rate or max(open_ok, 1) * 10.0
            if self.observed_rate:
                start = min(start, self.observed_rate)
            self.rate = max(0.1, start * rule.factor)
            self.quiet_s = rule.recover_after_s
        else:
            self.suspended_until = max(self.suspended_until, now + rule.suspend_s)
            self.quiet_s = rule.suspend_s
        self._log(now, rule.name if rule else "aimd")
        return rule

    def _decrease(self, settings: ShapingSettings, factor: float, open_ok: int) -> None:
        refused_at = math.floor(self.limit)
        if refused_at > settings.min_connections and open_ok >= refused_at:
            # Refused while over the limit: a connection tried before the last cut (they
            # arrive in batches from the fleet). The cut already happened; not another.
            return
        cut = self.limit * factor
        if open_ok > 0:  # the receiver took open_ok and refused the next one
            cut = min(open_ok, max(refused_at - 1, 1))
        new = max(float(settings.min_connections), math.floor(cut))
        if new + 1 >= refused_at and self.ceiling == refused_at:
            self.probe_every = max(self.probe_every * 2, settings.increase_every * 2)
        self.ceiling = int(new) + 1
        self.limit = new

    def _log(self, now: float, why: str) -> None:
        if len(self.history) < 10_000:
            self.history.append((now, self.limit, why))

    def describe(self, now: float, wall_offset: float) -> dict[str, object]:
        """What status lines and the report show (times as wall-clock seconds)."""
        next_try: float | None = max(self.suspended_until, self.backoff_at + self.quiet_s)
        if not self.backoff_at and not self.suspended_until:
            next_try = None  # limits carried over from an earlier run: no backoff time here
        return {
            "mx_host": self.mx_host,
            "connections": int(self.limit),
            "rate_per_s": None if self.rate is None else round(self.allowed_rate() or 0.0, 2),
            "suspended": self.suspended_until > now,
            "reason": self.reason,
            "next_try_at": None if next_try is None else next_try + wall_offset,
            "throttles": self.throttles,
        }
