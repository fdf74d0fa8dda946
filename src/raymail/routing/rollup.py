"""Top domains by volume, the rest rolled up by MX host (or provider): figures that stay
readable after runs over thousands of domains (one row per domain made a 776 x 30,296 px
map). Used by the routing notebook's figures and the campaign analytics notebook."""

from __future__ import annotations

from typing import Literal

import polars as pl

from raymail.errors import RoutingError

Rollup = Literal["mx_host", "provider"]


def provider_of(mx_host: pl.Expr) -> pl.Expr:
    """The MX host's last two labels (``gmail-smtp-in.l.google.com`` -> ``google.com``)."""
    labels = mx_host.str.strip_chars_end(".").str.to_lowercase().str.split(".")
    return labels.list.slice(-2, 2).list.join(".")


def domain_labels(
    volume: pl.DataFrame,
    top: int,
    *,
    by: Rollup = "mx_host",
    max_groups: int | None = None,
    other: str = "other",
) -> pl.DataFrame:
    """``domain -> label, rolled_up, volume``: the ``top`` domains by volume keep their
    name; every other one is labelled ``other @ <its busiest MX host>`` (or provider). Of
    those groups the ``max_groups`` largest (default: ``top``) stay apart and the rest
    become one ``other`` row, so a figure has at most ``top + max_groups + 1`` rows
    however many domains and MX hosts there are.

    ``volume`` has columns domain, mx_host (null allowed) and volume (any number).
    """
    if top < 0 or (max_groups is not None and max_groups < 0):
        raise RoutingError(f"top and max_groups: must be >= 0 (got {top}, {max_groups})")
    missing = {"domain", "mx_host", "volume"} - set(volume.columns)
    if missing:
        raise RoutingError(f"domain_labels: missing columns {sorted(missing)}")
    per_domain = (
        volume.group_by("domain", "mx_host")
        .agg(pl.col("volume").sum())
        .sort(["volume", "mx_host"], descending=[True, False], nulls_last=True)
        .group_by("domain", maintain_order=True)
        .agg(pl.col("volume").sum(), pl.col("mx_host").first())
    )
    ranked = per_domain.sort(["volume", "domain"], descending=[True, False]).with_row_index("rank")
    host = pl.col("mx_host") if by == "mx_host" else provider_of(pl.col("mx_host"))
    grouped = ranked.with_columns(
        (pl.col("rank") >= top).alias("rolled_up"),
        (pl.lit(f"{other} @ ") + host.fill_null("unknown MX")).alias("group"),
    )
    groups = (
        grouped.filter(pl.col("rolled_up"))
        .group_by("group")
        .agg(pl.col("volume").sum())
        .sort(["volume", "group"], descending=[True, False])
        .head(top if max_groups is None else max_groups)
    )
    label = (
        pl.when(~pl.col("rolled_up"))
        .then(pl.col("domain"))
        .when(pl.col("group").is_in(groups["group"].implode()))
        .then(pl.col("group"))
        .otherwise(pl.lit(other))
    )
    return grouped.select("domain", label.alias("label"), "rolled_up", "volume")
