"""The web service's endpoints over real HTTP on a real Ray Serve app (loopback).

Links come from the messages the real driver delivered to the sink; effects are read from
the suppression list, the list store and the tracking events dataset the applier writes.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import polars as pl
import pytest
from webhelpers import INGEST_KEY, PEOPLE, Service, web_service_fixture  # noqa: F401 (the fixture)

from helpers import wait_for
from raymail.compose.verp import TokenKind, TokenSigner
from raymail.lists.store import ListStore
from raymail.returns.suppression import SuppressionList
from raymail.web.confirm import make_confirmation

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ONE_CLICK = b"List-Unsubscribe=One-Click"  # RFC 8058 one-click body
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _suppressed(service: Service) -> set[str]:
    return set(SuppressionList(service.config.suppression_file).active()["email"].to_list())


def _events(service: Service, kind: str, recipient: str) -> pl.DataFrame:
    root = service.config.events_dir
    if not any(root.glob("campaign=*/date=*/*.parquet")):
        return pl.DataFrame()
    frame = pl.read_parquet(root / "campaign=*/date=*/*.parquet", hive_partitioning=False)
    return frame.filter((pl.col("kind") == kind) & (pl.col("recipient") == recipient))


def _path(url: str) -> str:
    return re.sub(r"^https?://[^/]+", "", url)


def test_header_url_points_at_the_service_and_one_click_unsubscribes(web_service: Service) -> None:
    who = PEOPLE[0]
    links = web_service.links(who)
    assert links["unsubscribe"].startswith(f"{web_service.url}/u/")
    assert "List-Unsubscribe-Post" not in web_service.campaign_message(who)  # http, not https
    with httpx.Client(base_url=web_service.url) as client:
        reply = client.post(_path(links["unsubscribe"]), headers=FORM, content=ONE_CLICK)
        assert reply.status_code == 200, reply.text
        assert "set-cookie" not in reply.headers
        assert "Unsubscribed" in reply.text
    wait_for("the unsubscribe applied", lambda: who in _suppressed(web_service))
    assert wait_for("its event", lambda: _events(web_service, "unsubscribe", who).height == 1)
    # The campaign's list asks for unsubscribe confirmations: one reaches the address.
    mail = wait_for(
        "the unsubscribe confirmation",
        lambda: [m for m in web_service.messages(who) if m["Subject"] == "You are unsubscribed"],
    )
    assert len(mail) == 1
    # Posting again (a client retrying) is accepted and changes nothing.
    with httpx.Client(base_url=web_service.url) as client:
        again = client.post(_path(links["unsubscribe"]), headers=FORM, content=ONE_CLICK)
    assert again.status_code == 200
    rows = SuppressionList(web_service.config.suppression_file).read()
    assert rows.filter(pl.col("email") == who).height == 1


def test_get_shows_a_page_and_never_unsubscribes(web_service: Service) -> None:
    who = PEOPLE[1]
    before = web_service.log_lines()
    with httpx.Client(base_url=web_service.url) as client:
        page = client.get(_path(web_service.links(who)["unsubscribe"]))
    assert page.status_code == 200
    assert 'method="post"' in page.text and "<button" in page.text
    assert web_service.log_lines() == before
    assert who not in _suppressed(web_service)


def test_bad_tokens_are_refused_and_nothing_is_recorded(web_service: Service) -> None:
    good = _path(web_service.links(PEOPLE[2])["unsubscribe"]).rsplit("/", 1)[1]
    forged = good[:-1] + ("0" if good[-1] != "0" else "1")
    other_secret = TokenSigner("webtest", "another-secret").token(TokenKind.UNSUBSCRIBE, "x@y.z")
    campaign_only = TokenSigner("webtest", "test-secret").token(TokenKind.UNSUBSCRIBE, None)
    open_token = TokenSigner("webtest", "test-secret").token(TokenKind.OPEN, PEOPLE[2])
    before = web_service.log_lines()
    with httpx.Client(base_url=web_service.url) as client:
        for token in (forged, "nothex", "a" * 5000, other_secret, campaign_only, open_token):
            for reply in (
                client.post(f"/u/{token}", headers=FORM, content=ONE_CLICK),
                client.get(f"/u/{token}"),
            ):
                assert reply.status_code == 400, (token, reply.status_code)
                assert "not valid" in reply.text
        assert client.get(f"/o/{forged}.gif").status_code == 400
        assert client.get("/c/0123abc").status_code == 400
    assert web_service.log_lines() == before


def test_bodies_of_wrong_size_type_or_content_are_refused(web_service: Service) -> None:
    path = _path(web_service.links(PEOPLE[3])["unsubscribe"])
    before = web_service.log_lines()
    with httpx.Client(base_url=web_service.url) as client:
        big = client.post(path, headers=FORM, content=b"List-Unsubscribe=One-Click&" + b"x" * 9000)
        assert big.status_code == 413 and "limit" in big.text
        text = client.post(path, headers={"Content-Type": "text/plain"}, content=ONE_CLICK)
        assert text.status_code == 415 and "content type" in text.text
        wrong = client.post(path, headers=FORM, content=b"List-Unsubscribe=Maybe")
        assert wrong.status_code == 400 and "One-Click" in wrong.text
    assert web_service.log_lines() == before
    # The same body as multipart/form-data (RFC 8058 allows both) is accepted.
    with httpx.Client(base_url=web_service.url) as client:
        reply = client.post(path, files={"List-Unsubscribe": (None, "One-Click")})
    assert reply.status_code == 200
    wait_for("the multipart unsubscribe", lambda: PEOPLE[3] in _suppressed(web_service))


def test_open_pixel_and_click_redirects_are_signed_and_recorded(web_service: Service) -> None:
    who = PEOPLE[4]
    links = web_service.links(who)
    with httpx.Client(base_url=web_service.url, follow_redirects=False) as client:
        pixel = client.get(_path(links["pixel"]), headers={"User-Agent": "Thunderbird/128"})
        assert pixel.status_code == 200 and pixel.headers["content-type"] == "image/gif"
        assert pixel.content.startswith(b"GIF89a")
        person = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Firefox/130.0"}
        click = client.get(_path(links["pricing"]) + "?url=https://evil.test/", headers=person)
        assert click.status_code == 302
        assert click.headers["location"] == "https://shop.test/pricing?a=1&b=2"
        page = client.get(_path(links["page"]))
        assert page.headers["location"] == "https://shop.test/me/N4"
        # A URL swapped inside the token breaks its MAC.
        token = _path(links["page"]).rsplit("/", 1)[1]
        head = token.split(".")[0]
        swapped = client.get(f"/c/{head}.aHR0cHM6Ly9ldmlsLnRlc3Qv")
        assert swapped.status_code == 400
        scanner = client.get(_path(links["pricing"]), headers={"User-Agent": "Barracuda-Scan"})
        assert scanner.status_code == 302
    opened = wait_for("the open event", lambda: _events(web_service, "open", who).height)
    assert opened == 1
    wait_for("the click events", lambda: _events(web_service, "click", who).height == 3)
    clicks = _events(web_service, "click", who)
    pricing = clicks.filter(pl.col("link") == "pricing")
    assert pricing.height == 2 and set(pricing["url"]) == {"https://shop.test/pricing?a=1&b=2"}
    assert pricing.filter(pl.col("bot"))["user_agent"].to_list() == ["Barracuda-Scan"]
    assert set(clicks["source"]) == {"web"}
    # The text part was left alone: no tracking links in it.
    message = web_service.campaign_message(who)
    text = next(p for p in message.walk() if p.get_content_type() == "text/plain")
    assert "/c/" not in text.get_payload(decode=True).decode()  # type: ignore[union-attr]


def test_subscribe_double_opt_in_adds_once(web_service: Service) -> None:
    new = "newcomer@web.test"
    store = ListStore(web_service.home)
    with httpx.Client(base_url=web_service.url) as client:
        reply = client.post(
            "/subscribe", json={"list": "news", "email": new, "fields": {"name": "Nia"}}
        )
        assert reply.status_code == 202, reply.text
        mail = wait_for(
            "the confirmation mail",
            lambda: [m for m in web_service.messages(new) if "confirm" in str(m["Subject"])],
        )
        body = mail[0].get_payload(decode=True)
        assert isinstance(body, bytes)  # a single-part confirmation, decoded from its CTE
        url = re.findall(r"https?://\S+/confirm/\S+", body.decode())[0]
        assert new not in store.read("news")["email"].to_pylist()  # not before confirming
        assert client.get(_path(url)).status_code == 200
        members = wait_for("the new member", lambda: store.read("news").to_pylist())
        assert [(m["email"], m["status"], m["fields"]) for m in members] == [
            (new, "subscribed", '{"name": "Nia"}')
        ]
        versions = store.versions("news")
        assert client.post(_path(url)).status_code == 200  # confirmed twice
        wait_for(
            "the second confirm applied", lambda: web_service.log_lines() and _applied(web_service)
        )
        assert store.versions("news") == versions  # nothing changed, no new version
        token = _path(url).rsplit("/", 1)[1]
        assert client.get(f"/confirm/{token[:-2]}xx").status_code == 400
        expired = make_confirmation(web_service.config.secret, "news", "late@web.test", {}, -10)
        late = client.get(f"/confirm/{expired}")
        assert late.status_code == 410 and "expired" in late.text


def _applied(service: Service) -> bool:
    from raymail.web.serve import applier_for

    return applier_for(service.config).pending_bytes() == 0


def test_subscribe_refuses_bad_input_by_field(web_service: Service) -> None:
    before = web_service.log_lines()
    with httpx.Client(base_url=web_service.url) as client:
        unknown = client.post("/subscribe", json={"list": "nope", "email": "a@b.test"})
        assert unknown.status_code == 422 and "'list'" in unknown.text
        bad = client.post("/subscribe", data={"list": "news", "email": "not-an-address"})
        assert bad.status_code == 422 and "'email'" in bad.text
        xml = client.post("/subscribe", content=b"<x/>", headers={"Content-Type": "text/xml"})
        assert xml.status_code == 415
        junk = client.post(
            "/subscribe", content=b"{nope", headers={"Content-Type": "application/json"}
        )
        assert junk.status_code == 400 and "JSON" in junk.text
    assert web_service.log_lines() == before


def test_event_ingest_validates_then_records(web_service: Service) -> None:
    auth = {"Authorization": f"Bearer {INGEST_KEY}"}
    who = PEOPLE[5]
    event = {"kind": "complaint", "campaign": "webtest", "recipient": who.upper()}
    before = web_service.log_lines()
    with httpx.Client(base_url=web_service.url) as client:
        assert client.post("/events", json={"events": [event]}).status_code == 401
        bad = client.post(
            "/events", headers=auth, json={"events": [event, {**event, "recipient": "x"}]}
        )
        assert bad.status_code == 422 and "events.1.recipient" in bad.text
        kind = client.post("/events", headers=auth, json={"events": [{**event, "kind": "lol"}]})
        assert kind.status_code == 422 and "events.0.kind" in kind.text
        wrong_type = client.post(
            "/events", headers={**auth, "Content-Type": "text/plain"}, content=b"{}"
        )
        assert wrong_type.status_code == 415
        huge = client.post("/events", headers=auth, json={"events": [event] * 200})
        assert huge.status_code == 413
        assert web_service.log_lines() == before
        ok = client.post(
            "/events",
            headers=auth,
            json={"sender": "esp-x", "events": [event, {**event, "kind": "reply"}]},
        )
        assert ok.status_code == 202 and ok.json() == {"accepted": 2}
    wait_for("the complaint suppressed", lambda: who in _suppressed(web_service))
    complaint = wait_for("the events", lambda: _events(web_service, "complaint", who).height)
    assert complaint == 1
    assert _events(web_service, "reply", who)["source"].to_list() == ["ingest"]


def test_unresolvable_records_go_to_rejects(web_service: Service, tmp_path: Path) -> None:
    """A genuine token whose recipient is in no run directory is kept aside, with why."""
    token = TokenSigner("webtest", "test-secret").token(TokenKind.UNSUBSCRIBE, "ghost@web.test")
    with httpx.Client(base_url=web_service.url) as client:
        assert client.post(f"/u/{token}", headers=FORM, content=ONE_CLICK).status_code == 200
    rejects = web_service.home / "web" / "rejects.jsonl"
    wait_for("the reject", lambda: rejects.exists() and "not found" in rejects.read_text())
    assert "ghost@web.test" not in _suppressed(web_service)
