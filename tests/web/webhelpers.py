"""The web service under test, and helpers: people, template, reading captured mail.

One service per session (Serve's proxy binds one port per Ray instance): a campaign with
tracking on is delivered by the real driver to the project's SMTP sink (capturing), and
the Serve application answers for it on a free loopback port. Tests read the links from
the captured messages, as a mail client would. (Not a conftest.py: a second module named
``conftest`` would shadow the suite's own for ``from conftest import ...``.)
"""

from __future__ import annotations

import email
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from raymail.sink import iter_capture, run_sink

# Tests use their own people: 0-5 endpoints, 6 the browser, 7 and 8-11 the kill tests.
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


_SERVICE: list[Service] = []


@pytest.fixture(scope="session", name="web_service")
def web_service_fixture(
    ray_session: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """The service; built once even though each test module imports this fixture (pytest
    would otherwise make one per module, and Serve's proxy binds one port per Ray)."""
    if _SERVICE:
        yield _SERVICE[0]
        return
    from ray import serve

    from raymail.driver.campaign import run_campaign
    from raymail.spec import parse_spec
    from raymail.web.config import WebConfig
    from raymail.web.serve import APP_NAME, build_app

    tmp = tmp_path_factory.mktemp("web")
    home = tmp / "home"
    port = free_port()
    capture = tmp / "capture"
    csv = tmp / "people.csv"
    csv.write_text("email,name\n" + "".join(f"{e},N{i}\n" for i, e in enumerate(PEOPLE)))
    with run_sink(capture_dir=capture) as sink:
        spec = parse_spec(
            {
                "campaign": "webtest",
                "sender": "Shop <news@shop.test>",
                "subject": "Hello {{ name }}",
                "text": "Hi {{ name }}, see https://shop.test/pricing\n",
                "recipients": str(csv),
                "mx_override": {"*": f"127.0.0.1:{sink.port}"},
                "verp_secret": "test-secret",
                "delivery_servers": 1,
                "concurrency": 4,
                "checkpoint_interval_s": 0.5,
                "html": HTML,
                "tracking": {"opens": True, "clicks": True},
                "list_id": "news",
                "returns": {
                    "home": str(home),
                    "suppression_path": str(home / "suppression.parquet"),
                },
                "web": {
                    "base_url": f"http://127.0.0.1:{port}",
                    "home": str(home),
                    "apply_interval_s": 0.3,
                    "apply_batch": 50,
                    "max_body_bytes": 4096,
                    "ingest_key": INGEST_KEY,
                    "replicas": 1,
                    "lists": {"news": {"confirm_unsubscribe": True}},
                },
            },
            "web-test-spec",
        )
        report = run_campaign(spec, tmp / "runs" / spec.campaign, live_progress=False)
        assert report.accepted == len(PEOPLE), report
        config = WebConfig(spec, (str(tmp / "runs"),))
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(config), name=APP_NAME, route_prefix="/")
        _SERVICE.append(Service(f"http://127.0.0.1:{port}", config, capture, home, spec))
        yield _SERVICE[0]
        serve.delete(APP_NAME)
