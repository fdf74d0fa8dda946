"""Progress on the console: a live rich bar on a terminal, plain log lines otherwise.

Plain lines (every few seconds) keep `ray job logs` readable, where a live bar would
print thousands of redraws.
"""

from __future__ import annotations

import sys
import time
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
    retrying: int = 0

    @property
    def settled(self) -> int:
        return self.accepted + self.deferred + self.failed + self.in_doubt


class ProgressReporter:
    """Shows sent/accepted/deferred/failed, rate and ETA."""

    def __init__(self, total: int, *, live: bool | None = None, every_s: float = 5.0) -> None:
        self.total = total
        self.live = sys.stderr.isatty() if live is None else live
        self.every_s = every_s
        self.started = time.monotonic()
        self._last_line = 0.0
        self._console = Console(stderr=True)
        self._progress: Progress | None = None
        self._task = None
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

    def _detail(self, tally: Tally) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = tally.settled / elapsed
        return (
            f"accepted {tally.accepted} deferred {tally.deferred} failed {tally.failed} "
            f"retrying {tally.retrying} | {rate:,.0f} msg/s"
        )

    def update(self, tally: Tally, *, force: bool = False) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, completed=tally.settled, detail=self._detail(tally))
            return
        now = time.monotonic()
        if force or now - self._last_line >= self.every_s:
            self._last_line = now
            elapsed = now - self.started
            rate = tally.settled / elapsed if elapsed > 0 else 0.0
            left = self.total - tally.settled
            eta = f"{left / rate:,.0f}s" if rate > 0 else "?"
            print(
                f"raymail: {tally.settled}/{self.total} settled | {self._detail(tally)} | "
                f"ETA {eta}",
                file=sys.stderr,
                flush=True,
            )

    def note(self, message: str) -> None:
        self._console.print(f"raymail: {message}")

    def close(self, tally: Tally) -> None:
        self.update(tally, force=True)
        if self._progress is not None:
            self._progress.stop()
