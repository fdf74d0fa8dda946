"""Progress on the console: a live rich bar on a terminal, plain log lines otherwise.

Plain lines (every few seconds; ``RAYMAIL_PROGRESS_INTERVAL_S`` changes how often) keep
`ray job logs` readable, where a live bar would print thousands of redraws and escape
codes. One line reads::

    raymail: sent 1200/3000 (40.0%) | accepted 1100 deferred 0 failed 100 in doubt 0 \
        retrying 5 | 240 msg/s | ETA 0:00:08

"sent" counts recipients whose fate is settled; the rate is that of the last half minute
(a run slows down at its tail, when only slow domains are left), and the ETA follows it.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from dataclasses import dataclass

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@dataclass(slots=True)
class Tally:
    """Final outcomes so far (a recipient counts once, when its fate is settled)."""

    accepted: int = 0
    deferred: int = 0
    failed: int = 0
    in_doubt: int = 0  # settled as "maybe delivered" (in_doubt policy: skip)
    expired: int = 0  # only temporary failures for retry.max_age since the first attempt
    retrying: int = 0

    @property
    def settled(self) -> int:
        return self.accepted + self.deferred + self.failed + self.in_doubt + self.expired


class ProgressReporter:
    """Shows sent/accepted/deferred/failed, rate and ETA."""

    def __init__(
        self, total: int, *, live: bool | None = None, every_s: float | None = None
    ) -> None:
        self.total = total
        self.live = sys.stderr.isatty() if live is None else live
        self.every_s = every_s if every_s is not None else _interval_from_env()
        self.started = time.monotonic()
        self._last_line = 0.0
        self._samples: deque[tuple[float, int]] = deque([(self.started, 0)])
        self._console = Console(stderr=True)
        self._progress: Progress | None = None
        self._task = None
        self.backoff: list[dict[str, object]] = []  # MX hosts in backoff (traffic shaping)
        self.next_retry_at: float | None = None  # Unix s the next deferred retry is due
        if self.live:
            self._progress = Progress(
                TextColumn("[bold]sending"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task("send", total=total, detail="")

    def rate(self, settled: int, now: float | None = None) -> float:
        """Recipients settled per second over the last ``_WINDOW_S`` (since start before)."""
        now = time.monotonic() if now is None else now
        samples = self._samples
        if now - samples[-1][0] >= 1.0:  # one sample a second bounds the window's size
            samples.append((now, settled))
        while len(samples) > 1 and now - samples[1][0] >= _WINDOW_S:
            samples.popleft()
        then, before = samples[0]
        return (settled - before) / (now - then) if now > then else 0.0

    def _detail(self, tally: Tally, rate: float) -> str:
        expired = f" expired {tally.expired}" if tally.expired else ""
        return (
            f"accepted {tally.accepted} deferred {tally.deferred} failed {tally.failed} "
            f"in doubt {tally.in_doubt}{expired} retrying {tally.retrying} | {rate:,.0f} msg/s"
        )

    def line(self, tally: Tally, now: float | None = None) -> str:
        """The plain progress line (what `ray job logs` shows)."""
        rate = self.rate(tally.settled, now)
        left = max(self.total - tally.settled, 0)
        eta = _clock(left / rate) if rate > 0 else ("0:00:00" if not left else "?")
        share = 100.0 * tally.settled / self.total if self.total else 100.0
        line = (
            f"raymail: sent {tally.settled}/{self.total} ({share:.1f}%) | "
            f"{self._detail(tally, rate)} | ETA {eta}"
        )
        if self.next_retry_at is not None:
            when = time.strftime("%H:%M:%S", time.gmtime(self.next_retry_at))
            line += f" | next retry {when} UTC"
        return line + "".join(f" | {backoff_text(b)}" for b in self.backoff[:3])

    def update(self, tally: Tally, *, force: bool = False) -> None:
        if self._progress is not None and self._task is not None:
            detail = self._detail(tally, self.rate(tally.settled))
            self._progress.update(self._task, completed=tally.settled, detail=detail)
            return
        now = time.monotonic()
        if force or now - self._last_line >= self.every_s:
            self._last_line = now
            print(self.line(tally, now), file=sys.stderr, flush=True)

    def note(self, message: str) -> None:
        self._console.print(f"raymail: {message}", highlight=False, soft_wrap=True)

    def close(self, tally: Tally) -> None:
        self.update(tally, force=True)
        if self._progress is not None:
            self._progress.stop()


def backoff_text(entry: dict[str, object]) -> str:
    """``backoff MX: N connections [rate R/s] [suspended] (reply), next try HH:MM:SS``."""
    next_at = entry.get("next_try_at")
    when = (
        time.strftime("%H:%M:%S", time.gmtime(float(next_at)))
        if isinstance(next_at, int | float)
        else "?"
    )
    rate = entry.get("rate_per_s")
    extra = (f" rate {rate}/s" if rate is not None else "") + (
        " suspended" if entry.get("suspended") else ""
    )
    return (
        f"backoff {entry.get('mx_host')}: {entry.get('connections')} connections{extra} "
        f"({str(entry.get('reason', ''))[:80]}), next try {when} UTC"
    )


_WINDOW_S = 30.0
_DEFAULT_EVERY_S = 5.0


def _interval_from_env() -> float:
    try:
        value = float(os.environ.get("RAYMAIL_PROGRESS_INTERVAL_S", _DEFAULT_EVERY_S))
    except ValueError:
        return _DEFAULT_EVERY_S
    return value if value > 0 else _DEFAULT_EVERY_S


def _clock(seconds: float) -> str:
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
