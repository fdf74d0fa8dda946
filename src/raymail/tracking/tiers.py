"""Storage classes of the archive: moved on demand or by rule, each object's class recorded.

S3 changes a class by copying an object onto itself with the new class. Objects in GLACIER or
DEEP_ARCHIVE cannot be copied (or read) until restored: a move out of them first asks for a
restore and records ``restoring``; the next pass, once the restore is done, makes the copy.
The rules of the spec's ``archive.tiers``: an object not read for ``unread_days`` goes to
that rule's colder class; an object a query read since its last move goes back to
``warm_to``. Every move is checked with a HEAD of the object before it is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from raymail.errors import TrackingError
from raymail.spec import STORAGE_CLASSES, ArchiveSettings, S3Settings
from raymail.tracking.catalog import ArchivedObject, Catalog
from raymail.tracking.objectstore import FROZEN_CLASSES, ObjectStore, store_for


@dataclass(frozen=True)
class Move:
    path: str
    old: str
    new: str
    status: str  # moved | restore requested | already there
    why: str


def _store(obj: ArchivedObject, s3: S3Settings | None) -> ObjectStore:
    return store_for(obj.endpoint_url, obj.region, s3)


def move_object(
    catalog: Catalog,
    obj: ArchivedObject,
    target: str,
    why: str,
    s3: S3Settings | None,
    at: datetime | None = None,
) -> Move:
    """Move one object to ``target`` (or start its restore); record what happened."""
    if target not in STORAGE_CLASSES:
        raise TrackingError(f"unknown storage class {target!r} (one of {list(STORAGE_CLASSES)})")
    if obj.storage_class == target:
        return Move(obj.path, obj.storage_class, target, "already there", why)
    store = _store(obj, s3)
    if obj.storage_class in FROZEN_CLASSES and not store.state(obj.url).restored:
        if not obj.restoring:
            store.restore(obj.url)
            catalog.set_class(obj.path, obj.storage_class, restoring=True)
        return Move(obj.path, obj.storage_class, target, "restore requested", why)
    store.change_class(obj.url, target)
    now = store.state(obj.url).storage_class
    if now != target:
        raise TrackingError(f"{obj.url}: asked for {target}, the store reports {now}")
    catalog.set_class(obj.path, target, at=at)
    return Move(obj.path, obj.storage_class, target, "moved", why)


def set_tier(campaign: str, target: str, *, root: Path, s3: S3Settings | None = None) -> list[Move]:
    """``raymail archive tier CAMPAIGN --to CLASS``: every archived object of the campaign."""
    catalog = Catalog(root)
    objects = catalog.objects(campaign)
    if not objects:
        raise TrackingError(f"campaign {campaign!r}: nothing archived")
    return [move_object(catalog, o, target, "on demand", s3) for o in objects.values()]


def _age_days(since: str, now: datetime) -> float:
    return (now - datetime.fromisoformat(since)).total_seconds() / 86400


def rule_target(
    obj: ArchivedObject, settings: ArchiveSettings, now: datetime
) -> tuple[str, str] | None:
    """(class, why) the tier rules want for ``obj`` now, or None to leave it."""
    rank = STORAGE_CLASSES.index
    read_since_move = obj.last_read is not None and datetime.fromisoformat(
        obj.last_read
    ) > datetime.fromisoformat(obj.class_changed_at)
    if settings.warm_to and read_since_move and rank(obj.storage_class) > rank(settings.warm_to):
        return settings.warm_to, f"read again at {obj.last_read}"
    unread = _age_days(obj.last_read or obj.archived_at, now)
    due = [t for t in settings.tiers if unread >= t.unread_days]
    if not due:
        return None
    coldest = max(due, key=lambda t: t.unread_days)
    if rank(coldest.to) <= rank(obj.storage_class):
        return None
    return coldest.to, f"unread for {unread:.1f} days (>= {coldest.unread_days})"


def apply_tier_rules(
    campaign: str,
    settings: ArchiveSettings,
    *,
    root: Path,
    s3: S3Settings | None = None,
    now: datetime | None = None,
) -> list[Move]:
    """One pass of the spec's tier rules over the campaign's archived objects."""
    at = now or datetime.now(UTC)
    catalog = Catalog(root)
    moves: list[Move] = []
    for obj in catalog.objects(campaign).values():
        wanted = rule_target(obj, settings, at)
        if wanted is not None:
            moves.append(move_object(catalog, obj, wanted[0], wanted[1], settings.s3 or s3, at))
    return moves


def check_classes(
    campaign: str | None, *, root: Path, s3: S3Settings | None = None
) -> list[tuple[str, str, str]]:
    """(path, recorded class, class the store reports) for objects where they differ."""
    differ = []
    for obj in Catalog(root).objects(campaign).values():
        actual = _store(obj, s3).state(obj.url).storage_class
        if actual != obj.storage_class:
            differ.append((obj.path, obj.storage_class, actual))
    return differ
