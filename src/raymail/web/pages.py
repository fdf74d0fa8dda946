"""The few HTML pages people see: small, self-contained, no script, no cookie."""

from __future__ import annotations

import html
from typing import Final

__all__ = ["landing_page", "message_page"]

_STYLE: Final = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;"
    "color:#222}button{font-size:1.1rem;padding:.6rem 1.4rem;cursor:pointer}"
)


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def landing_page(campaign: str) -> str:
    """GET /u/TOKEN: one button; nothing happens until it is pressed (scanners follow links).

    The form has no action: it posts back to the page's own URL, whatever path prefix a
    load balancer puts in front of the service."""
    return _page(
        "Unsubscribe",
        "<h1>Unsubscribe</h1>"
        f"<p>Stop receiving messages of <b>{html.escape(campaign)}</b>?</p>"
        '<form method="post">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit" id="unsubscribe">Unsubscribe</button></form>',
    )


def message_page(title: str, text: str) -> str:
    """A result or error page: a heading and one paragraph."""
    return _page(
        title, f'<h1>{html.escape(title)}</h1><p id="result">{html.escape(text, quote=False)}</p>'
    )
