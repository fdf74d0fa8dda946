"""Hostile input: the classifier must never raise and must say why it gave up."""

from __future__ import annotations

import base64
import random
from pathlib import Path

import pytest

from raymail.returns import classify_message
from raymail.returns.parse import MAX_PARSE_BYTES, parse_message

DATA = Path(__file__).resolve().parents[1] / "data" / "returns"
FIXTURES = sorted(DATA.glob("*.eml"))


def _check(raw: bytes) -> None:
    verdict = classify_message(raw, path="fuzz")
    # The catch-all in classify_message must not have been needed.
    assert not verdict.why.startswith("classifier error"), verdict.why
    assert verdict.category and verdict.reason


def test_truncated_everywhere() -> None:
    rng = random.Random(7)
    for path in FIXTURES:
        raw = path.read_bytes()
        for cut in {0, 1, 10, len(raw) // 3, len(raw) // 2, len(raw) - 1, rng.randrange(len(raw))}:
            _check(raw[:cut])


def test_random_bit_rot() -> None:
    rng = random.Random(11)
    for path in FIXTURES[:25]:
        raw = bytearray(path.read_bytes())
        for _ in range(4):
            mutated = bytearray(raw)
            for _ in range(40):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            _check(bytes(mutated))


@pytest.mark.parametrize(
    ("charset", "body"),
    [
        ("utf-8", "Zustellung fehlgeschlagen: Empfänger unbekannt".encode("latin-1")),
        ("x-no-such-charset", b"user unknown \xff\xfe"),
        ("utf-7", b"+ZeVnLIqe- user unknown +AAA"),
        ("iso-2022-jp", b"\x1b$B\xff\xff broken"),
        ("unknown-8bit", b"\x80\x81\x82 mailbox full"),
        ("=?bad?=", b"plain"),
    ],
)
def test_wrong_and_unknown_charsets(charset: str, body: bytes) -> None:
    raw = (
        b"From: MAILER-DAEMON@mx.example\r\nTo: bounces@sender.test\r\n"
        b"Subject: =?" + charset.encode() + b"?Q?Unzustellbar=FF?=\r\n"
        b'Content-Type: text/plain; charset="' + charset.encode() + b'"\r\n'
        b"Content-Transfer-Encoding: 8bit\r\n\r\n<rcpt@example.org>:\r\n" + body + b"\r\n"
    )
    _check(raw)
    verdict = classify_message(raw)
    assert verdict.recipients == ["rcpt@example.org"]


def test_broken_transfer_encodings() -> None:
    for cte, payload in (
        ("base64", b"!!!not base64###\r\n===="),
        ("quoted-printable", b"=ZZ=\r\n=0"),
        ("x-uuencode", b"begin 644 x\r\n`\r\nend"),
    ):
        raw = (
            b"From: postmaster@mx.example\r\nSubject: Undeliverable\r\n"
            b"Content-Type: text/plain\r\nContent-Transfer-Encoding: "
            + cte.encode()
            + b"\r\n\r\n"
            + payload
        )
        _check(raw)


def test_twenty_megabyte_message() -> None:
    attachment = base64.encodebytes(random.Random(3).randbytes(15 * 1024 * 1024))
    raw = (
        b"From: MAILER-DAEMON@mx.example\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
        b"Content-Type: text/plain\r\n\r\n<big@example.org>: 552 5.3.4 Message size exceeds fixed "
        b"maximum message size\r\n--XX\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + attachment + b"\r\n--XX--\r\n"
    )
    assert len(raw) > 20 * 1024 * 1024
    verdict = classify_message(raw)
    assert verdict.recipients == ["big@example.org"]
    assert verdict.reason == "mesgtoobig"
    assert any("parsed first" in note for note in verdict.notes)
    # One enormous line without any structure.
    _check(b"Subject: x\r\n\r\n" + b"a" * (20 * 1024 * 1024))
    assert MAX_PARSE_BYTES < 20 * 1024 * 1024


def test_deeply_nested_rfc822_is_unknown_with_a_reason() -> None:
    inner = b"From: a@b.example\r\nSubject: inner\r\n\r\nhello\r\n"
    for depth in range(400):
        inner = (
            b"From: x@y.example\r\nSubject: layer " + str(depth).encode() + b"\r\n"
            b"MIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n" + inner
        )
    verdict = classify_message(inner)
    assert verdict.category == "unknown"
    assert verdict.why
    parsed = parse_message(inner)
    assert parsed.gave_up or "depth limit" in parsed.notes


def test_deeply_nested_multipart() -> None:
    body = b"deep\r\n"
    for depth in range(300):
        boundary = f"b{depth}".encode()
        body = (
            b"Content-Type: multipart/mixed; boundary="
            + boundary
            + b"\r\n\r\n--"
            + boundary
            + b"\r\n"
            + body
            + b"\r\n--"
            + boundary
            + b"--\r\n"
        )
    _check(b"From: x@y.example\r\nMIME-Version: 1.0\r\n" + body)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n\r\n",
        b"\x00" * 1000,
        b"no headers at all, just text with an @ sign",
        b"From: <>\r\n\r\n",
        b'Content-Type: multipart/report; report-type=delivery-status; boundary=""\r\n\r\n--',
        b"Content-Type: multipart/report; boundary=Q\r\n\r\n--Q\r\nContent-Type: "
        b"message/delivery-status\r\n\r\nFinal-Recipient: rfc822;\r\nAction:\r\nStatus: 9.9.9\r\n",
        b"Content-Type: message/delivery-status\r\n\r\n" + b"X: y\r\n" * 50000,
        b"Subject: =?utf-8?b?////?= =?x?q?=ZZ?=\r\n\r\n",
        bytes(range(256)) * 64,
    ],
    ids=lambda raw: f"{len(raw)}-bytes",
)
def test_garbage(raw: bytes) -> None:
    _check(raw)


def test_empty_message_gives_a_reason() -> None:
    verdict = classify_message(b"")
    assert verdict.category == "unknown"
    assert verdict.why == "empty message"


def test_verp_decoder_errors_are_contained() -> None:
    def broken(address: str) -> str | None:
        raise ValueError("codec bug")

    raw = (DATA / "text_verp_only.eml").read_bytes()
    verdict = classify_message(raw, verp_decoder=broken)
    assert any("verp decoder failed" in note for note in verdict.notes)
    assert verdict.reason == "userunknown"
