"""The list store: each subscriber list is a Parquet dataset with numbered versions.

::

    <home>/lists/<list id>/
      v000001.parquet  v000002.parquet ...   whole list at each version (atomic rename)
      history.jsonl                          one line per version: when, what changed, why

A version is written only when an apply changes something, so applying the same changes
again (after a crash between the write and the log offset's save) makes no new version:
:meth:`ListStore.upsert` compares by address and content first. Readers take the highest
version and never see a half-written one; writers take turns through ``<list>/.lock``.
A campaign reads a version as its recipient table: ``raymail lists show ID --to FILE``
writes the subscribed members with their merge fields as columns (:meth:`recipients`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from raymail.errors import ListStoreError
from raymail.returns.parts import write_table_atomic

__all__ = ["LIST_SCHEMA", "ListStore", "ListVersion", "Member"]

_TS = pa.timestamp("us", tz="UTC")
LIST_SCHEMA: Final = pa.schema(
    [
        pa.field("email", pa.string(), nullable=False),  # lower-case
        pa.field("status", pa.string(), nullable=False),  # subscribed | unsubscribed
        pa.field("fields", pa.string(), nullable=False),  # JSON object of merge fields
        pa.field("changed_at", _TS, nullable=False),
        pa.field("change", pa.string(), nullable=False),  # id of the change-log record
    ]
)
_VERSION_RE: Final = re.compile(r"^v(\d{6,})\.parquet$")
_LIST_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Member:
    """One wanted state of an address in a list."""

    email: str
    status: str
    fields: Mapping[str, str]
    changed_at: datetime
    change: str


@dataclass(frozen=True, slots=True)
class ListVersion:
    """What one version changed."""

    version: int
    at: str
    added: int
    updated: int
    members: int
    changes: int


class ListStore:
    """All lists under ``<home>/lists``."""

    def __init__(self, home: Path) -> None:
        self.root = home / "lists"

    def folder(self, list_id: str) -> Path:
        if not _LIST_ID_RE.match(list_id):
            raise ListStoreError(f"list id {list_id!r}: use letters, digits, '.', '_', '-'")
        return self.root / list_id

    def lists(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def versions(self, list_id: str) -> list[int]:
        folder = self.folder(list_id)
        if not folder.exists():
            return []
        found = (_VERSION_RE.match(p.name) for p in folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def read(self, list_id: str, version: int | None = None) -> pa.Table:
        """The list at ``version`` (default: the latest); empty when it has none."""
        versions = self.versions(list_id)
        if version is None:
            version = versions[-1] if versions else None
        elif version not in versions:
            raise ListStoreError(f"list {list_id!r} has no version {version} (has {versions})")
        if version is None:
            return LIST_SCHEMA.empty_table()
        return pq.read_table(self.folder(list_id) / f"v{version:06d}.parquet", schema=LIST_SCHEMA)

    def recipients(self, list_id: str, version: int | None = None) -> pa.Table:
        """The subscribed members as a campaign's recipient table: email plus one column
        per merge field (empty where a member has none)."""
        rows = [r for r in self.read(list_id, version).to_pylist() if r["status"] == "subscribed"]
        fields = [json.loads(r["fields"]) for r in rows]
        names = sorted({k for f in fields for k in f} - {"email"})
        columns: dict[str, list[str]] = {"email": [r["email"] for r in rows]}
        for name in names:
            columns[name] = [str(f.get(name, "")) for f in fields]
        return pa.table(columns, schema=pa.schema([(n, pa.string()) for n in columns]))

    def history(self, list_id: str) -> list[ListVersion]:
        path = self.folder(list_id) / "history.jsonl"
        if not path.exists():
            return []
        lines = path.read_text(encoding="utf-8").splitlines()
        return [ListVersion(**json.loads(line)) for line in lines if line.strip()]

    @contextlib.contextmanager
    def _locked(self, list_id: str) -> Iterator[Path]:
        folder = self.folder(list_id)
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / ".lock").open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield folder
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def upsert(self, list_id: str, members: Sequence[Member]) -> int | None:
        """Apply wanted states; the new version number, or None when nothing changed.

        An address already in the wanted state with the same fields is left alone (its
        ``changed_at`` too), so a change applied twice makes no difference.
        """
        with self._locked(list_id) as folder:
            current = self.read(list_id)
            rows: dict[str, dict[str, Any]] = {r["email"]: r for r in current.to_pylist()}
            added = updated = 0
            for member in members:
                email = member.email.strip().lower()
                fields = json.dumps(dict(member.fields), sort_keys=True)
                old = rows.get(email)
                if (
                    old is not None
                    and old["status"] == member.status
                    and (member.status != "subscribed" or old["fields"] == fields)
                ):
                    continue
                if old is None and member.status != "subscribed":
                    continue  # unsubscribing someone never on the list: nothing to record
                added += old is None
                updated += old is not None
                if member.status != "subscribed" and old is not None:
                    fields = old["fields"]  # an unsubscribe keeps what was known
                rows[email] = {
                    "email": email,
                    "status": member.status,
                    "fields": fields,
                    "changed_at": member.changed_at.astimezone(UTC),
                    "change": member.change,
                }
            if not added and not updated:
                return None
            versions = self.versions(list_id)
            version = (versions[-1] if versions else 0) + 1
            table = pa.Table.from_pylist(
                sorted(rows.values(), key=lambda r: r["email"]), schema=LIST_SCHEMA
            )
            write_table_atomic(table, folder / f"v{version:06d}.parquet")
            entry = ListVersion(
                version,
                datetime.now(UTC).isoformat(),
                added,
                updated,
                table.num_rows,
                len(members),
            )
            with (folder / "history.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(dataclasses.asdict(entry)) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            return version
