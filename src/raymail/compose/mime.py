"""The few MIME encodings a bulk message needs, written for speed on the delivery hot path.

The ``email`` package builds correct messages but costs hundreds of microseconds each; here
every per-message step is a string operation or one C call (``binascii.b2a_qp``). The
``email`` package is still used where speed does not matter: once per campaign, for the
static address headers (see :mod:`raymail.compose.message`).
"""

from __future__ import annotations

import binascii
import re
import time
from base64 import b64encode
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Final

__all__ = [
    "MAX_LINE",
    "DateHeader",
    "clean_header_text",
    "encode_body",
    "encode_subject",
    "to_crlf",
]

MAX_LINE: Final = 998  # RFC 5322 2.1.1, without the CRLF
_FOLD_AT: Final = 78  # RFC 5322 2.1.1 recommended limit
_WORD_BYTES: Final = 42  # UTF-8 bytes per encoded-word: 56 base64 characters, 68 in all

# Everything that could end a header line or hide in one: C0/C1 controls, DEL, and the
# Unicode line and paragraph separators.
_HEADER_BREAKERS: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
# The bytes a 7bit body may hold: tab, CR, LF and printable ASCII.
_7BIT_SAFE: Final = bytes([9, 10, 13, *range(32, 127)])


def clean_header_text(text: str) -> str:
    """Collapse control characters (CR and LF included) to single spaces; strip the ends.

    Applied to every rendered header value, so a merge field can never start a new header.
    """
    if text.isprintable():  # the common case, one C call
        return text.strip()
    return _HEADER_BREAKERS.sub(" ", text).strip()


def encode_subject(text: str, name: str = "Subject") -> str:
    """The folded value of an unstructured header (RFC 5322 2.2.3, RFC 2047 when needed).

    ``text`` must already be clean (:func:`clean_header_text`). ASCII is folded at spaces;
    non-ASCII, words too long to fold, or text that looks like an encoded-word become
    base64 encoded-words of at most 68 characters, one per line.
    """
    room = _FOLD_AT - len(name) - 2
    if text.isascii() and "=?" not in text:
        if len(text) <= room:
            return text
        folded = _fold_ascii(text, room)
        if folded is not None:
            return folded
    return _encoded_words(text)


def _fold_ascii(text: str, room: int) -> str | None:
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        if len(word) > _FOLD_AT - 1:
            return None
        if current and len(current) + 1 + len(word) > room:
            lines.append(current)
            current = word
            room = _FOLD_AT - 1
        else:
            current = f"{current} {word}" if current else word
    lines.append(current)
    return "\r\n ".join(lines)


def _encoded_words(text: str) -> str:
    data = text.encode("utf-8")
    if len(data) <= _WORD_BYTES:
        chunks = [data]
    else:
        chunks = []
        chunk = bytearray()
        for char in text:
            encoded = char.encode("utf-8")
            if len(chunk) + len(encoded) > _WORD_BYTES:
                chunks.append(bytes(chunk))
                chunk.clear()
            chunk += encoded
        chunks.append(bytes(chunk))
    return "\r\n ".join(f"=?utf-8?b?{b64encode(c).decode('ascii')}?=" for c in chunks)


def to_crlf(text: str) -> str:
    """Normalise every line ending (CRLF, lone CR, lone LF) to CRLF."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.replace("\n", "\r\n")


def encode_body(text: str, boundary: str | None = None) -> tuple[bytes, str]:
    """Encode CRLF text as 7bit when it is plain ASCII with short lines, else quoted-printable.

    Returns the payload and its Content-Transfer-Encoding. When ``boundary`` (which starts
    with ``=``) occurs in the text, quoted-printable is used: it escapes every ``=``, so the
    encoded part can never contain the boundary.
    """
    if text.isascii():
        data = text.encode("ascii")
        if (
            not data.translate(None, _7BIT_SAFE)  # deletes the safe bytes: anything left?
            and (len(data) <= MAX_LINE or max(map(len, data.split(b"\r\n"))) <= MAX_LINE)
            and (boundary is None or boundary not in text)
        ):
            return data, "7bit"
    return binascii.b2a_qp(text.encode("utf-8"), istext=True), "quoted-printable"


class DateHeader:
    """The RFC 5322 Date value for now, formatted once per second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = ""

    def __call__(self) -> str:
        second = int(time.time())
        if second != self._second:
            self._value = format_datetime(datetime.fromtimestamp(second, UTC))
            self._second = second
        return self._value
