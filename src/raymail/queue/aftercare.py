"""What the scheduler does for campaigns after their run: archive policies and follow-ups.

A campaign's spec may say when its tracking data goes to the archive (``archive:``
``when_finished`` / ``older_than_days`` / ``larger_than_mb``, then its ``tiers``) and which
further campaigns its events call for (``followups:``). Both are about *finished* runs, and
both come due later without anybody typing a command (a day of events turns N days old, a
recipient's ``after`` passes, the dataset grows), so the scheduler applies them: a run that
has just ended is looked at first, then every pass goes on round the ``done`` entries.

Bounded: a pass looks at ``per_pass`` entries at most (round-robin, so every entry gets its
turn), and an entry's follow-ups are evaluated for ``window_s`` after their longest
``after`` only. It runs in a thread of its own (:class:`AftercareThread`), never in the
scheduler's review, whose lease renewals must not wait behind an upload.

Idempotent and crash-safe, by the parts it calls:

* the archive (:func:`raymail.tracking.archive.archive_campaign`) uploads, verifies, records,
  then removes, one file at a time, so a pass killed anywhere leaves every row local,
  archived, or both; the next pass finishes the job (nothing is uploaded twice under two
  names, nothing is dropped unverified). One campaign is archived by one pass at a time
  (a ``flock`` per campaign under ``$RAYMAIL_HOME/aftercare``).
* a follow-up's selection is recorded (:class:`raymail.tracking.followups.RuleState`, under
  its lock) before the follow-up is queued, and the queue entry's id is derived from the
  parent entry, the rule and the batch: a pass that finds a recorded batch without its
  entry (a crash in between) queues it then, and a second try to queue it finds it there.
  Nobody in a batch is selected again; the queued run's directory makes sure nobody in it
  is sent twice. So a follow-up is queued exactly once, across passes, restarts and
  several schedulers.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from raymail._io import flocked
from raymail.errors import QueueError, RaymailError
from raymail.queue.store import DONE, CampaignQueue, Entry
from raymail.spec import CampaignSpec, load_spec, raymail_home
from raymail.tracking.events import events_root

log = logging.getLogger(__name__)

WINDOW_S: Final = 30 * 86400.0  # follow-ups are evaluated this long after their 'after'
PER_PASS: Final = 8


@dataclass
class AftercareStats:
    """What the passes did (tests and the scheduler's status read it)."""

    passes: int = 0
    looked_at: int = 0
    archived_files: dict[str, int] = field(default_factory=dict)  # campaign -> files
    followups_queued: list[str] = field(default_factory=list)  # queue entry ids
    errors: list[str] = field(default_factory=list)


class Aftercare:
    """One queue's archive policies and follow-ups, a bounded pass at a time."""

    def __init__(
        self,
        queue: CampaignQueue,
        *,
        clock: Callable[[], float] = time.time,
        per_pass: int = PER_PASS,
        window_s: float = WINDOW_S,
        home: Path | None = None,
    ) -> None:
        self.queue = queue
        self.clock = clock
        self.per_pass = per_pass
        self.window_s = window_s
        self.home = home
        self.stats = AftercareStats()
        self._cursor = ""  # the id of the last entry looked at (round-robin)
        self._first: list[str] = []  # runs that just ended: looked at in the next pass
        self._lock = threading.Lock()

    def ended(self, entry_id: str) -> None:
        """A run has just completed: its archive and follow-ups come first in the next pass."""
        with self._lock:
            if entry_id not in self._first:
                self._first.append(entry_id)

    def review(self) -> int:
        """One bounded pass; returns how many entries it looked at."""
        self.stats.passes += 1
        chosen = self._choose()
        for entry in chosen:
            self.care(entry)
        self.stats.looked_at += len(chosen)
        return len(chosen)

    def care(self, entry: Entry) -> None:
        """Apply one finished entry's archive policy and follow-up rules (errors are logged
        and kept in the stats: the next pass tries again)."""
        try:
            spec = entry.spec()
            if spec.followups and self._followups_open(entry, spec):
                self.stats.followups_queued.extend(self.queue_followups(entry, spec))
            if spec.archive is not None:
                self._archive(entry, spec)
        except (RaymailError, OSError) as exc:
            message = f"entry {entry.id}: {exc}"
            log.warning("aftercare: %s", message)
            self.stats.errors.append(message)

    # -- choosing ----------------------------------------------------------------------------

    def _choose(self) -> list[Entry]:
        done = [e for e in self.queue.entries([DONE]) if _wants_care(e)]
        by_id = {e.id: e for e in done}
        with self._lock:
            first, self._first = self._first, []
        chosen = [by_id[i] for i in first if i in by_id][: self.per_pass]
        rest = sorted((e for e in done if e.id not in set(first)), key=lambda e: e.id)
        ring = [e for e in rest if e.id > self._cursor] + [e for e in rest if e.id <= self._cursor]
        for entry in ring[: self.per_pass - len(chosen)]:
            chosen.append(entry)
            self._cursor = entry.id
        return chosen

    def _followups_open(self, entry: Entry, spec: CampaignSpec) -> bool:
        longest = max(rule.after_s for rule in spec.followups)
        finished = entry.finished_at or entry.updated_at
        return self.clock() <= finished + longest + self.window_s

    # -- archive -----------------------------------------------------------------------------

    def _archive(self, entry: Entry, spec: CampaignSpec) -> None:
        from raymail.tracking.archive import archive_campaign
        from raymail.tracking.tiers import apply_tier_rules

        assert spec.archive is not None
        now = datetime.fromtimestamp(self.clock(), UTC)
        root = events_root(self.home)
        with self._campaign_lock(spec.campaign) as held:
            if not held:
                return  # another pass (another scheduler) archives this campaign right now
            result = archive_campaign(
                spec.campaign, spec.archive, root=root, run_dir=Path(entry.run_dir),
                s3=spec.s3, now=now,
            )  # fmt: skip
            if spec.archive.tiers:
                apply_tier_rules(spec.campaign, spec.archive, root=root, s3=spec.s3, now=now)
        moved = result.events_files + result.ledger_files
        if moved:
            counts = self.stats.archived_files
            counts[spec.campaign] = counts.get(spec.campaign, 0) + moved
            log.info("aftercare: %s: %d files archived (%s)", spec.campaign, moved,
                     "; ".join(result.reasons))  # fmt: skip

    @contextmanager
    def _campaign_lock(self, campaign: str) -> Iterator[bool]:
        folder = (self.home or raymail_home()) / "aftercare"
        folder.mkdir(parents=True, exist_ok=True)
        with flocked(folder / f"archive-{campaign}.lock", wait=False) as held:
            yield held

    # -- follow-ups --------------------------------------------------------------------------

    def queue_followups(self, entry: Entry, spec: CampaignSpec) -> list[str]:
        """Select and queue what each rule calls for now; returns the entry ids queued."""
        from raymail.errors import TrackingError
        from raymail.tracking.followups import (
            RuleState,
            fresh_selection,
            record_batch,
            unfinished,
        )

        parent_run = Path(entry.run_dir)
        now = datetime.fromtimestamp(self.clock(), UTC)
        queued: list[str] = []
        for rule in spec.followups:
            state = RuleState(spec.campaign, rule, self.home)
            try:
                with state.locked():
                    followup = load_spec(rule.send)
                    for batch in state.batches():  # a crash between recording and queueing
                        if unfinished(batch):
                            queued.extend(
                                self._enqueue(entry, state.id, batch, followup, rule.send)
                            )
                    fresh = fresh_selection(
                        state, spec.campaign, parent_run, events_root(self.home), now
                    )
                    if not fresh.is_empty():
                        batch = record_batch(state, parent_run, fresh)
                        queued.extend(self._enqueue(entry, state.id, batch, followup, rule.send))
            except TrackingError as exc:
                if "another 'followups run'" not in str(exc):
                    raise
                log.info("aftercare: %s", exc)  # evaluated elsewhere right now: next pass
        return queued

    def _enqueue(
        self, parent: Entry, rule: str, batch: Path, spec: CampaignSpec, rule_send: str
    ) -> list[str]:
        from raymail.tracking.followups import batch_spec

        entry_id = followup_entry_id(parent.id, rule, batch.name)
        if self._exists(entry_id):
            return []
        try:
            self.queue.schedule(
                batch_spec(spec, batch),
                due_at=self.clock(),
                priority=spec.priority,
                spec_path=rule_send,
                run_dir=batch / "run",
                group=entry_id,
            )
        except Exception:  # the database's own duplicate-key error, whichever database it is
            if self._exists(entry_id):  # another scheduler queued it a moment ago
                return []
            raise
        log.info("aftercare: follow-up %s queued (rule %s of %s)", entry_id, rule, parent.id)
        return [entry_id]

    def _exists(self, entry_id: str) -> bool:
        try:
            self.queue.get(entry_id)
        except QueueError:
            return False
        return True


def followup_entry_id(parent_id: str, rule: str, batch: str) -> str:
    """The queue id of a follow-up batch: the same for every pass that finds it."""
    return f"{parent_id}.{rule}.{batch}"


def _wants_care(entry: Entry) -> bool:
    """Whether the entry's spec has an archive section or follow-up rules (read without
    validating the whole spec: most done entries have neither)."""
    spec = json.loads(entry.spec_json)
    return bool(spec.get("archive") or spec.get("followups"))


class AftercareThread:
    """Runs a pass each time the scheduler reviews, off the review's thread."""

    def __init__(self, aftercare: Aftercare) -> None:
        self.aftercare = aftercare
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="raymail-aftercare", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def kick(self) -> None:
        """Ask for a pass (a pass under way finishes first; kicks meanwhile make one more)."""
        self._kick.set()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread.is_alive():
            self._thread.join(timeout=timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._kick.wait()
            self._kick.clear()
            if self._stop.is_set():
                return
            try:
                self.aftercare.review()
            except RaymailError as exc:  # the queue away for a moment: the next kick
                log.warning("aftercare pass failed: %s", exc)
