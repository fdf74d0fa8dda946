"""The events as one Arrow table: local parts plus archived objects, scanner bursts flagged.

Archived objects are read in place through pyarrow's S3 filesystem (DuckDB's httpfs is not
needed), so a query over old campaigns works without copying anything back; each object a
query reads is marked read in the catalog, which the tier rules use to warm it up again.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from raymail.errors import StorageError, TrackingError, first_line
from raymail.spec import S3Settings
from raymail.tracking.bots import flag_scanner_bursts
from raymail.tracking.catalog import ArchivedObject, Catalog
from raymail.tracking.events import TRACKING_SCHEMA, event_parts
from raymail.tracking.objectstore import FROZEN_CLASSES, ObjectStore, split_url, store_for


def local_files(root: Path, campaigns: Iterable[str] | None = None) -> list[Path]:
    """Local part files not (yet) replaced by an archived copy."""
    archived = set(Catalog(root).objects())
    wanted = list(campaigns) if campaigns is not None else [None]
    files = [p for c in wanted for p in event_parts(root, c)]
    return [p for p in files if str(p.relative_to(root)) not in archived]


def archived_events(root: Path, campaigns: Iterable[str] | None = None) -> list[ArchivedObject]:
    """The catalog's events objects (of some campaigns, or all)."""
    wanted = set(campaigns) if campaigns is not None else None
    return [
        o
        for o in Catalog(root).objects().values()
        if o.kind == "events" and (wanted is None or o.campaign in wanted)
    ]


def _read_archived(objects: list[ArchivedObject], s3: S3Settings | None) -> list[pa.Table]:
    tables: list[pa.Table] = []
    stores: dict[tuple[str | None, str | None], ObjectStore] = {}
    for obj in objects:
        if obj.storage_class in FROZEN_CLASSES and not obj.restoring:
            raise TrackingError(
                f"{obj.url}: archived in {obj.storage_class}, which cannot be read in place; "
                f"run 'raymail archive tier {obj.campaign} --to STANDARD' first"
            )
        key = (obj.endpoint_url, obj.region)
        if key not in stores:
            stores[key] = store_for(obj.endpoint_url, obj.region, s3)
        store = stores[key]
        bucket, path = split_url(obj.url)
        try:
            tables.append(
                pq.read_table(f"{bucket}/{path}", filesystem=store.filesystem()).cast(
                    TRACKING_SCHEMA
                )
            )
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(
                f"{obj.url}: cannot read archived events: {first_line(exc)}"
            ) from None
    return tables


def load_events(
    root: Path,
    *,
    campaigns: Iterable[str] | None = None,
    archive: bool = True,
    s3: S3Settings | None = None,
    flag_bursts: bool = True,
) -> pa.Table:
    """Every event (of some campaigns), local and archived, in the dataset's schema."""
    wanted = list(campaigns) if campaigns is not None else None
    tables = [pq.read_table(p).cast(TRACKING_SCHEMA) for p in local_files(root, wanted)]
    if archive:
        objects = archived_events(root, wanted)
        tables.extend(_read_archived(objects, s3))
        Catalog(root).mark_read([o.path for o in objects])
    table = pa.concat_tables(tables) if tables else TRACKING_SCHEMA.empty_table()
    if not flag_bursts:
        return table
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return flag_scanner_bursts(frame).to_arrow().cast(TRACKING_SCHEMA)
