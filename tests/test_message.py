"""Mail merge and MIME: rendered messages parsed back with the standard ``email`` package."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage, MIMEPart
from typing import Any

import pytest

from raymail.compose.message import PROVIDED, MessageTemplate
from raymail.compose.verp import TOKEN_LENGTH, TokenKind, decode_token, decode_verp, recipient_tag
from raymail.errors import TemplateError
from raymail.spec import CampaignSpec, parse_spec

SECRET = "s3cret"
URL = "https://sender.example/unsubscribe/{token}"


def make_spec(**overrides: Any) -> CampaignSpec:
    data: dict[str, Any] = {
        "campaign": "spring-sale",
        "sender": "Sender Name <news@sender.example>",
        "subject": "Hello {{ name }}",
        "text": "Hi {{ name }},\nyour city: {{ city }}\n",
        "recipients": "list.csv",
        "verp_secret": SECRET,
        "unsubscribe_url": URL,
    }
    data.update(overrides)
    return parse_spec(data, "test-spec")


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    assert not message.defects, message.defects
    return message


def body_text(part: MIMEPart) -> str:
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def assert_wire_format(data: bytes) -> None:
    """CRLF only, no line over 998 octets, headers plain ASCII."""
    lines = data.split(b"\r\n")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert max(map(len, lines)) <= 998
    head = data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii()


FIELDS = {"name": "Ann", "city": "Oslo"}


def test_plain_message_has_every_header() -> None:
    template = MessageTemplate(make_spec(reply_to="Help Desk <help@sender.example>"))
    data = template.render("ann@example.com", FIELDS)
    assert_wire_format(data)
    message = parse(data)
    assert message["From"] == "Sender Name <news@sender.example>"
    assert message["To"] == "ann@example.com"
    assert message["Reply-To"] == "Help Desk <help@sender.example>"
    assert message["Subject"] == "Hello Ann"
    assert message["MIME-Version"] == "1.0"
    assert message["X-Raymail-Campaign"] == "spring-sale"
    assert message["Message-ID"] == template.message_id("ann@example.com")
    assert message["Date"].datetime.tzinfo is not None
    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert message["Content-Transfer-Encoding"] == "7bit"
    assert body_text(message) == "Hi Ann,\nyour city: Oslo\n"
    token = template.unsubscribe_token("ann@example.com")
    assert message["List-Unsubscribe"] == (
        f"<mailto:unsubscribe+{token}@sender.example>, <https://sender.example/unsubscribe/{token}>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    names = [name.lower() for name in message]
    assert len(names) == len(set(names))


def test_optional_headers_follow_the_spec() -> None:
    spec = make_spec(unsubscribe_url=None, return_domain="bounce.example")
    template = MessageTemplate(spec)
    message = parse(template.render("ann@example.com", FIELDS))
    assert message["Reply-To"] is None
    assert message["List-Unsubscribe-Post"] is None
    token = template.unsubscribe_token("ann@example.com")
    assert message["List-Unsubscribe"] == f"<mailto:unsubscribe+{token}@bounce.example>"
    assert template.envelope_sender("ann@example.com").endswith("@bounce.example")
    http = MessageTemplate(make_spec(unsubscribe_url="http://sender.example/u?t={token}"))
    message = parse(http.render("ann@example.com", FIELDS))
    assert "<http://sender.example/u?t=" in message["List-Unsubscribe"]
    assert message["List-Unsubscribe-Post"] is None
    custom = MessageTemplate(make_spec(unsubscribe_mailto="leave@lists.example"))
    message = parse(custom.render("ann@example.com", FIELDS))
    assert message["List-Unsubscribe"].startswith("<mailto:leave+")


def test_unsubscribe_url_is_available_to_templates() -> None:
    template = MessageTemplate(make_spec(subject="Bye", text="Leave: {{ unsubscribe_url }}\n"))
    token = template.unsubscribe_token("ann@example.com")
    message = parse(template.render("ann@example.com", {}))
    assert body_text(message) == f"Leave: https://sender.example/unsubscribe/{token}\n"
    mailto = MessageTemplate(
        make_spec(subject="Bye", text="Leave: {{ unsubscribe_url }}", unsubscribe_url=None)
    )
    assert "Leave: mailto:unsubscribe+" in body_text(parse(mailto.render("a@b.example", {})))


def test_message_id_is_deterministic() -> None:
    one, two = MessageTemplate(make_spec()), MessageTemplate(make_spec())
    first = one.message_id("ann@example.com")
    assert first == two.message_id("ann@example.com") == two.message_id("Ann@Example.com")
    assert first.startswith("<") and first.endswith("@sender.example>")
    assert first != one.message_id("bob@example.com")
    other = MessageTemplate(make_spec(campaign="autumn-sale"))
    assert first != other.message_id("ann@example.com")
    assert parse(one.render("ann@example.com", FIELDS))["Message-ID"] == first


@pytest.mark.parametrize(
    "evil",
    [
        "x\r\nBcc: victim@example.com",
        "x\nBcc: victim@example.com",
        "x\rBcc: victim@example.com",
        "x\u2028Bcc: victim@example.com",
        "x\r\n\r\nBcc: victim@example.com",
        "x\x00\x0bBcc: victim@example.com",
    ],
)
def test_merge_fields_cannot_inject_headers(evil: str) -> None:
    template = MessageTemplate(make_spec(subject="Hello {{ name }} from {{ city }}"))
    data = template.render("ann@example.com", {"name": evil, "city": evil})
    assert_wire_format(data)
    message = parse(data)
    assert message["Bcc"] is None
    assert message["Subject"].startswith("Hello x")
    assert "Bcc: victim@example.com from x" in message["Subject"]
    assert "\n" not in message["Subject"] and "\r" not in message["Subject"]
    head = data.split(b"\r\n\r\n", 1)[0]
    assert not any(line.startswith(b"Bcc") for line in head.split(b"\r\n"))


@pytest.mark.parametrize("address", ["a@b.example\r\nBcc: x@y.example", "a b@c.example", "<a@b.c>"])
def test_unsafe_recipient_address_is_refused(address: str) -> None:
    template = MessageTemplate(make_spec())
    with pytest.raises(TemplateError, match="not a plain address"):
        template.render(address, FIELDS)
    with pytest.raises(TemplateError):
        template.envelope_sender(address)


def test_non_ascii_subject_and_body_round_trip() -> None:
    subject = "Grüße, {{ name }}! Ein sehr langer Betreff — 日本語のテキスト — mit Ümlauten überall"
    template = MessageTemplate(make_spec(subject=subject, text="Grüße {{ name }}\n€ 10 = 10 €\n"))
    data = template.render("ann@example.com", {"name": "Jörg"})
    assert_wire_format(data)
    message = parse(data)
    assert message["Subject"] == subject.replace("{{ name }}", "Jörg")
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert body_text(message) == "Grüße Jörg\n€ 10 = 10 €\n"
    head = data.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n") if b"=?utf-8?" in line)


def test_long_ascii_subject_is_folded() -> None:
    words = " ".join(f"word{i}" for i in range(40))
    template = MessageTemplate(make_spec(subject=words + " {{ name }}"))
    data = template.render("ann@example.com", FIELDS)
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    subject_lines = head.split("Subject: ", 1)[1].split("\r\nMessage-ID", 1)[0].split("\r\n")
    assert len(subject_lines) > 1
    assert all(len(line) <= 78 for line in subject_lines)
    assert parse(data)["Subject"] == words + " Ann"


def test_long_lines_and_control_characters_need_quoted_printable() -> None:
    template = MessageTemplate(make_spec(text="{{ name }}\n"))
    long_line = "x" * 1200
    message = parse(template.render("ann@example.com", {"name": long_line}))
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert body_text(message) == long_line + "\n"
    message = parse(template.render("ann@example.com", {"name": "bell\x07"}))
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert body_text(message) == "bell\x07\n"


def test_body_line_endings_become_crlf() -> None:
    template = MessageTemplate(make_spec(text="a\r\nb\rc\n{{ name }}\nend"))
    data = template.render("ann@example.com", {"name": "x\ry\r\nz\nw"})
    assert_wire_format(data)
    assert data.endswith(b"\r\n\r\na\r\nb\r\nc\r\nx\r\ny\r\nz\r\nw\r\nend\r\n")


def test_missing_merge_field_names_field_and_recipient() -> None:
    template = MessageTemplate(make_spec())
    with pytest.raises(TemplateError, match=r"recipient ann@example\.com: .*'city' is missing"):
        template.render("ann@example.com", {"name": "Ann"})
    optional = MessageTemplate(make_spec(text="{% if city is defined %}{{ city }}{% endif %}\n"))
    assert parse(optional.render("ann@example.com", {"name": "Ann"}))["Subject"] == "Hello Ann"


def test_a_recipient_missing_a_field_gets_an_error_naming_them() -> None:
    template = MessageTemplate(make_spec())
    rows = [
        {"email": "ann@example.com", "name": "Ann", "city": "Oslo"},
        {"email": "bob@example.com", "name": "Bob"},
    ]
    first = template.render(rows[0]["email"], rows[0])
    assert parse(first)["To"] == "ann@example.com"
    with pytest.raises(TemplateError, match=r"bob@example\.com"):
        template.render(rows[1]["email"], rows[1])


def test_html_gives_multipart_alternative() -> None:
    spec = make_spec(html="<p>Hi {{ name }} &amp; {{ city }}</p>\n")
    template = MessageTemplate(spec)
    data = template.render("ann@example.com", {"name": "<b>Ann</b>", "city": "Oslo"})
    assert_wire_format(data)
    message = parse(data)
    assert message.get_content_type() == "multipart/alternative"
    plain, html = list(message.iter_parts())
    assert plain.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    assert body_text(plain) == "Hi <b>Ann</b>,\nyour city: Oslo\n"
    assert body_text(html) == "<p>Hi &lt;b&gt;Ann&lt;/b&gt; &amp; Oslo</p>\n"
    again = MessageTemplate(spec).render("bob@example.com", FIELDS)
    assert parse(again).get_boundary() == message.get_boundary()


def test_boundary_in_content_cannot_split_the_message() -> None:
    template = MessageTemplate(make_spec(html="<p>{{ name }}</p>"))
    boundary = parse(template.render("ann@example.com", FIELDS)).get_boundary()
    assert boundary is not None
    evil = f"\n--{boundary}\nContent-Type: text/html\n\nphish\n--{boundary}--\n"
    message = parse(template.render("ann@example.com", {"name": evil, "city": "x"}))
    parts = list(message.iter_parts())
    assert len(parts) == 2
    assert f"--{boundary}" in body_text(parts[0])


def test_merge_field_discovery() -> None:
    template = MessageTemplate(
        make_spec(
            subject="News from {{ campaign }}",
            text="{% for i in range(2) %}{{ name }}{% endfor %} {{ email }}\n",
            html="{{ unsubscribe_url }}",
        )
    )
    assert template.merge_fields == frozenset({"name", "email", "unsubscribe_url"})
    assert template.uses_merge_fields
    assert template.merge_fields - {"row", "email", "domain"} - PROVIDED == frozenset({"name"})
    static = MessageTemplate(make_spec(subject="News from {{ campaign }}", text="Hello\n"))
    assert not static.uses_merge_fields
    assert static.merge_fields == frozenset()
    assert parse(static.render("a@b.example", {}))["Subject"] == "News from spring-sale"


def test_shared_message_for_many_recipients() -> None:
    template = MessageTemplate(make_spec(subject="News", text="Hello all\n"))
    assert not template.uses_merge_fields
    assert not template.shareable  # a one-click URL must name its recipient
    assert MessageTemplate(make_spec(subject="News", text="x", unsubscribe_url=None)).shareable
    rcpts = ["b@x.example", "a@x.example"]
    data = template.render_shared(rcpts)
    assert_wire_format(data)
    message = parse(data)
    assert message["To"] == "undisclosed-recipients:;"
    assert message["Message-ID"] == template.shared_message_id(rcpts)
    assert template.shared_message_id(rcpts) == template.shared_message_id(rcpts[::-1])
    assert template.shared_message_id(rcpts) != template.shared_message_id(rcpts[:1])
    assert message["List-Unsubscribe-Post"] is None
    mailto = message["List-Unsubscribe"]
    token = mailto.split("+", 1)[1].split("@", 1)[0]
    decoded = decode_token(token, SECRET)
    assert decoded is not None and decoded.recipient_tag is None
    assert body_text(message) == "Hello all\n"
    personal = MessageTemplate(make_spec())
    with pytest.raises(TemplateError, match="cannot be shared"):
        personal.render_shared(rcpts)


def test_verp_round_trip_and_forgery() -> None:
    template = MessageTemplate(make_spec())
    sender = template.envelope_sender("Ann@Example.com")
    local, domain = sender.split("@")
    assert domain == "sender.example"
    assert len(local) <= 64
    assert local.startswith("bounces+")
    token = decode_verp(sender, SECRET, campaigns=["other", "spring-sale"])
    assert token is not None
    assert token.kind is TokenKind.BOUNCE
    assert token.campaign == "spring-sale"
    assert token.recipient_tag == recipient_tag("ann@example.com", SECRET)
    assert decode_verp(f"<{sender.upper()}>", SECRET) == decode_verp(sender, SECRET)
    assert decode_verp(sender, "wrong secret") is None
    assert decode_verp(sender, SECRET, campaigns=["other"]) is None
    raw = local.split("+", 1)[1]
    assert len(raw) == TOKEN_LENGTH
    for position in (0, 5, 20, len(raw) - 1):
        flipped = raw[:position] + ("0" if raw[position] != "0" else "1") + raw[position + 1 :]
        assert decode_verp(f"bounces+{flipped}@{domain}", SECRET) is None
    assert decode_verp("bounces@sender.example", SECRET) is None
    assert decode_verp("bounces+zz@sender.example", SECRET) is None
    shared = decode_verp(template.envelope_sender(None), SECRET)
    assert shared is not None and shared.recipient_tag is None
    unsub = decode_token(template.unsubscribe_token("ann@example.com"), SECRET)
    assert unsub is not None and unsub.kind is TokenKind.UNSUBSCRIBE
    assert unsub.recipient_tag == token.recipient_tag


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"text": "{{ ''.__class__.__mro__ }}"}, "blocked by the sandbox"),
        ({"text": "Hi {{ name"}, r"text template, line 1: "),
        ({"html": "{% if %}"}, "html template, line 1"),
        ({"unsubscribe_url": "https://x.example/u"}, "must contain '{token}'"),
        ({"unsubscribe_url": "ftp://x.example/{token}"}, "must be an https:// URL"),
        ({"unsubscribe_mailto": "a-very-long-unsubscribe-mailbox@x.example"}, "too long"),
        ({"sender": "news@localhost"}, "domain has no dot"),
    ],
)
def test_bad_templates_fail_at_construction(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        MessageTemplate(make_spec(**overrides))


def test_sandbox_blocks_unsafe_access_at_render() -> None:
    template = MessageTemplate(make_spec(text="{{ name.__class__.__base__.__subclasses__() }}"))
    with pytest.raises(TemplateError, match=r"recipient ann@example\.com: blocked by the sandbox"):
        template.render("ann@example.com", FIELDS)
    safe = MessageTemplate(make_spec(text="{{ name.upper() }} {{ name|title }}\n"))
    assert body_text(parse(safe.render("a@b.example", {"name": "ann"}))) == "ANN Ann\n"


def test_international_sender_domain_becomes_a_label() -> None:
    template = MessageTemplate(make_spec(sender="Jörg Müller <news@bücher.example>"))
    message = parse(template.render("ann@example.com", FIELDS))
    assert message["From"] == "Jörg Müller <news@xn--bcher-kva.example>"
    assert message["Message-ID"].endswith("@xn--bcher-kva.example>")
    assert template.envelope_sender("ann@example.com").endswith("@xn--bcher-kva.example")


@pytest.mark.parametrize("autoescape", [False, True])
def test_plain_templates_render_as_jinja_does(autoescape: bool) -> None:
    """Text-and-``{{ name }}`` templates skip jinja's render; the text must not change."""
    from markupsafe import Markup

    from raymail.compose.message import _environment, _Part

    env = _environment("spring-sale", autoescape=autoescape)
    source = "Hi {{ name }},\n\n{{ city }} & {{ campaign }}: {{ n }} {{ nothing }} {{ html }}\r\n"
    part = _Part(env, "text", source)
    assert part._pieces is not None  # the fast path, not jinja's
    values: list[Any] = [
        "Ann", "a\nb\r\nc", "<b>&\"'", 42, 1.5, None, True, Markup("<i>x</i>"), "", "ünï",
    ]  # fmt: skip
    for value in values:
        context = {"name": value, "city": "Oslo\n", "n": 3, "nothing": None, "html": value}
        assert part.render(context, "a@b.example") == part.template.render(context)
    shadowed = {"name": "x", "city": "y", "n": 1, "nothing": 2, "html": 3, "campaign": "mine"}
    assert part.render(shadowed, None) == part.template.render(shadowed)
    with pytest.raises(TemplateError, match="merge field 'city' is missing"):
        part.render({"name": "x"}, "a@b.example")
    assert _Part(env, "text", "{{ name | upper }}")._pieces is None  # jinja renders these
    assert _Part(env, "text", "{% if name %}{{ name }}{% endif %}")._pieces is None
