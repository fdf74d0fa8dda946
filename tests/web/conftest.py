"""The web service under test: a real campaign sent to the sink, then served by Ray Serve.

One service per session (Serve's proxy binds one port per Ray instance): a campaign with
tracking on is delivered by the real driver to the project's SMTP sink (capturing), and
the Serve application answers for it on a free loopback port. Tests read the links from
the captured messages, as a mail client would.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from webhelpers import HTML, INGEST_KEY, PEOPLE, Service, free_port

from raymail.sink import run_sink


@pytest.fixture(scope="session")
def web_service(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
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
        yield Service(f"http://127.0.0.1:{port}", config, capture, home, spec)
        serve.delete(APP_NAME)
