"""Campaign spec validation: typos and bad values are errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from raymail.errors import SpecError
from raymail.spec import load_spec, parse_spec

BASE = {
    "campaign": "c1",
    "sender": "News <news@example.com>",
    "subject": "Hi",
    "text": "Hello",
    "recipients": "list.csv",
}


def test_minimal_spec_has_defaults() -> None:
    spec = parse_spec(BASE)
    assert spec.delivery_servers >= 1 and spec.concurrency >= 1
    assert spec.sender_domain == "example.com"
    assert spec.bounce_domain == "example.com"
    assert spec.mx_override is None and spec.target_minutes is None


def test_unknown_key_is_named_with_suggestion() -> None:
    with pytest.raises(SpecError, match=r"unknown key 'subjct' \(did you mean 'subject'\?\)"):
        parse_spec({**BASE, "subjct": "x"}, "c.yaml")


def test_unknown_nested_key_is_named() -> None:
    with pytest.raises(SpecError, match=r"unknown key 'smtp.pipelinning'.*'pipelining'"):
        parse_spec({**BASE, "smtp": {"pipelinning": False}}, "c.yaml")


def test_missing_and_bad_values_are_named() -> None:
    data = {k: v for k, v in BASE.items() if k != "subject"}
    with pytest.raises(SpecError) as info:
        parse_spec({**data, "concurrency": 0, "mx_override": {"*": "nohostport"}}, "c.yaml")
    text = str(info.value)
    assert "missing required key 'subject'" in text
    assert "key 'concurrency'" in text
    assert "mx_override.*" in text


def test_bad_sender_is_rejected() -> None:
    with pytest.raises(SpecError, match="sender"):
        parse_spec({**BASE, "sender": "not an address"})


def test_load_spec_resolves_recipients_relative_to_spec(tmp_path: Path) -> None:
    path = tmp_path / "campaign.yaml"
    path.write_text(
        "campaign: c1\nsender: a@b.example\nsubject: s\ntext: t\nrecipients: list.csv\n"
        "mx_override:\n  '*': 127.0.0.1:2525\n  Example.COM: 127.0.0.1:2526\n"
    )
    spec = load_spec(path)
    assert spec.recipients == str(tmp_path / "list.csv")
    assert spec.mx_override == {"*": "127.0.0.1:2525", "example.com": "127.0.0.1:2526"}


def test_load_spec_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("campaign: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(listy)
