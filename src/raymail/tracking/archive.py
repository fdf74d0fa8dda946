"""Archive a campaign's tracking data and its run's ledger to object storage (seed 000).

When a criterion of the spec's ``archive`` section holds (a day of events older than N days,
the campaign's local events over N MB, the run complete) the files go to
``<to>/events/<campaign=/date=/part>`` and ``<to>/ledger/<campaign>/<run>/outcomes/...``.
Each is uploaded in the configured storage class, read back, and compared with the local
file (SHA-256 of the bytes, Parquet row count); only then is it recorded in the catalog,
and only after that is the local copy removed. A crash anywhere leaves every row local,
archived, or both (readers then take the archived copy), never neither; the next run
finishes the job (an upload is idempotent: the same key, the same bytes; a file recorded
but not yet removed is only removed, once its bytes are found equal to the archived ones).
The scheduler runs these passes by itself (:mod:`raymail.queue.aftercare`).

A run's ledger is archived only with ``when_finished`` and a complete run, after its
outcomes were synced into the events dataset (so the ``delivered`` rows stay queryable).
The run directory keeps ``outcomes/ARCHIVED.json`` naming where its ledger went.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from raymail._io import fsync_path, write_json_atomic
from raymail.errors import StorageError, TrackingError
from raymail.run.ledger import ledger_parts
from raymail.run.rundir import MANIFEST, OUTCOMES
from raymail.spec import ArchiveSettings, CampaignSpec, S3Settings
from raymail.tracking.catalog import ArchivedObject, Catalog, now_iso
from raymail.tracking.dataset import local_files
from raymail.tracking.objectstore import ObjectStore, sha256_of
from raymail.tracking.sync import ARCHIVED_MARKER, source_key, sync_ledger

COMPLETE = "complete"


@dataclass
class ArchiveResult:
    """What one archive pass did for one campaign."""

    campaign: str
    reasons: list[str] = field(default_factory=list)
    events_files: int = 0
    ledger_files: int = 0
    rows: int = 0
    bytes: int = 0

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def _run_complete(run_dir: Path | None) -> bool:
    if run_dir is None or not (run_dir / MANIFEST).exists():
        return False
    manifest = json.loads((run_dir / MANIFEST).read_text(encoding="utf-8"))
    return bool(manifest.get("status") == COMPLETE)


def _day(path: Path) -> str:
    return path.parent.name.removeprefix("date=")


def due_files(
    root: Path,
    campaign: str,
    settings: ArchiveSettings,
    *,
    run_dir: Path | None = None,
    now: datetime | None = None,
    force: bool = False,
) -> tuple[list[Path], bool, list[str]]:
    """(events files to archive, whether the ledger goes too, why) under ``settings``."""
    files = local_files(root, [campaign])
    reasons: list[str] = []
    chosen: set[Path] = set()
    finished = _run_complete(run_dir)
    if force:
        reasons.append("forced")
        chosen.update(files)
    if settings.older_than_days is not None:
        cutoff = ((now or datetime.now(UTC)) - timedelta(days=settings.older_than_days)).date()
        old = [p for p in files if _day(p) < cutoff.isoformat()]
        if old:
            reasons.append(f"{len(old)} files of days before {cutoff} (older_than_days)")
            chosen.update(old)
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    if settings.larger_than_mb is not None and size_mb > settings.larger_than_mb:
        reasons.append(f"{size_mb:.1f} MB > {settings.larger_than_mb} MB (larger_than_mb)")
        chosen.update(files)
    if settings.when_finished and finished:
        reasons.append("the run is complete (when_finished)")
        chosen.update(files)
    ledger = finished and (force or settings.when_finished) and run_dir is not None
    return sorted(chosen), ledger, reasons


class _Mover:
    """Upload, read back, compare, record, then remove: one file at a time."""

    def __init__(self, root: Path, settings: ArchiveSettings, s3: S3Settings | None) -> None:
        self.root = root
        self.settings = settings
        self.store = ObjectStore(settings.s3 or s3)
        self.catalog = Catalog(root)
        self.base = settings.to.rstrip("/")

    def move(self, local: Path, relative: str, campaign: str, kind: str) -> ArchivedObject:
        """``relative``: the catalog's path (events: as in the dataset, ledger: ledger/...)."""
        url = f"{self.base}/{relative if kind == 'ledger' else f'events/{relative}'}"
        digest = sha256_of(local)
        rows = pq.read_metadata(local).num_rows
        self.store.put(local, url, self.settings.storage_class)
        remote_digest, data = self.store.fetch_sha256(url)
        remote_rows = pq.read_metadata(io.BytesIO(data)).num_rows
        if remote_digest != digest or remote_rows != rows:
            raise StorageError(
                f"{url}: verification failed (sha256 {remote_digest[:12]} vs {digest[:12]}, "
                f"rows {remote_rows} vs {rows}); the local copy is kept"
            )
        at = now_iso()
        entry = ArchivedObject(
            path=relative,
            campaign=campaign,
            kind=kind,
            url=url,
            size=local.stat().st_size,
            sha256=digest,
            rows=rows,
            storage_class=self.settings.storage_class,
            archived_at=at,
            class_changed_at=at,
            endpoint_url=self.store.endpoint_url,
            region=self.store.region,
        )
        self.catalog.record([entry])
        local.unlink()
        fsync_path(local.parent)
        return entry


def _prune_empty(folder: Path, stop: Path) -> None:
    while folder != stop and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def archive_campaign(
    campaign: str,
    settings: ArchiveSettings,
    *,
    root: Path,
    run_dir: Path | None = None,
    s3: S3Settings | None = None,
    force: bool = False,
    now: datetime | None = None,
) -> ArchiveResult:
    """Archive what the criteria (or ``force``) select; see the module docstring."""
    if run_dir is not None and (run_dir / MANIFEST).exists():
        sync_ledger(root, run_dir)  # the delivered rows go with the events, not with the ledger
    _drop_leftovers(root, campaign)
    files, ledger, reasons = due_files(
        root, campaign, settings, run_dir=run_dir, now=now, force=force
    )
    result = ArchiveResult(campaign, reasons)
    mover = _Mover(root, settings, s3)
    for path in files:
        entry = mover.move(path, str(path.relative_to(root)), campaign, "events")
        result.events_files += 1
        result.rows += entry.rows
        result.bytes += entry.size
        _prune_empty(path.parent, root)
    if ledger and run_dir is not None:
        result.ledger_files = _archive_ledger(mover, campaign, run_dir)
    return result


def _drop_leftovers(root: Path, campaign: str) -> int:
    """Remove local files a crash left after their archived copy was recorded (same bytes);
    a local file that differs from its archived copy is kept and reported."""
    removed = 0
    for relative, entry in Catalog(root).objects(campaign).items():
        local = root / relative
        if entry.kind != "events" or not local.exists():
            continue
        if sha256_of(local) != entry.sha256:
            raise TrackingError(
                f"{local}: differs from its archived copy {entry.url}; move it away or delete it"
            )
        local.unlink()
        removed += 1
    return removed


def _archive_ledger(mover: _Mover, campaign: str, run_dir: Path) -> int:
    outcomes = run_dir / OUTCOMES
    parts = ledger_parts(outcomes)
    if not parts:
        return 0
    prefix = f"ledger/{campaign}/{source_key(run_dir)}/{OUTCOMES}"
    marker = outcomes / ARCHIVED_MARKER
    urls: list[str] = json.loads(marker.read_text())["objects"] if marker.exists() else []
    recorded = mover.catalog.objects(campaign)
    for part in parts:
        relative = f"{prefix}/{part.name}"
        earlier = recorded.get(relative)
        if earlier is not None and sha256_of(part) == earlier.sha256:
            entry = earlier  # a crash after recording it, before removing it: remove it now
            part.unlink()
            fsync_path(part.parent)
        else:
            entry = mover.move(part, relative, campaign, "ledger")
        if entry.url not in urls:
            urls.append(entry.url)
        write_json_atomic(marker, {"archived_at": now_iso(), "objects": urls})
    for leftover in outcomes.glob("part-*.parquet"):  # parts a merged part covered
        leftover.unlink()
    return len(parts)


def archive_settings_of(settings: ArchiveSettings | None, source: str) -> ArchiveSettings:
    if settings is None:
        raise TrackingError(f"{source}: the spec has no 'archive' section (to: s3://...)")
    return settings


def archive_finished_run(
    spec: CampaignSpec, run_dir: Path, *, root: Path | None = None
) -> ArchiveResult | None:
    """At a run's end (``raymail send`` / ``resume``): archive it if its spec says
    ``when_finished`` and the run is complete; None when there is nothing to do. The
    scheduler does the same for queued runs, and its passes retry what failed here."""
    from raymail.tracking.events import events_root

    settings = spec.archive
    if settings is None or not settings.when_finished or not _run_complete(run_dir):
        return None
    return archive_campaign(
        spec.campaign, settings, root=root or events_root(), run_dir=run_dir, s3=spec.s3
    )
