"""Handwritten returns (tests/data/returns): one per MTA family, report type and language."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raymail.returns import CATEGORIES, REASON_CATEGORY, classify_message

DATA = Path(__file__).resolve().parents[1] / "data" / "returns"
EXPECTED: dict[str, dict[str, object]] = json.loads((DATA / "expected.json").read_text())


def _verp(address: str) -> str | None:
    """Stand-in for raymail's token codec: one known token, returned as 'campaign:recipient'."""
    if address.startswith("bounces+0123abcd@"):
        return "spring-2026:verp-person@example.org"
    return None


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture(name: str) -> None:
    raw = (DATA / f"{name}.eml").read_bytes()
    verdict = classify_message(raw, path=name, verp_decoder=_verp)
    expected = EXPECTED[name]
    got = {key: getattr(verdict, key) for key in expected}
    assert got == expected, f"{name}: {verdict.why} / {verdict.diagnostic}"
    assert verdict.category in CATEGORIES
    assert REASON_CATEGORY.get(verdict.reason) is not None


def test_every_fixture_has_an_expectation() -> None:
    files = {p.stem for p in DATA.glob("*.eml")}
    assert files == set(EXPECTED)


def test_stored_real_postfix_bounces() -> None:
    """Bounces a real Postfix 3.7 wrote (regenerate with test_returns_postfix.py's helpers)."""
    from test_returns_postfix import check_mbox

    check_mbox(DATA / "real" / "postfix-3.7.mbox")


def test_base64_encoded_delivery_status() -> None:
    """Some gateways base64-encode the message/delivery-status part."""
    import base64

    fields = (
        b"Reporting-MTA: dns; mx.example.com\n\nFinal-Recipient: rfc822; b64@example.org\n"
        b"Action: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 User unknown\n"
    )
    raw = (
        b"From: MAILER-DAEMON@mx.example.com\nSubject: Undeliverable\nMIME-Version: 1.0\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=X\n\n--X\n"
        b"Content-Type: text/plain\n\nfailed.\n--X\nContent-Type: message/delivery-status\n"
        b"Content-Transfer-Encoding: base64\n\n" + base64.encodebytes(fields) + b"--X--\n"
    )
    verdict = classify_message(raw)
    assert (verdict.reason, verdict.recipients, verdict.status, verdict.source) == (
        "userunknown",
        ["b64@example.org"],
        "5.1.1",
        "dsn",
    )
