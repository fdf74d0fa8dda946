"""The campaigns the web service answers for: tokens, recipients, link tables, lists.

A thin view over the returns server's :class:`~raymail.returns.registry.CampaignRegistry`
(campaign secrets and tags, run directories, recipient tags resolved through the run's
``recipients.parquet``), plus what only the web side needs from a campaign's spec: its
HTML link table (for click redirects) and the list it was sent to.

The request path only *verifies* tokens (two keyed hashes per known secret); resolving a
recipient tag to the address needs the run's recipient list and happens in the applier.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from raymail.compose.links import Link, link_table
from raymail.compose.verp import TokenKind, decode_link_token, decode_token
from raymail.errors import RaymailError
from raymail.returns.registry import CampaignRegistry, KnownCampaign
from raymail.run.rundir import RunDir
from raymail.spec import CampaignSpec
from raymail.web.config import WebConfig

__all__ = ["CampaignBook", "Hit"]

MAX_TOKEN_CHARS = 8192


@dataclass(frozen=True, slots=True)
class Hit:
    """A verified token: whose, and (for a click) where to."""

    campaign: str
    kind: TokenKind
    rtag: str | None
    link: Link | None = None
    url: str | None = None


class CampaignBook:
    """Campaigns by token; specs loaded lazily from run directories and cached."""

    def __init__(self, config: WebConfig) -> None:
        self.registry = CampaignRegistry(
            [KnownCampaign.from_spec(s) for s in config.specs],
            [Path(p).expanduser() for p in config.runs],
        )
        self._specs: dict[str, CampaignSpec] = {s.campaign: s for s in config.specs}
        self._links: dict[str, list[Link]] = {}
        self._lock = threading.Lock()

    def spec(self, campaign: str) -> CampaignSpec | None:
        with self._lock:
            found = self._specs.get(campaign)
        if found is not None:
            return found
        for known in self.registry.known(campaign):
            if known.run_dir is None:
                continue
            try:
                found = RunDir(known.run_dir).spec()
            except RaymailError:
                continue
            with self._lock:
                self._specs[campaign] = found
            return found
        return None

    def links(self, campaign: str) -> list[Link]:
        with self._lock:
            cached = self._links.get(campaign)
        if cached is None:
            spec = self.spec(campaign)
            cached = link_table(spec.html if spec is not None else None)
            with self._lock:
                self._links[campaign] = cached
        return cached

    def verify(self, token: str, kind: TokenKind) -> Hit | None:
        """The campaign and recipient tag of a genuine token of ``kind``; else None."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        for secret in self.registry.secrets():
            link_token = None
            if kind is TokenKind.CLICK:
                link_token = decode_link_token(token, secret)
                if link_token is None:
                    continue
                verified = link_token.token
            else:
                decoded = decode_token(token, secret)
                if decoded is None or decoded.kind is not kind:
                    continue
                verified = decoded
            if verified.recipient_tag is None:
                return None  # campaign-only tokens name nobody to unsubscribe or track
            campaign = self.registry.campaign_for(secret, verified.campaign_tag)
            if campaign is None:
                continue
            if link_token is None:
                return Hit(campaign, kind, verified.recipient_tag)
            if link_token.url is not None:
                return Hit(campaign, kind, verified.recipient_tag, None, link_token.url)
            table = self.links(campaign)
            index = link_token.link
            if index is None or index >= len(table):
                return None
            return Hit(campaign, kind, verified.recipient_tag, table[index], table[index].url)
        return None

    def recipient(self, campaign: str, tag: str | None) -> str | None:
        return self.registry.recipient(campaign, tag)

    def list_of(self, campaign: str) -> str | None:
        spec = self.spec(campaign)
        return None if spec is None else spec.list_id
