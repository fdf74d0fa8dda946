"""Helpers of the web service tests: the people, the template, reading captured mail."""

from __future__ import annotations

import email
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

from raymail.sink import iter_capture

PEOPLE = [f"p{i}@web.test" for i in range(12)]
INGEST_KEY = "ingest-key-0123456789"
HTML = (
    '<html><body><p>Hi {{ name }}, see <a data-link="pricing" '
    'href="https://shop.test/pricing?a=1&amp;b=2">prices</a> and '
    '<a href="https://shop.test/me/{{ name }}">your page</a>.</p>'
    '<p><a href="{{ unsubscribe_url }}">unsubscribe</a></p></body></html>'
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, check: Callable[[], Any], timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # bounded
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@dataclass
class Service:
    url: str
    config: Any
    capture: Path
    home: Path
    spec: Any

    def messages(self, to: str) -> list[Message]:
        found = [m for m in iter_capture(self.capture) if to in m.rcpt_tos]
        return [email.message_from_bytes(m.raw) for m in found]

    def campaign_message(self, to: str) -> Message:
        marker = f"{self.spec.campaign}"
        return next(m for m in self.messages(to) if m["X-Raymail-Campaign"] == marker)

    def links(self, to: str) -> dict[str, str]:
        """unsubscribe (header URL), pixel, pricing, page: the URLs a mail client sees."""
        message = self.campaign_message(to)
        header = str(message["List-Unsubscribe"])
        html = next(
            p.get_payload(decode=True).decode()  # type: ignore[union-attr]
            for p in message.walk()
            if p.get_content_type() == "text/html"
        )
        clicks = re.findall(r'<a [^>]*href="([^"]+/c/[^"]+)"', html)
        return {
            "unsubscribe": re.findall(r"<(https?://[^>]+)>", header)[0],
            "pixel": re.findall(r'<img src="([^"]+)"', html)[0],
            "pricing": clicks[0],
            "page": clicks[1],
            "html": html,
        }

    def log_lines(self) -> int:
        folder = self.home / "web" / "changes"
        return sum(p.read_bytes().count(b"\n") for p in folder.glob("seg-*.log"))
