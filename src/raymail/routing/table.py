"""The routing table: a Parquet dataset kept across runs, one row per (server, domain, MX).

Layout of the table directory (default ``$RAYMAIL_HOME/routing``)::

    routes.parquet        the table: evidence sums, latest probe, estimates, mark
    probes/part-*.parquet every probe result, failures with their reason included
    .lock                 flock'd while a run merges what it learned

Sums are stored decayed to ``decayed_to``; reading decays them on to now, so evidence
loses half its weight every half-life and stale pairs look unknown again (and get
explored). Merging is read-decay-add-write under the lock, so concurrent campaigns add to
each other's evidence instead of overwriting it.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from raymail._io import flocked, write_atomic
from raymail.routing.model import PAIR, SUMS, network_of
from raymail.spec import raymail_home

ROUTES = "routes.parquet"
PROBES = "probes"
_LOCK = ".lock"
MIN_RECIPIENTS = 5.0  # evidence below this is not enough to mark a pair
PREFERRED_WITHIN = 1.25  # times the best expected time per recipient of the domain
UNACCEPTABLE_BEYOND = 4.0
UNACCEPTABLE_EXCESS_BAD = 0.3  # deferral + failure rate above the domain's best
_TS = pl.Datetime("us", "UTC")
PROBE_COLUMNS: dict[str, Any] = {
    "rtt_ms": pl.Float64,
    "hops": pl.Int32,
    "probe_path": pl.String,
    "probe_error": pl.String,
    "probed_at": _TS,
}
STORED: dict[str, Any] = {
    **dict.fromkeys(PAIR, pl.String),
    "network": pl.String,
    **dict.fromkeys(SUMS, pl.Float64),
    "updated_at": _TS,  # when evidence last arrived
    "decayed_to": _TS,  # the time the sums are decayed to
    **PROBE_COLUMNS,
}


def default_table_dir() -> Path:
    return raymail_home() / "routing"


def empty_stored() -> pl.DataFrame:
    return pl.DataFrame(schema=STORED)


def probes_by_route(frame: pl.DataFrame) -> pl.DataFrame:
    """Probe rows keyed like evidence: ``server`` becomes the source address when the
    probe had one (see ``model.route_key``)."""
    return frame.with_columns(
        pl.coalesce(pl.col("source_address"), pl.col("server")).alias("server")
    )


def decay(frame: pl.DataFrame, half_life_s: float, now: datetime) -> pl.DataFrame:
    """Sums multiplied by 0.5 ** (age / half-life), age counted from ``decayed_to``."""
    if frame.is_empty():
        return frame
    age = (pl.lit(now).dt.cast_time_unit("us") - pl.col("decayed_to")).dt.total_microseconds()
    factor = (0.5 ** (age.cast(pl.Float64).clip(lower_bound=0) / 1e6 / half_life_s)).alias("_f")
    return (
        frame.with_columns(factor)
        .with_columns([pl.col(c) * pl.col("_f") for c in SUMS])
        .with_columns(pl.lit(now).dt.cast_time_unit("us").alias("decayed_to"))
        .drop("_f")
    )


def derive(frame: pl.DataFrame) -> pl.DataFrame:
    """Estimates from the sums: rates per connection, latencies, deferral and failure."""
    fates = pl.col("accepted") + pl.col("deferred") + pl.col("failed")
    return frame.with_columns(
        (pl.col("recipients") / pl.col("busy_s")).alias("throughput_per_connection"),
        (1000 * pl.col("transaction_s") / pl.col("transactions")).alias("latency_ms"),
        (1000 * pl.col("busy_s") / pl.col("recipients")).alias("ms_per_recipient"),
        (1000 * pl.col("connect_s") / pl.col("connects")).alias("connect_ms"),
        (pl.col("deferred") / fates).alias("deferral_rate"),
        (pl.col("failed") / fates).alias("failure_rate"),
        pl.col("transactions").alias("samples"),
    ).with_columns(pl.col(pl.Float64).fill_nan(None))


def mark(frame: pl.DataFrame) -> pl.DataFrame:
    """preferred / acceptable / unacceptable per row, against the best row of its domain.

    Unacceptable: deferrals and failures well above the domain's best server, an expected
    time per recipient many times the best, or (without delivery evidence) an MX the
    server could not reach. Preferred: within a quarter of the best. Rows without enough
    evidence otherwise stay acceptable.
    """
    if frame.is_empty():
        return frame.with_columns(pl.lit(None, pl.String).alias("mark"))
    bad = (pl.col("deferral_rate").fill_null(0) + pl.col("failure_rate").fill_null(0)).alias("_bad")
    enough = pl.col("recipients") >= MIN_RECIPIENTS
    work = frame.with_columns(bad).with_columns(
        (pl.col("ms_per_recipient") / (1 - pl.col("_bad").clip(upper_bound=0.9))).alias("_eff")
    )
    work = work.with_columns(
        pl.when(enough).then(pl.col("_bad")).min().over("domain").alias("_best_bad")
    )
    fine = enough & (pl.col("_bad") - pl.col("_best_bad") < UNACCEPTABLE_EXCESS_BAD)
    work = work.with_columns(pl.when(fine).then(pl.col("_eff")).min().over("domain").alias("_best"))
    unreachable = pl.col("probe_error").fill_null("").str.starts_with("unreachable")
    return work.with_columns(
        pl.when(~enough & unreachable)
        .then(pl.lit("unacceptable"))
        .when(~enough)
        .then(pl.lit("acceptable"))
        .when(pl.col("_bad") - pl.col("_best_bad") >= UNACCEPTABLE_EXCESS_BAD)
        .then(pl.lit("unacceptable"))
        .when(pl.col("_eff") >= UNACCEPTABLE_BEYOND * pl.col("_best"))
        .then(pl.lit("unacceptable"))
        .when(pl.col("_eff") <= PREFERRED_WITHIN * pl.col("_best"))
        .then(pl.lit("preferred"))
        .otherwise(pl.lit("acceptable"))
        .alias("mark")
    ).drop("_bad", "_eff", "_best_bad", "_best")


class RoutingTable:
    """The table directory: read (decayed to now), merge a run's evidence, log probes."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path).expanduser() if path else default_table_dir()

    @property
    def routes_path(self) -> Path:
        return self.path / ROUTES

    def read_stored(self) -> pl.DataFrame:
        """The rows as stored (sums decayed to each row's ``decayed_to``)."""
        if not self.routes_path.exists():
            return empty_stored()
        return pl.read_parquet(self.routes_path).cast(STORED)  # type: ignore[arg-type]

    def load(self, half_life_s: float, now: datetime | None = None) -> pl.DataFrame:
        """The table decayed to ``now``, with estimates and marks."""
        now = now or datetime.now(UTC)
        return mark(derive(decay(self.read_stored(), half_life_s, now)))

    def merge(
        self,
        evidence: pl.DataFrame,
        probes: pl.DataFrame | None,
        half_life_s: float,
        now: datetime | None = None,
    ) -> pl.DataFrame:
        """Add a run's new evidence (sums) and probe results; return the new table."""
        now = now or datetime.now(UTC)
        self.path.mkdir(parents=True, exist_ok=True)
        with self._locked():
            current = decay(self.read_stored(), half_life_s, now)
            merged = _add(current, evidence, now)
            if probes is not None and not probes.is_empty():
                merged = _with_probes(merged, probes, now)
                self._log_probes(probes)
            _write_atomic(merged.select(list(STORED)), self.routes_path)
        return mark(derive(merged))

    def probe_log(self) -> pl.DataFrame:
        """Every probe result kept (empty when none)."""
        parts = sorted((self.path / PROBES).glob("part-*.parquet"))
        return pl.read_parquet(parts) if parts else pl.DataFrame()

    def _log_probes(self, probes: pl.DataFrame) -> None:
        folder = self.path / PROBES
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        _write_atomic(probes, folder / name)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with flocked(self.path / _LOCK):
            yield


def _add(current: pl.DataFrame, evidence: pl.DataFrame, now: datetime) -> pl.DataFrame:
    """Outer-add new sums to the current rows, keyed by (server, domain, mx_host)."""
    if evidence.is_empty():
        return current
    new = evidence.group_by(list(PAIR)).agg([pl.col(c).sum() for c in SUMS])
    joined = current.join(new, on=list(PAIR), how="full", coalesce=True, suffix="_new")
    stamp = pl.lit(now).dt.cast_time_unit("us")
    fresh = pl.col("transactions_new").is_not_null()
    return joined.with_columns(
        [pl.col(c).fill_null(0) + pl.col(f"{c}_new").fill_null(0) for c in SUMS]
        + [
            pl.when(fresh).then(stamp).otherwise(pl.col("updated_at")).alias("updated_at"),
            stamp.alias("decayed_to"),
            pl.col("network").fill_null(
                pl.col("mx_host").map_elements(network_of, return_dtype=pl.String)
            ),
        ]
    ).select(list(STORED))


def _with_probes(table: pl.DataFrame, probes: pl.DataFrame, now: datetime) -> pl.DataFrame:
    """Each (server, domain, mx_host) row takes its latest probe; rows are made for
    probed pairs that have no evidence yet."""
    latest = (
        probes.filter(pl.col("domain").is_not_null() & pl.col("mx_host").is_not_null())
        .sort("at")
        .group_by(list(PAIR))
        .last()
        .select(
            *PAIR,
            pl.col("rtt_ms").alias("rtt_ms_p"),
            pl.col("hops").cast(pl.Int32).alias("hops_p"),
            pl.col("path").alias("probe_path_p"),
            pl.col("error").alias("probe_error_p"),
            pl.col("at").cast(_TS).alias("probed_at_p"),
        )
    )
    if latest.is_empty():
        return table
    joined = table.join(latest, on=list(PAIR), how="full", coalesce=True)
    probed = pl.col("probed_at_p").is_not_null()
    networks = pl.col("mx_host").map_elements(network_of, return_dtype=pl.String)
    return joined.with_columns(
        [pl.col(c).fill_null(0.0) for c in SUMS]
        + [
            pl.when(probed).then(pl.col(f"{c}_p")).otherwise(pl.col(c)).alias(c)
            for c in PROBE_COLUMNS
        ]
        + [
            pl.col("decayed_to").fill_null(pl.lit(now).dt.cast_time_unit("us")),
            pl.col("network").fill_null(networks),
        ]
    ).select(list(STORED))


def _write_atomic(frame: pl.DataFrame, path: Path) -> None:
    write_atomic(path, lambda tmp: frame.write_parquet(tmp, compression="zstd"))
