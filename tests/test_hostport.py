"""``host:port`` parsing: one parser for spec keys, sink config and command-line options."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from raymail.errors import SpecError
from raymail.hostport import HostPort, split_host_port
from raymail.spec import parse_spec

BASE = {
    "campaign": "c1",
    "sender": "news@example.com",
    "subject": "Hi",
    "text": "Hello",
    "recipients": "list.csv",
}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:2525", ("127.0.0.1", 2525)),
        ("mx.example.com:25", ("mx.example.com", 25)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:2527", ("::1", 2527)),
        ("[2001:db8::5]:1", ("2001:db8::5", 1)),
        ("  host_1:53 ", ("host_1", 53)),
    ],
)
def test_valid_text_splits_into_host_and_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("nohostport", "no port"),
        ("host:", "is not a number"),
        ("host:smtp", "is not a number"),
        ("host:0", r"not in 1\.\.65535"),
        ("host:65536", r"not in 1\.\.65535"),
        (":25", "bad host"),
        ("bad host:25", "bad host"),
        ("::1:25", "IPv6 address in brackets"),
        ("[not-v6]:25", r"\[IPv6\]:port"),
    ],
)
def test_bad_text_says_why(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        split_host_port(text)


def test_port_zero_only_for_listening() -> None:
    assert split_host_port("127.0.0.1:0", listen=True) == ("127.0.0.1", 0)
    with pytest.raises(ValueError, match=r"not in 0\.\.65535"):
        split_host_port("127.0.0.1:65536", listen=True)


def test_field_type_keeps_the_text_and_rejects_bad_ports() -> None:
    class Peer(BaseModel):
        target: HostPort

    assert Peer(target=" [::1]:25").target == "[::1]:25"
    with pytest.raises(ValidationError, match=r"not in 1\.\.65535"):
        Peer(target="127.0.0.1:99999")


def test_spec_error_names_key_and_reason() -> None:
    with pytest.raises(SpecError, match=r"key 'nameservers.0'.*port 'x' is not a number"):
        parse_spec({**BASE, "nameservers": ["127.0.0.1:x"]}, "c.yaml")
    with pytest.raises(SpecError, match=r"key 'returns.listen'.*not in 0\.\.65535"):
        parse_spec({**BASE, "returns": {"listen": "127.0.0.1:70000"}}, "c.yaml")
    spec = parse_spec({**BASE, "mx_override": {"*": "[::1]:2525"}}, "c.yaml")
    assert spec.mx_override == {"*": "[::1]:2525"}
