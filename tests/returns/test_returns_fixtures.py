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
