"""Open and click tracking in the HTML part: the campaign's link table and the rewriting.

With ``tracking: {clicks: true}`` every ``<a href="http...">`` of the rendered HTML points at
the web service's ``/c/TOKEN`` instead; with ``opens: true`` a 1x1 pixel ``/o/TOKEN.gif``
goes before ``</body>``. The text part is never touched.

The redirect target is never taken from the request: a link written literally in the HTML
template is an entry of the campaign's *link table* (its index travels in the signed
token; the web service computes the same table from the same template), and a link whose
target is rendered per recipient (``href="https://shop.example/?u={{ id }}"``) travels
inside the signed token itself. Links to the web service itself (the unsubscribe URL) and
non-http links (mailto:, tel:, anchors) stay as they are.

A link's *name* is its ``data-link`` attribute (``<a data-link="pricing" href=...>``), else
``link-N`` by order of first appearance; follow-up rules and analytics refer to it.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Final

from raymail.compose.verp import TokenKind, TokenSigner
from raymail.spec import CampaignSpec

__all__ = ["HtmlTracker", "Link", "link_table"]

_ANCHOR: Final = re.compile(r"<a\b[^>]*>", re.IGNORECASE)
_HREF: Final = re.compile(r"""(\bhref\s*=\s*)(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
_NAME: Final = re.compile(r"""\bdata-link\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
_BODY_END: Final = re.compile(r"</body\s*>", re.IGNORECASE)
_TEMPLATE_SYNTAX: Final = ("{{", "{%", "{#")


@dataclass(frozen=True, slots=True)
class Link:
    """One literal link of a campaign's HTML template."""

    index: int
    name: str
    url: str


def _anchors(source: str) -> list[tuple[str, str | None]]:
    """(href, data-link name) of each anchor with an href, in order."""
    found = []
    for tag in _ANCHOR.findall(source):
        href = _HREF.search(tag)
        if href is None:
            continue
        name = _NAME.search(tag)
        value = href.group(2) if href.group(2) is not None else href.group(3)
        label = None if name is None else (name.group(1) or name.group(2) or None)
        found.append((html.unescape(value).strip(), label))
    return found


def _trackable(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def link_table(template: str | None) -> list[Link]:
    """The literal http(s) links of an HTML template, numbered by first appearance."""
    table: dict[str, Link] = {}
    for url, name in _anchors(template or ""):
        if not _trackable(url) or any(s in url for s in _TEMPLATE_SYNTAX) or url in table:
            continue
        index = len(table)
        table[url] = Link(index, name or f"link-{index + 1}", url)
    return list(table.values())


class HtmlTracker:
    """Rewrites one campaign's rendered HTML per recipient (built once per delivery server)."""

    def __init__(self, spec: CampaignSpec, signer: TokenSigner) -> None:
        if spec.web is None:
            raise ValueError("tracking needs the spec's web section")
        self._signer = signer
        self._base = spec.web.base_url
        self._opens = spec.tracking.opens
        self._clicks = spec.tracking.clicks
        self._by_url = {link.url: link.index for link in link_table(spec.html)}

    @property
    def active(self) -> bool:
        return self._opens or self._clicks

    def apply(self, rendered: str, email: str) -> str:
        """The recipient's HTML with links rewritten and the pixel added, as configured."""
        if self._clicks:
            rendered = _ANCHOR.sub(lambda m: self._anchor(m.group(0), email), rendered)
        if self._opens:
            token = self._signer.token(TokenKind.OPEN, email)
            pixel = (
                f'<img src="{self._base}/o/{token}.gif" width="1" height="1" alt="" '
                'style="display:none;border:0">'
            )
            ends = list(_BODY_END.finditer(rendered))
            if ends:
                at = ends[-1].start()
                rendered = rendered[:at] + pixel + rendered[at:]
            else:
                rendered = rendered.rstrip("\r\n") + pixel
        return rendered

    def _anchor(self, tag: str, email: str) -> str:
        href = _HREF.search(tag)
        if href is None:
            return tag
        raw = href.group(2) if href.group(2) is not None else href.group(3)
        url = html.unescape(raw).strip()
        if not _trackable(url) or url.startswith(self._base + "/"):
            return tag
        index = self._by_url.get(url)
        token = (
            self._signer.link_token(email, index)
            if index is not None
            else self._signer.link_token(email, 0, url)
        )
        new = f'{href.group(1)}"{self._base}/c/{token}"'
        return tag[: href.start()] + new + tag[href.end() :]
