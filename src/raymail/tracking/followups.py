"""Follow-up campaigns from the tracking data (seed 000): rules select, an ordinary run sends.

A rule (the spec's ``followups``) picks, among the recipients the parent campaign was
delivered to at least ``after`` ago, those who opened / did not open / clicked (a link) /
did not click; nobody who bounced, complained or unsubscribed. Opens and clicks flagged as
proxies or scanners do not count (a click counts as an open too). The follow-up is an
ordinary campaign of the rule's ``send`` spec, with its own run directory, ledger, report.

Never twice, never skipped. Each evaluation that finds new recipients writes a batch::

    $RAYMAIL_HOME/followups/<parent campaign>/<rule id>/
      lock                      flock'd while a rule is evaluated
      batch-000001/selection.parquet   the chosen recipients (email + merge fields)
      batch-000001/run/         the follow-up's run directory

The selection is written (atomically, fsync'd) *before* anything is sent, and everyone in
an earlier batch is left out of later ones, so evaluating a rule twice never selects anyone
twice. A batch whose run did not complete (a crash, a kill) is resumed first, before any
new selection: the run directory's ledger ensures nobody in it is sent twice either.
"""

from __future__ import annotations

import fcntl
import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import polars as pl

from raymail.errors import TrackingError
from raymail.returns.parts import write_table_atomic
from raymail.run.report import RunReport
from raymail.run.rundir import MANIFEST, RECIPIENTS, RunDir
from raymail.schema import DOMAIN, EMAIL, ROW
from raymail.spec import CampaignSpec, FollowupRule, load_spec, raymail_home
from raymail.tracking.dataset import load_events
from raymail.tracking.events import events_root
from raymail.tracking.sync import sync_ledger

SELECTION: Final = "selection.parquet"
EXCLUDED_KINDS: Final = ("bounce", "complaint", "unsubscribe")


def rule_id(rule: FollowupRule) -> str:
    """The rule's name, else a readable id with a hash of what defines it."""
    if rule.name:
        return rule.name
    defining = f"{rule.when}|{rule.after}|{rule.link}|{rule.send}|{rule.include_bots}"
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", Path(rule.send).stem)[:24]
    return f"{rule.when}-{stem}-{hashlib.sha256(defining.encode()).hexdigest()[:8]}"


def select(rule: FollowupRule, events: pl.DataFrame, now: datetime) -> pl.Series:
    """The addresses ``rule`` selects from one campaign's events (bot hits flagged)."""
    delivered = events.filter(pl.col("kind") == "delivered")
    due = delivered.filter(pl.col("at") + timedelta(seconds=rule.after_s) <= now)
    excluded = events.filter(pl.col("kind").is_in(EXCLUDED_KINDS))["recipient"]
    people = events if rule.include_bots else events.filter(~pl.col("bot"))
    opened = people.filter(pl.col("kind").is_in(["open", "click"]))["recipient"]
    clicks = people.filter(pl.col("kind") == "click")
    if rule.link:
        clicks = clicks.filter((pl.col("link") == rule.link) | (pl.col("url") == rule.link))
    clicked = clicks["recipient"]
    pool = due.filter(~pl.col("recipient").is_in(excluded.implode()))["recipient"]
    chosen = {
        "delivered": pool,
        "opened": pool.filter(pool.is_in(opened.implode())),
        "not_opened": pool.filter(~pool.is_in(opened.implode())),
        "clicked": pool.filter(pool.is_in(clicked.implode())),
        "not_clicked": pool.filter(~pool.is_in(clicked.implode())),
    }[rule.when]
    return chosen.unique().sort()


@dataclass
class BatchResult:
    """One follow-up batch: who was selected, and the report of its run."""

    rule: str
    batch: str
    selected: int
    resumed: bool
    run_dir: str
    report: RunReport | None = None  # none for a dry run


class RuleState:
    """The durable record of one rule of one parent campaign (see the module docstring)."""

    def __init__(self, parent: str, rule: FollowupRule, home: Path | None = None) -> None:
        self.rule = rule
        self.id = rule_id(rule)
        self.folder = (home or raymail_home()) / "followups" / parent / self.id

    @contextmanager
    def locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "lock").open("a") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise TrackingError(
                    f"follow-up rule {self.id}: another 'followups run' is evaluating it"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def batches(self) -> list[Path]:
        return sorted(p.parent for p in self.folder.glob(f"batch-*/{SELECTION}"))

    def selected(self) -> set[str]:
        """Everyone in any batch so far."""
        batches = self.batches()
        if not batches:
            return set()
        frame = pl.read_parquet([b / SELECTION for b in batches], columns=[EMAIL])
        return set(frame[EMAIL].str.to_lowercase().to_list())

    def record(self, selection: pl.DataFrame) -> Path:
        """Write the next batch's selection (atomically, before any send)."""
        number = len(self.batches()) + 1
        batch = self.folder / f"batch-{number:06d}"
        write_table_atomic(selection.to_arrow(), batch / SELECTION)
        return batch


def unfinished(batch: Path) -> bool:
    """Whether the batch's run is still to be started or completed."""
    manifest = batch / "run" / MANIFEST
    if not manifest.exists():
        return True
    return RunDir(batch / "run").manifest().get("status") != "complete"


def _merge_fields(parent_run: Path, emails: pl.Series) -> pl.DataFrame:
    """The chosen recipients with the parent's merge fields (so templates can use them)."""
    path = parent_run / RECIPIENTS
    wanted = pl.DataFrame({"__key": emails})
    if not path.exists():
        return wanted.rename({"__key": EMAIL})
    recipients = pl.read_parquet(path).with_columns(pl.col(EMAIL).str.to_lowercase().alias("__key"))
    joined = recipients.join(wanted, on="__key", how="semi").unique("__key", keep="first")
    return joined.drop(["__key", *(c for c in (ROW, DOMAIN) if c in joined.columns)])


def fresh_selection(
    state: RuleState, campaign: str, parent_run: Path, dataset: Path, now: datetime | None
) -> pl.Series:
    """Who the rule selects now and no earlier batch holds (call it under ``state.locked``)."""
    sync_ledger(dataset, parent_run)
    events = pl.from_arrow(load_events(dataset, campaigns=[campaign]))
    assert isinstance(events, pl.DataFrame)
    chosen = select(state.rule, events, now or datetime.now(UTC))
    return chosen.filter(~chosen.is_in(list(state.selected())))


def record_batch(state: RuleState, parent_run: Path, fresh: pl.Series) -> Path:
    """Record ``fresh`` (with the parent's merge fields) as the rule's next batch."""
    return state.record(_merge_fields(parent_run, fresh))


def batch_spec(spec: CampaignSpec, batch: Path) -> CampaignSpec:
    """The follow-up campaign of one batch: the rule's spec sent to the batch's selection."""
    return spec.model_copy(update={"recipients": str(batch / SELECTION)})


def _send(spec: CampaignSpec, batch: Path, *, resume: bool) -> RunReport:
    from raymail.driver.campaign import resume_campaign, run_campaign

    run_dir = batch / "run"
    if resume and (run_dir / MANIFEST).exists():
        return resume_campaign(run_dir, live_progress=False)
    return run_campaign(batch_spec(spec, batch), run_dir, live_progress=False)


def run_rule(
    parent: CampaignSpec,
    rule: FollowupRule,
    parent_run: Path,
    *,
    root: Path | None = None,
    home: Path | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> list[BatchResult]:
    """Evaluate one rule: resume unfinished batches, then select and send a new one."""
    dataset = root or events_root(home)
    state = RuleState(parent.campaign, rule, home)
    spec = load_spec(rule.send)
    results: list[BatchResult] = []
    with state.locked():
        for batch in state.batches():
            if unfinished(batch) and not dry_run:
                count = pl.read_parquet(batch / SELECTION, columns=[EMAIL]).height
                report = _send(spec, batch, resume=True)
                results.append(BatchResult(state.id, batch.name, count, True,
                                           str(batch / "run"), report))  # fmt: skip
        fresh = fresh_selection(state, parent.campaign, parent_run, dataset, now)
        if fresh.is_empty():
            return results
        if dry_run:
            return [*results, BatchResult(state.id, "(dry run)", fresh.len(), False, "")]
        batch = record_batch(state, parent_run, fresh)
        report = _send(spec, batch, resume=False)
        results.append(
            BatchResult(state.id, batch.name, fresh.len(), False, str(batch / "run"), report)
        )
    return results


def run_followups(
    parent: CampaignSpec,
    parent_run: Path,
    *,
    rule: str | None = None,
    root: Path | None = None,
    home: Path | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> list[BatchResult]:
    """``raymail followups run``: every rule of the spec (or the one named)."""
    rules = [r for r in parent.followups if rule is None or rule_id(r) == rule]
    if not parent.followups:
        raise TrackingError(f"campaign {parent.campaign}: the spec has no 'followups' rules")
    if not rules:
        known = ", ".join(rule_id(r) for r in parent.followups)
        raise TrackingError(f"no follow-up rule {rule!r} (rules: {known})")
    if not (parent_run / MANIFEST).exists():
        raise TrackingError(f"{parent_run}: not a run directory of {parent.campaign}")
    results: list[BatchResult] = []
    for one in rules:
        results.extend(
            run_rule(parent, one, parent_run, root=root, home=home, now=now, dry_run=dry_run)
        )
    return results


def rule_status(parent: CampaignSpec, home: Path | None = None) -> list[dict[str, Any]]:
    """Per rule, its batches: how many selected, and the run's status."""
    rows: list[dict[str, Any]] = []
    for rule in parent.followups:
        state = RuleState(parent.campaign, rule, home)
        for batch in state.batches():
            count = pl.read_parquet(batch / SELECTION, columns=[EMAIL]).height
            manifest = (
                RunDir(batch / "run").manifest() if (batch / "run" / MANIFEST).exists() else {}
            )
            rows.append({"rule": state.id, "batch": batch.name, "selected": count,
                         "status": manifest.get("status", "not started"),
                         "run_dir": str(batch / "run")})  # fmt: skip
        if not state.batches():
            rows.append({"rule": state.id, "batch": None, "selected": 0, "status": "no batch",
                         "run_dir": None})  # fmt: skip
    return rows
