"""A campaign's feedback at a glance: opens, clicks, unique rates, by domain and by hour.

Rates are per recipient delivered to (the ledger's ``delivered`` rows, brought in by the
sync); without them the rates are None and only counts are given. Bot and proxy hits are
left out unless ``include_bots``, and the number left out is reported, so a reader sees how
much the proxies inflate the raw figures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from raymail.errors import TrackingError
from raymail.routing.rollup import Rollup, domain_labels
from raymail.spec import S3Settings
from raymail.tracking.dataset import load_events
from raymail.tracking.events import events_root


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _unique(frame: pl.DataFrame, kind: str) -> int:
    return frame.filter(pl.col("kind") == kind)["recipient"].n_unique()


def campaign_frame(
    campaign: str, *, root: Path | None = None, archive: bool = True, s3: S3Settings | None = None
) -> pl.DataFrame:
    """Every event of one campaign (bots included, flagged) as a polars frame."""
    table = load_events(root or events_root(), campaigns=[campaign], archive=archive, s3=s3)
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    if frame.is_empty():
        raise TrackingError(f"campaign {campaign!r}: no events in the dataset")
    return frame


def summarize(
    frame: pl.DataFrame, *, include_bots: bool = False, top: int | None = None
) -> dict[str, Any]:
    """The summary of one campaign's events (see the module docstring); ``top``: only the
    busiest domains by name, the rest rolled up by MX host (:func:`domain_rates`)."""
    people = frame if include_bots else frame.filter(~pl.col("bot"))
    delivered = _unique(frame, "delivered")
    opens = people.filter(pl.col("kind") == "open")
    clicks = people.filter(pl.col("kind") == "click")
    unique_opens, unique_clicks = _unique(people, "open"), _unique(people, "click")
    hour = pl.col("at").dt.truncate("1h").alias("hour")
    per_hour = (
        people.filter(pl.col("kind").is_in(["open", "click"]))
        .with_columns(hour)
        .group_by("hour")
        .agg(
            (pl.col("kind") == "open").sum().alias("opens"),
            (pl.col("kind") == "click").sum().alias("clicks"),
        )
        .sort("hour")
    )
    links = (
        clicks.with_columns(pl.coalesce("link", "url").alias("link"))
        .group_by("link")
        .agg(pl.len().alias("clicks"), pl.col("recipient").n_unique().alias("unique_clicks"))
        .sort(["clicks", "link"], descending=[True, False])
    )
    campaigns = frame["campaign"].unique().to_list()
    return {
        "campaign": campaigns[0] if len(campaigns) == 1 else campaigns,
        "include_bots": include_bots,
        "delivered": delivered,
        "opens": opens.height,
        "unique_opens": unique_opens,
        "clicks": clicks.height,
        "unique_clicks": unique_clicks,
        "unique_open_rate": _rate(unique_opens, delivered),
        "unique_click_rate": _rate(unique_clicks, delivered),
        "click_to_open": _rate(unique_clicks, unique_opens),
        "bounces": int((people["kind"] == "bounce").sum()),
        "complaints": int((people["kind"] == "complaint").sum()),
        "unsubscribes": people.filter(pl.col("kind") == "unsubscribe")["recipient"].n_unique(),
        "replies": int((people["kind"] == "reply").sum()),
        "bot_hits_excluded": 0 if include_bots else int(frame["bot"].sum()),
        "bot_reasons": dict(
            frame.filter(pl.col("bot")).group_by("bot_reason").len().sort("bot_reason").iter_rows()
        ),
        "by_domain": domain_rates(frame, top=top, include_bots=include_bots).to_dicts(),
        "by_hour": [
            {"hour": r["hour"].isoformat(), "opens": r["opens"], "clicks": r["clicks"]}
            for r in per_hour.iter_rows(named=True)
        ],
        "links": links.to_dicts(),
    }


def domain_rates(
    frame: pl.DataFrame,
    *,
    top: int | None = 20,
    by: Rollup = "mx_host",
    max_groups: int | None = None,
    include_bots: bool = False,
) -> pl.DataFrame:
    """Delivered, unique opens and clicks and the open rate per domain: the ``top`` domains
    by deliveries, the rest rolled up by MX host (from the ledger) or provider, exactly as
    the routing notebook's figures (None: every domain)."""
    people = frame if include_bots else frame.filter(~pl.col("bot"))
    domain = pl.col("recipient").str.split("@").list.last()
    people = people.with_columns(domain.alias("domain"))
    if top is not None:
        delivered = frame.filter(pl.col("kind") == "delivered").select(
            domain.alias("domain"),
            pl.col("detail").str.json_path_match("$.mx_host").alias("mx_host"),
            pl.lit(1).alias("volume"),
        )
        labels = domain_labels(delivered, top, by=by, max_groups=max_groups)
        people = people.join(labels.select("domain", "label"), on="domain", how="left")
        people = people.with_columns(pl.col("label").fill_null(pl.col("domain")).alias("domain"))

    def unique(kind: str) -> pl.Expr:
        return pl.col("recipient").filter(pl.col("kind") == kind).n_unique()

    return (
        people.group_by("domain")
        .agg(
            unique("delivered").alias("delivered"),
            unique("open").alias("unique_opens"),
            unique("click").alias("unique_clicks"),
            pl.col("recipient").n_unique().alias("recipients"),
        )
        .with_columns(
            pl.when(pl.col("delivered") > 0)
            .then((pl.col("unique_opens") / pl.col("delivered")).round(4))
            .alias("open_rate"),
            pl.col("domain").str.starts_with("other").alias("rolled_up"),
        )
        .sort(["rolled_up", "delivered", "domain"], descending=[False, True, False])
        .drop("rolled_up")
    )


def campaign_summary(
    campaign: str,
    *,
    root: Path | None = None,
    include_bots: bool = False,
    top: int | None = None,
    archive: bool = True,
    s3: S3Settings | None = None,
) -> dict[str, Any]:
    """Load one campaign's events and summarise them."""
    frame = campaign_frame(campaign, root=root, archive=archive, s3=s3)
    return summarize(frame, include_bots=include_bots, top=top)
