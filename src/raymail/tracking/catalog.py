"""The archive catalog: every object moved to object storage, its checksum and storage class.

One JSON file, ``<events root>/_archive/catalog.json``, rewritten atomically under an flock
(archive runs, tier passes and queries that record reads may overlap). An entry is written
only after the object was uploaded and read back with the same SHA-256 and row count, and
before the local copy is removed, so at every moment a row is local, archived, or (briefly,
after a crash) both: readers take the archived copy and skip a local file the catalog lists.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from raymail._io import write_json_atomic
from raymail.errors import TrackingError

CATALOG_DIR: Final = "_archive"
CATALOG_FILE: Final = "catalog.json"


@dataclass(frozen=True)
class ArchivedObject:
    """One archived file: where it came from, where it is, what it holds, how cold it is."""

    path: str  # as in the events root (campaign=/date=/part); ledger: ledger/<campaign>/<run>/
    campaign: str
    kind: str  # "events" or "ledger"
    url: str  # s3://bucket/key
    size: int
    sha256: str
    rows: int
    storage_class: str
    archived_at: str  # ISO times, UTC
    class_changed_at: str
    last_read: str | None = None
    endpoint_url: str | None = None  # where the store is (never credentials)
    region: str | None = None
    restoring: bool = False  # a restore from GLACIER / DEEP_ARCHIVE was requested

    @property
    def date(self) -> str | None:
        """The events partition's day (``date=`` in the path), None for ledger files."""
        for piece in self.path.split("/"):
            if piece.startswith("date="):
                return piece.removeprefix("date=")
        return None


def now_iso(at: datetime | None = None) -> str:
    return (at or datetime.now(UTC)).isoformat(timespec="microseconds")


class Catalog:
    """Read and update the catalog of one events root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.folder = self.root / CATALOG_DIR
        self.path = self.folder / CATALOG_FILE

    def objects(self, campaign: str | None = None) -> dict[str, ArchivedObject]:
        """Entries by path (of one campaign, or all)."""
        entries = self._read()
        if campaign is not None:
            entries = {k: v for k, v in entries.items() if v.campaign == campaign}
        return entries

    def _read(self) -> dict[str, ArchivedObject]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return {e["path"]: ArchivedObject(**e) for e in data["objects"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise TrackingError(f"{self.path}: unreadable archive catalog ({exc})") from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / ".lock").open("a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def update(
        self, change: Callable[[dict[str, ArchivedObject]], dict[str, ArchivedObject]]
    ) -> dict[str, ArchivedObject]:
        """Apply ``change`` to the entries under the lock and write the result atomically."""
        with self._locked():
            entries = change(self._read())
            payload: dict[str, Any] = {
                "objects": [asdict(entries[k]) for k in sorted(entries)],
            }
            write_json_atomic(self.path, payload)
            return entries

    def record(self, objects: list[ArchivedObject]) -> None:
        """Add (or replace) entries: objects that were uploaded and verified."""

        def add(entries: dict[str, ArchivedObject]) -> dict[str, ArchivedObject]:
            return {**entries, **{o.path: o for o in objects}}

        self.update(add)

    def mark_read(self, paths: list[str]) -> None:
        """Note that a query read these objects (the tier rules warm them up again)."""
        if not paths:
            return
        at = now_iso()

        def touch(entries: dict[str, ArchivedObject]) -> dict[str, ArchivedObject]:
            return {k: replace(v, last_read=at) if k in paths else v for k, v in entries.items()}

        self.update(touch)

    def set_class(
        self,
        path: str,
        storage_class: str,
        *,
        restoring: bool = False,
        at: datetime | None = None,
    ) -> None:
        """Record an object's new storage class (or a pending restore)."""

        def change(entries: dict[str, ArchivedObject]) -> dict[str, ArchivedObject]:
            old = entries[path]
            entries[path] = replace(
                old,
                storage_class=storage_class,
                class_changed_at=now_iso()
                if storage_class != old.storage_class
                else (old.class_changed_at),
                restoring=restoring,
            )
            return entries

        self.update(change)
