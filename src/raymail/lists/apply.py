"""Applies the change log in bulk: the suppression list, the list store, events, mail.

One pass (:meth:`Applier.apply_once`) takes the records after the saved offsets (at most
``batch``), turns each into its effects (:mod:`raymail.lists.effects`), and writes them
together: one suppression-list rewrite, one version per changed list, one events flush.
Then it saves the new offsets and the mail still to send in ``<home>/web/applied.json``
(temporary file, fsync, rename). A crash before that save means the same records are
applied again on the next pass, and that changes nothing: the suppression list skips
addresses already suppressed, the list store skips members already in that state, and
confirmations wait in the state file, not in the pass. (Events written just before such
a crash are written again; each carries its change id in ``detail`` to tell.) Passes take
``<home>/web/apply.lock``, so the service and ``raymail lists apply`` take turns.

Mail (confirmations) is sent after the save by :meth:`Applier.send_mail`, outside the
lock; a message that fails is retried on later passes, up to ``MAX_MAIL_ATTEMPTS``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import polars as pl
import pyarrow as pa

from raymail._io import write_atomic
from raymail.errors import RaymailError
from raymail.lists.changelog import DAMAGED, ChangeLog, changes_dir
from raymail.lists.effects import Effects, RecordError, Resolver, effects_of
from raymail.lists.mail import ListMailer, render_text
from raymail.lists.store import ListStore
from raymail.returns.suppression import SUPPRESSION_SCHEMA, SuppressionList
from raymail.spec import WebSettings
from raymail.tracking.events import EventWriter
from raymail.web.confirm import make_confirmation

__all__ = ["Applier", "ApplyResult"]

log = logging.getLogger(__name__)
MAX_MAIL_ATTEMPTS: Final = 5


@dataclass
class ApplyResult:
    """What one pass did."""

    changes: int = 0
    suppressed: int = 0
    list_versions: dict[str, int] = field(default_factory=dict)
    events: int = 0
    rejected: int = 0
    mail_queued: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Applier:
    """Applies one web home's change log (``<home>/web/changes``)."""

    def __init__(
        self,
        home: Path,
        *,
        resolver: Resolver,
        suppression: Path,
        events: Path | None,
        web: WebSettings | None = None,
        secret: str = "",
        mailer: ListMailer | None = None,
        batch: int = 10_000,
    ) -> None:
        self.home = home
        self.log = ChangeLog(changes_dir(home))
        self.state_path = home / "web" / "applied.json"
        self.rejects_path = home / "web" / "rejects.jsonl"
        self.lists = ListStore(home)
        self.suppression = SuppressionList(suppression)
        self.events = EventWriter(events) if events is not None else None
        self.resolver = resolver
        self.web = web
        self.secret = secret
        self.mailer = mailer
        self.batch = batch

    # -- state -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        with self.state_path.with_name("apply.lock").open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {"offsets": {}, "mail": [], "applied": 0}
        data: dict[str, Any] = json.loads(self.state_path.read_text(encoding="utf-8"))
        return data

    def _save(self, state: Mapping[str, Any]) -> None:
        text = json.dumps(state, sort_keys=True)
        write_atomic(self.state_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def pending_bytes(self) -> int:
        """Change-log bytes not applied yet (a stat per segment)."""
        return self.log.pending_bytes(self.state().get("offsets", {}))

    # -- one pass ----------------------------------------------------------------------

    def apply_once(self) -> ApplyResult:
        """Apply up to ``batch`` pending records; see the module docstring."""
        with self._locked():
            state = self.state()
            offsets: dict[str, int] = dict(state.get("offsets", {}))
            changes, damage = self.log.read(offsets, self.batch)
            result = ApplyResult(changes=len(changes))
            if not changes:
                return result
            total = Effects()
            rejects = [
                {"segment": d.segment, "offset": d.offset, "reason": d.reason} for d in damage
            ]
            for change in changes:
                offsets[change.segment] = max(offsets.get(change.segment, 0), change.end)
                if change.record.get("kind") == DAMAGED:
                    continue
                try:
                    part = effects_of(change.record, self.resolver, self._confirms_unsubscribe)
                except (RecordError, KeyError, TypeError) as exc:
                    rejects.append({"record": change.record, "reason": str(exc)})
                    continue
                total.suppress += part.suppress
                total.events += part.events
                total.mail += part.mail
                for list_id, members in part.members.items():
                    total.members.setdefault(list_id, []).extend(members)
            newly = self._suppress(total.suppress)
            result.suppressed = len(newly)
            for list_id, members in total.members.items():
                version = self.lists.upsert(list_id, members)
                if version is not None:
                    result.list_versions[list_id] = version
            if self.events is not None and total.events:
                self.events.add(total.events)
                result.events = self.events.flush()
            mail = [m for m in total.mail if m["kind"] != "unsubscribed" or m["to"] in newly]
            result.mail_queued = len(mail)
            result.rejected = len(rejects)
            self._reject(rejects)
            state["offsets"] = offsets
            state["mail"] = [*state.get("mail", []), *({**m, "attempts": 0} for m in mail)]
            state["applied"] = int(state.get("applied", 0)) + len(changes)
            self._save(state)
            return result

    def apply_all(self, max_passes: int = 1000) -> ApplyResult:
        """Passes until nothing is pending (bounded); the summed result."""
        summed = ApplyResult()
        for _ in range(max_passes):
            one = self.apply_once()
            if not one.changes:
                break
            for key in ("changes", "suppressed", "events", "rejected", "mail_queued"):
                setattr(summed, key, getattr(summed, key) + getattr(one, key))
            summed.list_versions.update(one.list_versions)
        return summed

    def _confirms_unsubscribe(self, list_id: str) -> bool:
        settings = None if self.web is None else self.web.lists.get(list_id)
        return settings is not None and settings.confirm_unsubscribe

    def _suppress(self, rows: list[dict[str, Any]]) -> set[str]:
        """Upsert the addresses not already suppressed; returns those newly suppressed."""
        if not rows:
            return set()
        active = set(self.suppression.active()["email"].to_list())
        fresh: dict[str, dict[str, Any]] = {}
        for row in rows:
            if row["email"] not in active and row["email"] not in fresh:
                fresh[row["email"]] = row
        if fresh:
            frame = pl.from_arrow(pa.Table.from_pylist(list(fresh.values()), SUPPRESSION_SCHEMA))
            assert isinstance(frame, pl.DataFrame)
            self.suppression.upsert(frame)
        return set(fresh)

    def _reject(self, rejects: list[dict[str, Any]]) -> None:
        if not rejects:
            return
        stamp = datetime.now(UTC).isoformat()
        with self.rejects_path.open("a", encoding="utf-8") as handle:
            for item in rejects:
                handle.write(json.dumps({"at": stamp, **item}, default=str) + "\n")
                log.warning("lists: change rejected: %s", item.get("reason"))
            handle.flush()
            os.fsync(handle.fileno())

    # -- mail --------------------------------------------------------------------------

    async def send_mail(self) -> int:
        """Send the queued confirmations; returns how many were delivered."""
        if self.mailer is None or self.web is None:
            return 0
        with self._locked():
            queued = list(self.state().get("mail", []))
        if not queued:
            return 0
        done: list[int] = []
        failed: list[int] = []
        for n, item in enumerate(queued):
            try:
                subject, text = self._compose(item)
                await self.mailer.send(item["to"], subject, text)
                done.append(n)
            except (RaymailError, RecordError) as exc:
                log.warning("lists: mail to %s not sent: %s", item.get("to"), exc)
                failed.append(n)
        with self._locked():
            state = self.state()
            keys = {_mail_key(queued[n]) for n in done}
            keep: list[dict[str, Any]] = []
            dropped: list[dict[str, Any]] = []
            for item in state.get("mail", []):
                if _mail_key(item) in keys:
                    continue
                if any(_mail_key(queued[n]) == _mail_key(item) for n in failed):
                    item = {**item, "attempts": int(item.get("attempts", 0)) + 1}
                (dropped if item["attempts"] >= MAX_MAIL_ATTEMPTS else keep).append(item)
            state["mail"] = keep
            self._save(state)
            self._reject([{"mail": m, "reason": "not delivered after retries"} for m in dropped])
        return len(done)

    def _compose(self, item: Mapping[str, Any]) -> tuple[str, str]:
        assert self.web is not None
        settings = self.web.lists.get(item["list"])
        if settings is None:
            raise RecordError(f"list {item['list']!r} is not configured in web.lists")
        context = {**item.get("fields", {}), "email": item["to"], "list": item["list"]}
        if item["kind"] == "confirm":
            ttl = self.web.confirm_ttl_hours * 3600
            token = make_confirmation(self.secret, item["list"], item["to"], item["fields"], ttl)
            context["confirm_url"] = f"{self.web.base_url}/confirm/{token}"
            subject, text = settings.confirm_subject, settings.confirm_text
        else:
            subject, text = settings.unsubscribed_subject, settings.unsubscribed_text
        where = f"web.lists.{item['list']}"
        return render_text(subject, context, where), render_text(text, context, where)


def _mail_key(item: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(item.get("kind")), str(item.get("to")), str(item.get("list")))
