""" "Send at 9:00 in each recipient's time zone": one campaign split into per-zone parts.

The recipient list's ``timezone`` column (IANA names) groups the rows; each zone's rows are
written to a list of their own and queued as one entry due at the wall-clock time in that
zone. Rows without a zone use the default one; a row whose zone is unknown is not sent and
goes to the group's ``rejects.parquet`` with its row number and the reason. Every part is
an ordinary run, so its own intake validates its rows as any list's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl

from raymail.errors import QueueError
from raymail.queue.when import wall_time_in, zone

TIMEZONE_COLUMN = "timezone"
REJECTS = "rejects.parquet"


@dataclass(frozen=True)
class ZonePart:
    """The recipients of one time zone and when they are due."""

    zone: str
    path: Path
    rows: int
    due_at: float


def split_by_zone(
    recipients: str, at: str, default_zone: str, out_dir: Path, *, now: float | None = None
) -> tuple[list[ZonePart], int]:
    """Write one list per zone under ``out_dir``; returns the parts and the rows rejected."""
    table = _read(recipients)
    if TIMEZONE_COLUMN not in table.columns:
        raise QueueError(
            f"{recipients}: per-recipient time zones need a '{TIMEZONE_COLUMN}' column"
        )
    default = zone(default_zone)
    table = table.with_row_index("_row").with_columns(
        pl.col(TIMEZONE_COLUMN).fill_null("").str.strip_chars().alias("_zone")
    )
    names = table.get_column("_zone").unique().to_list()
    known: dict[str, ZoneInfo] = {}
    unknown: list[str] = []
    for name in names:
        if not name:
            known[name] = default
            continue
        try:
            known[name] = zone(name)
        except QueueError:
            unknown.append(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    rejected = table.filter(pl.col("_zone").is_in(unknown))
    if rejected.height:
        pl.DataFrame(
            {
                "file": [recipients] * rejected.height,
                "row": rejected.get_column("_row").cast(pl.Int64) + 1,
                "field": [TIMEZONE_COLUMN] * rejected.height,
                "reason": [f"unknown time zone {z!r}" for z in rejected.get_column("_zone")],
            }
        ).write_parquet(out_dir / REJECTS)
    # Rows of the default zone and rows naming it go together.
    by_key: dict[str, list[str]] = {}
    for name, where in known.items():
        by_key.setdefault(str(where.key), []).append(name)
    parts = []
    for key, members in sorted(by_key.items()):
        rows = table.filter(pl.col("_zone").is_in(members)).drop(["_row", "_zone"])
        path = out_dir / f"{_slug(key)}.parquet"
        rows.write_parquet(path)
        parts.append(ZonePart(key, path, rows.height, wall_time_in(at, ZoneInfo(key), now=now)))
    return parts, rejected.height


def _read(recipients: str) -> pl.DataFrame:
    if "://" in recipients:
        raise QueueError(f"{recipients}: per-recipient time zones need a local list")
    path = Path(recipients)
    try:
        if path.suffix.lower() == ".parquet":
            return pl.read_parquet(path).cast(pl.String)
        return pl.read_csv(path, infer_schema=False)
    except FileNotFoundError:
        raise QueueError(f"{recipients}: recipient list not found") from None
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise QueueError(f"{recipients}: cannot read the list: {exc}") from None


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key)
