"""Link rewriting and tracking tokens at render time (compose/), no service needed."""

from __future__ import annotations

import email
import re
from typing import Any

import pytest

from raymail.compose.links import link_table
from raymail.compose.message import MessageTemplate
from raymail.compose.verp import TokenKind, TokenSigner, decode_link_token, decode_token
from raymail.errors import SpecError, TemplateError
from raymail.spec import parse_spec

SECRET = "links-secret"
HTML = (
    '<p><a data-link="pricing" href="https://shop.test/p?a=1&amp;b=2">p</a>'
    '<a href="https://shop.test/p?a=1&amp;b=2">again</a>'
    '<a href="https://shop.test/u/{{ id }}">mine</a><a href="mailto:x@shop.test">m</a>'
    '<a href="{{ unsubscribe_url }}">unsubscribe</a></p>'
)


def _spec(**extra: Any) -> Any:
    data = {
        "campaign": "links",
        "sender": "news@shop.test",
        "subject": "Hi",
        "text": "See https://shop.test/p?a=1\n",
        "html": HTML,
        "recipients": "x.csv",
        "verp_secret": SECRET,
        "web": {"base_url": "https://mail.shop.test"},
        **extra,
    }
    return parse_spec(data, "links-spec")


def _parts(message: bytes) -> dict[str, str]:
    parsed = email.message_from_bytes(message)
    return {
        p.get_content_type(): p.get_payload(decode=True).decode()  # type: ignore[union-attr]
        for p in parsed.walk()
        if not p.is_multipart()
    }


def test_link_table_numbers_literal_links_once() -> None:
    table = link_table(HTML)
    assert [(link.index, link.name, link.url) for link in table] == [
        (0, "pricing", "https://shop.test/p?a=1&b=2")
    ]


def test_tracking_off_by_default_leaves_html_alone_and_header_uses_the_service() -> None:
    message = MessageTemplate(_spec()).render("ann@a.test", {"id": "7"})
    parts = _parts(message)
    assert "/c/" not in parts["text/html"] and "/o/" not in parts["text/html"]
    header = email.message_from_bytes(message)["List-Unsubscribe"]
    assert "<https://mail.shop.test/u/" in header
    assert (
        email.message_from_bytes(message)["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    )


def test_clicks_and_opens_are_rewritten_in_html_only() -> None:
    template = MessageTemplate(_spec(tracking={"opens": True, "clicks": True}))
    parts = _parts(template.render("Ann@A.test", {"id": "7"}))
    html, text = parts["text/html"], parts["text/plain"]
    assert text == "See https://shop.test/p?a=1\r\n"
    clicks = re.findall(r'href="https://mail\.shop\.test/c/([^"]+)"', html)
    assert len(clicks) == 3
    first, second, mine = (decode_link_token(t, SECRET) for t in clicks)
    assert first is not None and first.link == 0 and first.url is None
    assert second is not None and second.link == 0
    assert mine is not None and mine.url == "https://shop.test/u/7"
    signer = TokenSigner("links", SECRET)
    assert first.token.recipient_tag == signer.recipient_tag("ann@a.test").hex()
    assert 'href="mailto:x@shop.test"' in html
    assert re.search(r'href="https://mail\.shop\.test/u/[0-9a-f]{38}"', html)  # not rewritten
    pixel = re.findall(r'<img src="https://mail\.shop\.test/o/([0-9a-f]+)\.gif"', html)
    decoded = decode_token(pixel[0], SECRET)
    assert decoded is not None and decoded.kind is TokenKind.OPEN
    assert not template.shareable
    with pytest.raises(TemplateError, match="tracking is on"):
        template.render_shared(["a@a.test"])


def test_forged_link_tokens_do_not_verify() -> None:
    signer = TokenSigner("links", SECRET)
    token = signer.link_token("ann@a.test", 0, "https://shop.test/x")
    head = token.partition(".")[0]
    assert decode_link_token(token, SECRET) is not None
    assert decode_link_token(f"{head}.aHR0cHM6Ly9ldmlsLnRlc3Q", SECRET) is None
    assert decode_link_token(head, SECRET) is None  # the URL dropped
    assert decode_link_token(token, "another-secret") is None
    assert decode_link_token("zz" + token[2:], SECRET) is None
    assert decode_link_token(f"{head}.%%%", SECRET) is None


def test_tracking_without_web_section_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="tracking needs a 'web' section"):
        parse_spec(
            {
                "campaign": "x",
                "sender": "a@b.test",
                "subject": "s",
                "text": "t",
                "recipients": "r.csv",
                "tracking": {"clicks": True},
            }
        )
