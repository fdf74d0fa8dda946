"""Hops to alternates (seed 001's "alternate receiving device destinations", issue 14).

When a recipient's attempt settles as a failure its spec's ``on_failure`` sends on (a hard
bounce, an expiry, a block, a message in doubt), and its ``alternates`` column names a next
address, the driver queues a *hop*: the same recipient (same ``row``) sent to that address
in the same run, as a portion of its own. A hop's attempts are numbered
``HOP_STRIDE * hop + n``, so its ledger rows (``hop`` N, ``alternate_of`` the recipient's own
address) sort after the original's and "the latest attempt decides" gives the recipient's
final fate; the delivery journal's (portion, attempt, row) lines then say which address a
recovered attempt went to, and a resumed run queues again the hops a kill interrupted.

Hops are sequential: hop N+1 is queued only once hop N has settled as a failure, so a
recipient accepted at some hop is never sent to another address. The one exception is
``on_failure.in_doubt: alternate``: the message in doubt may have arrived, so the
alternate may make two copies (the docs say so).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raymail.driver.dispatch import Work
from raymail.driver.plan import PortionTask
from raymail.driver.portions import FIRST_ATTEMPT, PREV_ATTEMPT
from raymail.driver.progress import Tally
from raymail.intake.alternates import SEPARATOR
from raymail.returns.reasons import classify_reply
from raymail.run.ledger import read_outcomes
from raymail.schema import ALTERNATES, EMAIL, HOP_STRIDE
from raymail.spec import CampaignSpec
from raymail.status import DEFERRED, EXPIRED, FAILED, IN_DOUBT, SUPPRESSED, Category

ALTERNATE_OF: Final = "alternate_of"
HARD_BOUNCE, BLOCKED, EXPIRED_KIND, IN_DOUBT_KIND = "hard_bounce", "blocked", "expired", "in_doubt"
SUPPRESSED_KIND = "suppressed"  # an alternate on the suppression list: always the next one
_BLOCKING = {Category.BLOCKED, Category.CONTENT_REJECTED}  # the sender refused, not the address
_ADDRESS = {Category.HARD_BOUNCE_ADDRESS, Category.HARD_BOUNCE_DOMAIN}
_RECOVERED_PREFIX = "failed (recovered"  # a journal's F: an SMTP refusal whose reply is lost


def hop_of(attempt: int) -> int:
    """Which address an attempt went to: 0 the recipient's own, N its N-th alternate."""
    return attempt // HOP_STRIDE


def failure_kind(status: str, code: int | None, enhanced: str | None, text: str) -> str | None:
    """The ``on_failure`` key an outcome falls under; None when no policy applies (accepted,
    deferred, suppressed, or a local failure such as a template error)."""
    if status == EXPIRED:
        return EXPIRED_KIND
    if status == IN_DOUBT:
        return IN_DOUBT_KIND
    if status != FAILED:
        return None
    if code is None and text.startswith(_RECOVERED_PREFIX):
        return HARD_BOUNCE  # the journal kept the fate, not the reply: the common case
    category, _ = classify_reply(code, enhanced, text or "")
    if code is not None and code >= 500:
        return BLOCKED if category in _BLOCKING else HARD_BOUNCE
    return HARD_BOUNCE if category in _ADDRESS else None


def hop_kinds(spec: CampaignSpec) -> frozenset[str]:
    """The failure kinds this spec moves on to the next alternate."""
    policy = spec.on_failure
    kinds = {
        HARD_BOUNCE: policy.hard_bounce == "alternate",
        EXPIRED_KIND: policy.expired == "alternate",
        BLOCKED: policy.blocked in ("alternate", "other_server_then_alternate"),
        IN_DOUBT_KIND: policy.in_doubt == "alternate",
    }
    return frozenset(k for k, on in kinds.items() if on)


def next_address(alternates: str | None, hop: int) -> str | None:
    """The address of hop ``hop`` (1-based) in a normalised ``alternates`` cell."""
    if hop < 1 or not alternates:
        return None
    pieces = alternates.split(SEPARATOR)
    return pieces[hop - 1] if hop <= len(pieces) else None


@dataclass(frozen=True, slots=True)
class Hop:
    """One recipient row going to one address at one attempt."""

    position: int  # in the source table
    email: str
    own: str | None  # the recipient's own address (what the hop stands in for); None at home
    attempt: int


def hop_works(source: pa.Table, hops: list[Hop], new_id: Callable[[], int]) -> list[Work]:
    """Portions (one per domain and attempt) sending ``source``'s rows to their hops."""
    if not hops:
        return []
    rows = source.take(pa.array([h.position for h in hops], pa.int64()))
    stale = [c for c in (ALTERNATE_OF, FIRST_ATTEMPT, PREV_ATTEMPT) if c in rows.column_names]
    rows = rows.drop_columns(stale)  # a new address: its retries and max_age start afresh
    emails = [h.email for h in hops]
    domains = [e.rpartition("@")[2] for e in emails]
    rows = rows.set_column(rows.column_names.index(EMAIL), EMAIL, pa.array(emails, pa.string()))
    rows = rows.set_column(rows.column_names.index("domain"), "domain", pa.array(domains))
    rows = rows.append_column(ALTERNATE_OF, pa.array([h.own for h in hops], pa.string()))
    groups: dict[tuple[str, int], list[int]] = {}
    for i, (domain, hop) in enumerate(zip(domains, hops, strict=True)):
        groups.setdefault((domain, hop.attempt), []).append(i)
    works = []
    for (domain, attempt), members in groups.items():
        piece = rows.take(pa.array(members, pa.int64()))
        works.append(Work(PortionTask(new_id(), domain, attempt, piece.num_rows), piece))
    return works


class Alternates:
    """The driver's side of hops: which settled outcomes go on, and their ledger links."""

    def __init__(self, spec: CampaignSpec) -> None:
        self.kinds = hop_kinds(spec)
        self.moved: dict[int, int] = {}  # hop -> recipients sent to it by this driver

    def link(self, work: Work, outcomes: pa.Table) -> pa.Table:
        """``outcomes`` of a hop's portion with ``alternate_of`` filled in from its rows."""
        if ALTERNATE_OF not in work.rows.column_names or not outcomes.num_rows:
            return outcomes
        own = dict(
            zip(
                work.rows.column("row").to_pylist(),
                work.rows.column(ALTERNATE_OF).to_pylist(),
                strict=True,
            )
        )
        values = [own.get(r) for r in outcomes.column("row").to_pylist()]
        index = outcomes.schema.get_field_index(ALTERNATE_OF)
        return outcomes.set_column(index, ALTERNATE_OF, pa.array(values, pa.string()))

    def next_hops(
        self, work: Work, outcomes: pa.Table, tally: Tally, new_id: Callable[[], int]
    ) -> list[Work]:
        """Portions sending the settled failures of ``outcomes`` to their next alternate;
        ``tally`` counts them as retrying instead of settled."""
        rows = work.rows
        if not self.kinds or ALTERNATES not in rows.column_names or not outcomes.num_rows:
            return []
        going_on = [FAILED, EXPIRED, IN_DOUBT, SUPPRESSED]
        wanted = pc.is_in(outcomes.column("status"), pa.array(going_on))
        candidates = outcomes.filter(wanted)
        if not candidates.num_rows:
            return []
        position = {r: i for i, r in enumerate(rows.column("row").to_pylist())}
        alternates = rows.column(ALTERNATES).to_pylist()
        own = rows.column(ALTERNATE_OF).to_pylist() if ALTERNATE_OF in rows.column_names else None
        emails = rows.column(EMAIL).to_pylist()
        hops: list[Hop] = []
        for out in candidates.to_pylist():
            if out["status"] == IN_DOUBT and IN_DOUBT_KIND not in self.kinds:
                continue  # resent (or skipped) under the in-doubt policy
            kind = failure_kind(
                out["status"], out["smtp_code"], out["enhanced_status"], out["response"] or ""
            )
            if out["status"] == SUPPRESSED and hop_of(int(out["attempt"])) > 0:
                kind = SUPPRESSED_KIND  # a suppressed alternate: the next one, if any
            i = position.get(out["row"])
            if (kind not in self.kinds and kind != SUPPRESSED_KIND) or i is None:
                continue
            hop = hop_of(int(out["attempt"])) + 1
            address = next_address(alternates[i], hop)
            if address is None:
                continue
            hops.append(
                Hop(i, address, (own[i] if own else None) or emails[i], hop * HOP_STRIDE + 1)
            )
            _unsettle(tally, out["status"])
            self.moved[hop] = self.moved.get(hop, 0) + 1
        tally.retrying += len(hops)
        return hop_works(rows, hops, new_id)

    def screen(self, work: Work, spec: CampaignSpec) -> tuple[Work | None, pa.Table]:
        """(the hop portion without suppressed alternates, ledger rows for those): an
        alternate on the suppression list is never sent to, like any address."""
        from raymail.returns.suppression import apply_suppression  # the C servers' list

        kept, suppressed = apply_suppression(work.rows, spec)
        if suppressed.num_rows:
            task = work.task
            fixed = {
                "attempt": pa.array([task.attempt] * suppressed.num_rows, pa.int32()),
                "hop": pa.array([hop_of(task.attempt)] * suppressed.num_rows, pa.int32()),
                "portion": pa.array([task.portion] * suppressed.num_rows, pa.int64()),
            }
            for name, values in fixed.items():
                index = suppressed.schema.get_field_index(name)
                suppressed = suppressed.set_column(index, name, values)
            suppressed = self.link(work, suppressed)
        if not kept.num_rows:
            return None, suppressed
        if kept.num_rows == work.rows.num_rows:
            return work, suppressed
        task = work.task
        piece = PortionTask(task.portion, task.domain, task.attempt, kept.num_rows)
        return Work(piece, kept, work.internal_failures), suppressed


def _unsettle(tally: Tally, status: str) -> None:
    """A settled failure goes on to an alternate: it is no longer final."""
    if status == FAILED:
        tally.failed -= 1
    elif status == EXPIRED:
        tally.expired -= 1
    elif status == IN_DOUBT:
        tally.in_doubt -= 1


@dataclass(frozen=True)
class ResumeHops:
    """What a resumed run still owes alternates: rows the list stream must skip, and the
    hop portions to queue instead (built once portion ids can be handed out)."""

    rows: npt.NDArray[np.int64]
    source: pa.Table
    hops: list[Hop]

    def works(self, new_id: Callable[[], int]) -> list[Work]:
        return hop_works(self.source, self.hops, new_id)


NO_RESUME_HOPS: Final = ResumeHops(np.array([], np.int64), pa.table({}), [])


def resume_hops(
    spec: CampaignSpec, run_dir: Path, recipients: Path, final: pl.DataFrame
) -> ResumeHops:
    """Hops a killed run had not finished: a hop not yet settled goes again to its address
    (its next attempt); a settled failure the policy sends on goes to the next alternate.
    ``final`` is the latest outcome per row (ledger and journals)."""
    if ALTERNATES not in pq.read_schema(recipients).names:
        return NO_RESUME_HOPS
    kinds = hop_kinds(spec)
    unsettled = [DEFERRED] + ([IN_DOUBT] if spec.resends_in_doubt else [])
    in_hop = pl.col("attempt") >= HOP_STRIDE
    frame = final.filter(
        (in_hop & pl.col("status").is_in([*unsettled, SUPPRESSED]))
        | pl.col("status").is_in([FAILED, EXPIRED, IN_DOUBT])
    )
    if frame.height == 0:
        return NO_RESUME_HOPS
    replies = read_outcomes(
        run_dir, columns=["row", "attempt", "smtp_code", "enhanced_status", "response"]
    ).unique(subset=["row", "attempt"], keep="last")
    frame = frame.join(replies, on=["row", "attempt"], how="left")
    table = pq.read_table(recipients, filters=[("row", "in", frame["row"].to_list())])
    position = {r: i for i, r in enumerate(table.column("row").to_pylist())}
    alternates = table.column(ALTERNATES).to_pylist()
    emails = table.column(EMAIL).to_pylist()
    hops: list[Hop] = []
    for out in frame.iter_rows(named=True):
        i = position.get(out["row"])
        if i is None:
            continue
        attempt, status = int(out["attempt"]), str(out["status"])
        hop = hop_of(attempt)
        if status in unsettled and hop > 0:  # interrupted at its alternate: the next attempt
            address, next_attempt = next_address(alternates[i], hop), attempt + 1
        else:
            kind = failure_kind(
                status, out["smtp_code"], out["enhanced_status"], out["response"] or ""
            )
            if status == SUPPRESSED:
                kind = SUPPRESSED_KIND  # a suppressed alternate: the one after it
            elif kind not in kinds:
                continue
            address, next_attempt = next_address(alternates[i], hop + 1), (hop + 1) * HOP_STRIDE + 1
        if address is not None:
            hops.append(Hop(i, address, emails[i], next_attempt))
    rows = np.sort(np.array([int(table.column("row")[h.position].as_py()) for h in hops], np.int64))
    return ResumeHops(rows, table, hops)
