"""Hits that are not a person: image proxies that pre-fetch the open pixel, link scanners.

Such hits are kept (they prove delivery, and a proxy open of a real reader is still a
read) but flagged, and analytics leave them out unless asked. Two rules:

- per hit, at write time (:func:`flag_hit`), from the user agent and the client address;
- per message, at analysis time (:func:`flag_scanner_bursts`): clicks of one message on two
  or more different links, each within ``window_s`` (1 s) of the one before, are a scanner
  following every link (no person clicks two links within a second).

Sources of the lists (public, checked 2025; extend them with ``extra_*`` when a new proxy
shows up in the data):

- Gmail's image proxy: requests carry ``... (via ggpht.com GoogleImageProxy)`` in the user
  agent (Google's 2013 announcement of image proxying in Gmail; the UA is recorded in the
  browscap and ua-parser projects' user-agent lists).
- Yahoo Mail's image proxy: ``YahooMailProxy`` in the user agent (Yahoo help article
  SLN28749, "Yahoo Mail proxy").
- Apple Mail Privacy Protection (iOS 15 / macOS 12): Apple's servers fetch remote content
  through proxies with the bare user agent ``Mozilla/5.0``; Apple's own egress is in
  17.0.0.0/8 (ARIN: Apple Inc.), and MPP also egresses through the iCloud Private Relay
  ranges Apple publishes (https://mask-api.icloud.com/egress-ip-ranges.csv), so the bare
  UA alone flags an open (ESP write-ups, e.g. SocketLabs' "Identifying Apple MPP opens").
- Link scanners by user agent: HTTP libraries and headless browsers (curl, Wget,
  python-requests, aiohttp, Go-http-client, Java, okhttp, HeadlessChrome, PhantomJS),
  self-declared bots (``bot``, ``crawler``, ``spider``, ``preview``: Slackbot,
  facebookexternalhit, Twitterbot, ...) and mail security gateways that name themselves
  (Barracuda, Proofpoint, Mimecast, "Microsoft Office Protection" / Safe Links).
- Scanner networks: Google's crawler range 66.249.64.0/19 (Google's published
  googlebot.json), Proofpoint's mail-protection ranges 148.163.128.0/19, 67.231.144.0/20
  and 205.220.160.0/19 (the addresses of pphosted.com), Mimecast's US gateways
  205.139.110.0/23 and 207.211.30.0/23 (Mimecast's published inbound ranges).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final

import polars as pl

GOOGLE_IMAGE_PROXY: Final = "google_image_proxy"
YAHOO_IMAGE_PROXY: Final = "yahoo_image_proxy"
APPLE_MPP: Final = "apple_mpp"
SCANNER_AGENT: Final = "scanner_agent"
SCANNER_NETWORK: Final = "scanner_network"
CLICK_BURST: Final = "click_burst"

_IMAGE_PROXIES: Final = (
    (re.compile(r"GoogleImageProxy|via ggpht\.com", re.IGNORECASE), GOOGLE_IMAGE_PROXY),
    (re.compile(r"YahooMailProxy", re.IGNORECASE), YAHOO_IMAGE_PROXY),
)
_APPLE_BARE_AGENT: Final = "mozilla/5.0"
APPLE_NETWORKS: Final = ("17.0.0.0/8",)

SCANNER_AGENTS: Final = (
    r"\bbot\b|bot/|crawler|spider|preview",
    r"curl/|wget/|python-requests|python-urllib|aiohttp|httpx|go-http-client|java/|okhttp",
    r"headlesschrome|phantomjs|slackbot|facebookexternalhit|twitterbot|linkedinbot",
    r"barracuda|proofpoint|mimecast|microsoft office protection|safelinks|urldefense",
)
SCANNER_NETWORKS: Final = (
    "66.249.64.0/19",  # Google crawlers
    "148.163.128.0/19",  # Proofpoint
    "67.231.144.0/20",  # Proofpoint
    "205.220.160.0/19",  # Proofpoint
    "205.139.110.0/23",  # Mimecast (US)
    "207.211.30.0/23",  # Mimecast (US)
)

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(cidrs: Iterable[str]) -> tuple[_Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


_SCANNER_AGENT_RE: Final = re.compile("|".join(SCANNER_AGENTS), re.IGNORECASE)
_SCANNER_NETS: Final = _networks(SCANNER_NETWORKS)
_APPLE_NETS: Final = _networks(APPLE_NETWORKS)


def _in(ip: str | None, networks: tuple[_Network, ...]) -> bool:
    if not ip:
        return False
    try:
        address = ipaddress.ip_address(ip.strip())
    except ValueError:
        return False
    return any(address in net for net in networks)


def flag_hit(
    kind: str,
    user_agent: str | None,
    ip: str | None,
    *,
    extra_agents: Iterable[str] = (),
    extra_networks: Iterable[str] = (),
) -> str | None:
    """Why this hit looks automated (a reason string), or None for a person.

    Opens are checked against image proxies, clicks against link scanners; a scanner
    agent or network flags any kind (a scanner may fetch the pixel too).
    """
    agent = (user_agent or "").strip()
    if kind == "open":
        for pattern, reason in _IMAGE_PROXIES:
            if pattern.search(agent):
                return reason
        if agent.lower() == _APPLE_BARE_AGENT or (not agent and _in(ip, _APPLE_NETS)):
            return APPLE_MPP
    extra = tuple(extra_agents)
    if _SCANNER_AGENT_RE.search(agent) or any(re.search(p, agent, re.IGNORECASE) for p in extra):
        return SCANNER_AGENT
    if _in(ip, _SCANNER_NETS) or _in(ip, _networks(extra_networks)):
        return SCANNER_NETWORK
    return None


def flag_scanner_bursts(frame: pl.DataFrame, *, window_s: float = 1.0) -> pl.DataFrame:
    """``frame`` with clicks of link-scanner bursts flagged (bot, bot_reason=click_burst).

    A message is its ``message_id``, else (campaign, recipient). Its clicks, in time order,
    form a burst while each follows the one before within ``window_s``; a burst over two or
    more different links is a scanner. Hits already flagged keep their first reason.
    """
    if frame.is_empty():
        return frame
    window = pl.duration(microseconds=int(window_s * 1_000_000))
    message = pl.coalesce(
        pl.col("message_id"), pl.col("campaign") + pl.lit("\x00") + pl.col("recipient")
    )
    indexed = frame.with_row_index("__n")
    # Sorted by message and time, a burst starts at a new message or after a gap > window:
    # a running sum of those starts numbers the bursts (no per-group window functions).
    clicks = (
        indexed.filter(pl.col("kind") == "click")
        .select("__n", "at", message.alias("__msg"), pl.coalesce("link", "url").alias("__link"))
        .sort("__msg", "at")
    )
    starts = (pl.col("__msg") != pl.col("__msg").shift(1)).fill_null(True) | (
        (pl.col("at") - pl.col("at").shift(1)) > window
    ).fill_null(True)
    bursts = clicks.with_columns(starts.cum_sum().alias("__burst"))
    scanners = (
        bursts.group_by("__burst")
        .agg(pl.col("__link").n_unique().alias("__k"))
        .filter(pl.col("__k") >= 2)
    )
    clicks = bursts.join(scanners, on="__burst", how="semi").select(
        "__n", pl.lit(True).alias("__scan")
    )
    marked = indexed.join(clicks, on="__n", how="left").sort("__n")
    scan = pl.col("__scan").fill_null(False)
    return marked.with_columns(
        (pl.col("bot") | scan).alias("bot"),
        pl.when(pl.col("bot_reason").is_null() & scan)
        .then(pl.lit(CLICK_BURST))
        .otherwise(pl.col("bot_reason"))
        .alias("bot_reason"),
    ).drop("__n", "__scan")
