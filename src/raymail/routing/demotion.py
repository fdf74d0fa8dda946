"""Demotion within a run: a (server, domain) pair whose recent transactions turn to
4xx/5xx or dropped connections gets no more work for a cooldown.

The table's deferral rates move slowly (a pair with a thousand good deliveries behind it
stays "good" for a long time), so the run keeps its own recent average per pair, weighting
each new transaction by ``EWMA_ALPHA``. Past the cooldown a pair is on probation: it may
get one trial piece, and one more bad transaction demotes it again with twice the cooldown.
"""

from __future__ import annotations

from collections.abc import Callable

EWMA_ALPHA = 0.3
DEMOTE_AT = 0.5
DEMOTE_MIN_BAD = 3  # bad transactions in this run before a pair can be demoted
RESTORE_BELOW = 0.2
COOLDOWN_S = 30.0

Pair = tuple[str, str]  # (route key, domain)
Event = Callable[[str, str, str, str], None]  # (event, server, domain, detail)


class Demotions:
    """Recent bad-reply averages, demotions and probation per pair."""

    def __init__(self, clock: Callable[[], float], event: Event) -> None:
        self._clock = clock
        self._event = event
        self._ewma: dict[Pair, float] = {}
        self._bad: dict[Pair, int] = {}
        self._until: dict[Pair, float] = {}
        self._cooldown: dict[Pair, float] = {}
        self.probation: set[Pair] = set()

    @property
    def demoted(self) -> set[Pair]:
        return set(self._until)

    def judge(self, pair: Pair, bad_flags: list[bool]) -> bool:
        """Take a portion's transactions (True = bad) in order; True if a demotion began."""
        if not bad_flags:
            return False
        self.probation.discard(pair)
        value = self._ewma.get(pair, 0.0)
        for bad in bad_flags:
            value += EWMA_ALPHA * (float(bad) - value)
        self._ewma[pair] = value
        self._bad[pair] = self._bad.get(pair, 0) + sum(bad_flags)
        now = self._clock()
        if value >= DEMOTE_AT and self._bad[pair] >= DEMOTE_MIN_BAD:
            if pair in self._until:
                return False
            cooldown = self._cooldown.get(pair, COOLDOWN_S / 2) * 2
            self._cooldown[pair] = cooldown
            self._until[pair] = now + cooldown
            self._event(
                "demoted", *pair,
                f"{value:.0%} of recent transactions got 4xx/5xx or a dropped connection "
                f"({self._bad[pair]} in this run); no work for {cooldown:.0f} s",
            )  # fmt: skip
            return True
        if value < RESTORE_BELOW and pair in self._cooldown and pair not in self._until:
            del self._cooldown[pair]
            self._event("restored", *pair, f"recent bad replies {value:.0%}")
        return False

    def expire(self) -> bool:
        """Move pairs whose cooldown is over to probation; True if any did."""
        now = self._clock()
        over = [pair for pair, until in self._until.items() if until <= now]
        for pair in over:
            del self._until[pair]
            self.probation.add(pair)
            self._ewma[pair] = max(self._ewma.get(pair, 0.0), DEMOTE_AT)
            self._event("probation", *pair, "cooldown over: one trial piece to see")
        return bool(over)
