"""The delivery journal: what a delivery server did, written before and after each DATA.

A delivery server appends one line per state change to its own file in the run directory:
"in flight" just before the message body goes out, then the SMTP fate after the reply.
Lines are written with ``os.write`` on an O_APPEND descriptor, so they survive kill -9 of
the actor, of the driver or of all of Ray (the kernel keeps them); a fate may wait for the
next in-flight mark's write (``Journal.hold``), an in-flight mark never waits. After a
crash the driver reads the journals: a recipient whose last line is "in flight" is *in
doubt*; one marked accepted is never sent again, even if its outcome never reached the
ledger.

Line format (tab separated)::

    STATE  PORTION  ATTEMPT  ROW,ROW,...

STATE is one of I (in flight), A (accepted), D (deferred), F (failed), X (connection dropped
after the body was written: in doubt), E (expired: deferred until ``retry.max_age`` passed
since the recipient's first attempt, given up by the driver, never by a delivery server).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

import polars as pl

from raymail._io import write_bytes_atomic
from raymail.errors import RaymailError
from raymail.status import Status


class JournalState(StrEnum):
    """One journal line's STATE letter."""

    IN_FLIGHT = "I"
    ACCEPTED = "A"
    DEFERRED = "D"
    FAILED = "F"
    DROPPED_AFTER_DATA = "X"  # the body was written, no reply came: in doubt
    EXPIRED = "E"  # only temporary failures until retry.max_age: given up


# Outcome status -> the letter a delivery server writes once the fate is known.
STATE_OF_STATUS: Final[dict[str, JournalState]] = {
    Status.ACCEPTED: JournalState.ACCEPTED,
    Status.DEFERRED: JournalState.DEFERRED,
    Status.FAILED: JournalState.FAILED,
    Status.IN_DOUBT: JournalState.DROPPED_AFTER_DATA,
    Status.EXPIRED: JournalState.EXPIRED,
}
# Letter -> outcome status when recovering. "I" alone (in flight, no fate) means the process
# died between writing the body and reading the reply: in doubt.
STATUS_OF_STATE: Final[dict[str, str]] = {
    **{state: status for status, state in STATE_OF_STATUS.items()},
    JournalState.IN_FLIGHT: Status.IN_DOUBT,
}

JOURNAL_DIR = "journal"
FENCE_FILE = "fence"  # in the journal folder: the epoch of the driver that owns the run
FENCE_CHECK_S = 1.0  # how often a delivery server re-reads the fence, at most
FENCE_WAIT_S = 2.5  # a new driver waits this long after raising the fence


class Fenced(RaymailError):
    """A newer driver took over this run: this (orphaned) delivery server must stop."""


def write_fence(folder: Path, epoch: int) -> None:
    """Raise the fence: delivery servers of older epochs stop before their next message."""
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(folder / FENCE_FILE, str(epoch).encode())


class FenceGuard:
    """Lets a delivery server notice, within FENCE_CHECK_S, that a newer driver took over.

    Killing a driver (or Ray's control processes) can leave delivery-server processes
    running for a moment; without a fence they could go on sending while a resumed run
    re-reads the journals, and send someone twice.
    """

    def __init__(self, folder: Path, epoch: int) -> None:
        self.path = folder / FENCE_FILE
        self.epoch = epoch
        self._checked = 0.0

    def check(self) -> None:
        now = time.monotonic()
        if now - self._checked < FENCE_CHECK_S:
            return
        self._checked = now
        try:
            current = int(self.path.read_text() or 0)
        except (OSError, ValueError):
            return
        if current > self.epoch:
            raise Fenced(f"run taken over by a newer driver (epoch {current} > {self.epoch})")


MAX_HELD_FATES = 64  # fate lines a journal holds back at most before writing them anyway

# What waits for an in-flight mark (:meth:`Journal.mark_then`): called with None once the
# mark is in the file (write the body now), or with the error that kept it out (never write).
AfterMark = Callable[[BaseException | None], None]


class Journal:
    """An append-only journal file owned by one delivery server process.

    The in-flight mark is written at once (:meth:`mark`): it must be in the file before the
    message body goes out. A fate may wait (:meth:`hold`): it rides in the same write as the
    next in-flight mark of any connection of this server, so a busy server makes one write
    per message instead of two (the write syscall was the journal's whole cost). Holding a
    fate back never risks a second send: if the process dies first, the recipient's last
    line is "in flight", which recovery reports as in doubt and never sends again. Held
    fates are written by the next :meth:`mark`, by :meth:`flush` (the server calls it when
    a portion ends) or once :data:`MAX_HELD_FATES` wait.
    """

    def __init__(self, folder: Path, server: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{server}-{os.getpid()}.log"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._held: list[str] = []
        self._after: list[AfterMark] = []  # bodies waiting for their marks' write
        self._scheduled = False

    def mark(self, state: JournalState, portion: int, attempt: int, rows: Iterable[int]) -> None:
        """Record one state for some rows of a portion attempt now, with any held fates
        before it (one write syscall)."""
        joined = ",".join(map(str, rows))
        if joined:
            self._held.append(f"{state}\t{portion}\t{attempt}\t{joined}\n")
        self.flush()

    def mark_then(
        self, state: JournalState, portion: int, attempt: int, rows: Iterable[int], then: AfterMark
    ) -> None:
        """An in-flight mark whose message body waits for it: the line joins the held ones
        and ``then`` runs right after they reach the file, at the end of this event-loop
        pass (``call_soon``), so the marks of every connection woken by one poll share one
        write syscall (a busy server wakes about a dozen per pass) instead of one each.
        Any :meth:`flush` before that writes them and runs ``then`` as well."""
        joined = ",".join(map(str, rows))
        self._held.append(f"{state}\t{portion}\t{attempt}\t{joined}\n")
        self._after.append(then)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_scheduled)

    def _flush_scheduled(self) -> None:
        self._scheduled = False
        with contextlib.suppress(OSError):  # handed to every body that waited (see flush)
            self.flush()

    def hold(self, state: JournalState, portion: int, attempt: int, rows: Iterable[int]) -> None:
        """Record a fate with the next write (see the class docstring); never an in-flight
        mark, which must reach the file before the body is sent."""
        if state is JournalState.IN_FLIGHT:
            raise ValueError("an in-flight mark cannot wait: use mark()")
        joined = ",".join(map(str, rows))
        if joined:
            self._held.append(f"{state}\t{portion}\t{attempt}\t{joined}\n")
            if len(self._held) >= MAX_HELD_FATES:
                self.flush()

    def flush(self) -> None:
        """Write the held lines (one write syscall; nothing when none is held), then let
        the bodies that waited for their in-flight marks go; if the write fails, they are
        told so (never written) and the error is raised."""
        after = self._after
        error: OSError | None = None
        if self._held:
            data = memoryview("".join(self._held).encode())
            self._held.clear()
            try:
                while data:  # a regular file takes it whole; a short write is finished
                    data = data[os.write(self._fd, data) :]
            except OSError as exc:
                error = exc
        if after:
            self._after = []
            for then in after:
                then(error)
        if error is not None:
            raise error

    def close(self) -> None:
        if self._fd >= 0:
            self.flush()
            os.close(self._fd)
            self._fd = -1


@dataclass(frozen=True, slots=True)
class JournalLine:
    state: str
    portion: int
    attempt: int
    rows: tuple[int, ...]
    file: str
    line: int


def journal_files(run_dir: Path, server: str | None = None) -> list[Path]:
    folder = run_dir / JOURNAL_DIR
    pattern = f"{server}-*.log" if server else "*.log"
    return sorted(folder.glob(pattern)) if folder.exists() else []


def iter_journal(paths: Iterable[Path]) -> Iterator[JournalLine]:
    """Every complete line; a torn last line (the writer died mid-write) is skipped."""
    for path in paths:
        with path.open("rb") as fh:
            for number, raw in enumerate(fh, start=1):
                if not raw.endswith(b"\n"):
                    break
                parts = raw.decode("ascii", "replace").rstrip("\n").split("\t")
                if len(parts) != 4 or not parts[3]:
                    continue
                try:
                    rows = tuple(int(r) for r in parts[3].split(","))
                    yield JournalLine(
                        parts[0], int(parts[1]), int(parts[2]), rows, path.name, number
                    )
                except ValueError:
                    continue


_SCHEMA = {
    "row": pl.Int64,
    "attempt": pl.Int32,
    "portion": pl.Int64,
    "state": pl.String,
    "server": pl.String,
}


def journal_states(paths: Iterable[Path]) -> pl.DataFrame:
    """Last journal state per (row, attempt), with the portion and server it belongs to.

    Within one attempt a fate (A, D, F, X) always comes after the in-flight mark, so the
    last line wins. Parsed by polars, not line by line in Python: a million-recipient run
    leaves two million lines, which a resume reads in a second or two.
    """
    frames = [frame for path in paths if (frame := _parse(path)) is not None]
    if not frames:
        return pl.DataFrame(schema=_SCHEMA)
    return pl.concat(frames).unique(subset=["row", "attempt"], keep="last", maintain_order=True)


def _parse(path: Path) -> pl.DataFrame | None:
    """One journal file's lines, a row each; a torn last line and malformed lines skipped."""
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]  # a torn last line (the writer died mid-write)
    if not data:
        return None
    # One string column per line (the unit separator never occurs), split in polars.
    lines = pl.read_csv(
        data,
        has_header=False,
        separator="\x1f",
        quote_char=None,
        new_columns=["line"],
        schema_overrides=[pl.String],
        encoding="utf8-lossy",
    ).select(
        pl.col("line")
        .str.split_exact("\t", 4)
        .struct.rename_fields(["state", "portion", "attempt", "rows", "extra"])
        .struct.unnest()
    )
    number = r"^-?\d+$"
    frame = (
        lines.filter(
            pl.col("extra").is_null()
            & pl.col("portion").str.contains(number)
            & pl.col("attempt").str.contains(number)
            & pl.col("rows").str.contains(r"^-?\d+(,-?\d+)*$")
        )
        .select(
            pl.col("rows").str.split(",").alias("row"),
            pl.col("attempt").cast(pl.Int32),
            pl.col("portion").cast(pl.Int64),
            pl.col("state"),
            pl.lit(path.name.rsplit("-", 1)[0]).alias("server"),
        )
        .explode("row")
        .with_columns(pl.col("row").cast(pl.Int64))
    )
    return frame.select(list(_SCHEMA))
