"""Tolerant parsing of a returned message into the few pieces a classifier reads.

Returned mail is the worst-formed mail there is: truncated copies, wrong or invented
charsets, missing boundaries, 20 MB attachments bounced back whole, reports nested inside
reports. This module never raises on such input; it caps what it examines (bytes parsed,
characters per part, nesting depth, parts walked) and says in ``notes`` / ``gave_up`` what it
skipped, so a caller can tell "nothing found" from "did not look".
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from email.header import decode_header
from typing import Final, Protocol

from raymail.returns.mime import Part, parse, parse_headers

MAX_PARSE_BYTES: Final = 2 * 1024 * 1024  # a bounce's evidence is near the top
MAX_PART_CHARS: Final = 256 * 1024  # text examined per part
MAX_NARRATIVE_CHARS: Final = 1024 * 1024  # text examined per message
MAX_DEPTH: Final = 12  # nesting of multipart / message parts
MAX_PARTS: Final = 400  # parts walked per message

_ORIGINAL_TYPES: Final = frozenset(
    {
        "message/rfc822",
        "message/global",
        "text/rfc822-headers",
        "message/rfc822-headers",
        "message/global-headers",
        "message/partial",
        "message/news",
    }
)
_STATUS_TYPES: Final = frozenset({"message/delivery-status", "message/global-delivery-status"})
_FEEDBACK_TYPES: Final = frozenset({"message/feedback-report"})

# Lines after which plain-text bounces quote the returned message.
_ORIGINAL_MARKER_RE: Final = re.compile(
    r"^[ \t>]*(?:"
    r"-{2,}[ \t]*(?:below this line is a copy of the message"
    r"|this is a copy of the message"
    r"|original message"
    r"|(?:the )?original message (?:follows|headers?)"
    r"|(?:start of |begin )?(?:returned|unsent|undelivered|original|rejected|failed)"
    r" (?:message|mail|e-?mail)(?: follows| text| headers?| is attached| below)?"
    r"|message (?:text|headers?) follows"
    r"|begin (?:returned|original|forwarded) message"
    r"|forwarded message"
    r"|headers? of (?:the )?(?:original|returned) (?:message|mail))"
    r"|original message follows\.?"
    r"|original message (?:as received )?is (?:as follows|attached|below)"
    r"|the first \d+ lines of your (?:original )?message follow"
    r"|your message (?:reads|follows)[^\n]{0,40}:"
    r"|the original message (?:headers? )?(?:is|are|was|were) (?:attached|as follows|included)"
    r"|\*{2,}[ \t]*original message"
    r"|content-type:[ \t]*message/rfc822"
    r")[^\n]*$",
    re.IGNORECASE | re.MULTILINE,
)
# A run of header lines that begins a quoted message (used when no marker line is found).
_HEADER_BLOCK_RE: Final = re.compile(
    r"(?:^|\n\n)((?:Return-Path|Received|DKIM-Signature|Message-I[dD]|X-[\w-]+|Date|From|To"
    r"|Subject|MIME-Version|Content-Type):[^\n]*\n(?:[\w-]{2,40}:[^\n]*\n|[ \t]+[^\n]*\n){2,})",
)
_TAG_RE: Final = re.compile(r"<[^>]{0,2000}>")
_BLOCK_TAG_RE: Final = re.compile(r"<\s*(?:br|/p|/div|/tr|/li|/h\d|p|div|tr|li)\b[^>]*>", re.I)
_SCRIPT_RE: Final = re.compile(r"<(script|style|head)\b.*?</\1\s*>", re.I | re.S)


class HasHeaders(Protocol):
    """A header block (a parsed part, or the email package's Message)."""

    def get(self, name: str, default: None = None) -> object: ...


@dataclass(slots=True)
class ParsedMessage:
    """What the classifier needs from one returned message."""

    message: Part | None
    subject: str = ""
    sender: str = ""
    content_type: str = "text/plain"
    report_type: str = ""
    narrative: list[str] = field(default_factory=list)  # text written by the reporter
    status_texts: list[str] = field(default_factory=list)  # message/delivery-status bodies
    feedback_texts: list[str] = field(default_factory=list)  # message/feedback-report bodies
    original_headers: list[Part] = field(default_factory=list)  # returned message headers
    original_text: str = ""  # quoted copy of the returned message found in the narrative
    notes: list[str] = field(default_factory=list)
    gave_up: str | None = None
    parts: int = 0
    _lower: str | None = None
    _headers: dict[str, list[object]] | None = None

    @property
    def lower_head(self) -> str:
        """First 8000 characters of the narrative, lower-cased once (regexes run on this)."""
        if self._lower is None:
            self._lower = self.text[:8000].lower()
        return self._lower

    @property
    def text(self) -> str:
        """All narrative text, joined."""
        return "\n".join(self.narrative)

    def _header_map(self) -> dict[str, list[object]]:
        """Lower-cased name -> raw values, built once (Message.get is a linear scan)."""
        if self._headers is None:
            self._headers = {}
            if self.message is not None:
                for name, value in self.message.items():
                    self._headers.setdefault(str(name).lower(), []).append(value)
        return self._headers

    def header(self, name: str) -> str:
        """Decoded value of a top-level header ('' when absent or unreadable)."""
        values = self._header_map().get(name.lower())
        return decode_header_value(values[0]) if values else ""

    def headers(self, name: str) -> list[str]:
        """Every decoded value of a repeated top-level header."""
        return [decode_header_value(v) for v in self._header_map().get(name.lower(), [])]


def decode_header_value(value: object) -> str:
    """RFC 2047-decode a header value, tolerating unknown charsets and 8-bit junk."""
    try:
        raw = str(value)
    except Exception:
        return ""
    if not raw.isascii() and any("\udc80" <= ch <= "\udcff" for ch in raw):  # raw 8-bit
        raw = decode_bytes(raw.encode("utf-8", "surrogateescape"), None)
    if "=?" not in raw:
        return _unfold(raw)
    out: list[str] = []
    try:
        chunks = decode_header(raw)
    except Exception:
        return _unfold(raw)
    for chunk, charset in chunks:
        if isinstance(chunk, bytes):
            out.append(decode_bytes(chunk, charset))
        else:
            out.append(chunk)
    return _unfold("".join(out))


def _unfold(value: str) -> str:
    """Join a folded header value onto one line."""
    return re.sub(r"\r?\n[ \t]*", " ", value).strip()


def header_text(msg: HasHeaders | None, name: str) -> str:
    """Decoded value of ``name`` in ``msg``; '' when absent or unreadable."""
    if msg is None:
        return ""
    try:
        value = msg.get(name)
    except Exception:
        return ""
    return "" if value is None else decode_header_value(value)


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode with the declared charset, falling back to UTF-8, then Latin-1, never raising."""
    for candidate in (charset, "utf-8"):
        if not candidate or candidate.lower() in {"unknown-8bit", "x-unknown", "unknown"}:
            continue
        try:
            return data.decode(candidate)
        except (LookupError, UnicodeError, ValueError):
            continue
        except Exception:
            continue
    return data.decode("latin-1")


def html_to_text(markup: str) -> str:
    """Cheap tag stripping: enough to read a provider's HTML bounce."""
    markup = _SCRIPT_RE.sub(" ", markup)
    markup = _BLOCK_TAG_RE.sub("\n", markup)
    markup = _TAG_RE.sub(" ", markup)
    return html.unescape(markup).replace("\xa0", " ")


def part_text(part: Part) -> str:
    """Decoded text of a leaf part, capped at MAX_PART_CHARS."""
    payload = part.decoded()[: MAX_PART_CHARS * 4]
    return decode_bytes(payload, part.get_content_charset())[:MAX_PART_CHARS]


def split_original(text: str) -> tuple[str, str]:
    """Split a plain-text bounce into (reporter's text, quoted original message)."""
    match = _ORIGINAL_MARKER_RE.search(text)
    if match:
        return text[: match.start()], text[match.end() :]
    block = _HEADER_BLOCK_RE.search(text)
    if block and re.search(
        r"^(?:Received|Return-Path|Message-I[dD]|Subject|DKIM-Signature):",
        block.group(1),
        re.MULTILINE,
    ):
        return text[: block.start(1)], text[block.start(1) :]
    return text, ""


def _parse_headers(text: str) -> Part | None:
    """Headers of a quoted or attached original, or None if it has none."""
    text = text.lstrip("\r\n")
    if not re.match(r"[\w-]{2,76}:", text):
        return None
    return parse_headers(text)


class _Walker:
    """Depth- and count-limited walk over a MIME tree, filling a ParsedMessage."""

    def __init__(self, parsed: ParsedMessage) -> None:
        """Start a walk that fills ``parsed``."""
        self.parsed = parsed
        self.chars = 0

    def walk(self, part: Part, depth: int, inside_original: bool) -> None:
        """Visit ``part`` and its children; ``inside_original``: text is not evidence."""
        parsed = self.parsed
        if parsed.parts >= MAX_PARTS:
            if "part limit" not in parsed.notes:
                parsed.notes.append("part limit")
            return
        if depth > MAX_DEPTH:
            if "depth limit" not in parsed.notes:
                parsed.notes.append("depth limit")
            return
        parsed.parts += 1
        ctype = part.get_content_type()
        if ctype.startswith("multipart/"):
            for sub in part.children:
                self.walk(sub, depth + 1, inside_original)
            if part.is_multipart_text and not inside_original:
                # A multipart whose boundary never appears: read it as text.
                self._add_text(part_text(part), ctype)
            return
        if ctype in _STATUS_TYPES:
            if not inside_original:
                parsed.status_texts.append(part_text(part))
            return
        if ctype in _FEEDBACK_TYPES:
            if not inside_original:
                parsed.feedback_texts.append(part_text(part))
            return
        if ctype in _ORIGINAL_TYPES:
            self._original(part, depth)
            return
        if ctype.startswith("text/") and not inside_original:
            self._add_text(part_text(part), ctype)

    def _original(self, part: Part, depth: int) -> None:
        """Keep an attached original's headers; walk it for nested reports."""
        parsed = self.parsed
        if part.children:
            for sub in part.children:
                parsed.original_headers.append(sub)
                # Walk it for nested reports (a bounce of a bounce), as original.
                self.walk(sub, depth + 1, True)
            return
        headers = _parse_headers(part_text(part))
        if headers is not None:
            parsed.original_headers.append(headers)

    def _add_text(self, text: str, ctype: str) -> None:
        """Add reporter text (HTML stripped) within the per-message cap."""
        if not text:
            return
        if ctype == "text/html" or (ctype == "text/plain" and "<html" in text[:2000].lower()):
            text = html_to_text(text)
        room = MAX_NARRATIVE_CHARS - self.chars
        if room <= 0:
            if "text limit" not in self.parsed.notes:
                self.parsed.notes.append("text limit")
            return
        text = text[:room]
        self.chars += len(text)
        self.parsed.narrative.append(text)


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse ``raw`` as far as it goes; never raises."""
    if not raw or not raw.strip():
        return ParsedMessage(message=None, gave_up="empty message")
    notes: list[str] = []
    if len(raw) > MAX_PARSE_BYTES:
        notes.append(f"parsed first {MAX_PARSE_BYTES} of {len(raw)} bytes")
        raw = raw[:MAX_PARSE_BYTES]
    if raw.startswith(b"From ") and b"\n" in raw:
        raw = raw.split(b"\n", 1)[1]  # an mbox "From " separator line
    try:
        msg = parse(raw)
    except Exception as exc:  # the splitter is tolerant, but memory can still fail
        return ParsedMessage(message=None, gave_up=f"unparseable: {type(exc).__name__}")
    parsed = ParsedMessage(message=msg, notes=notes)
    try:
        if not msg.keys():
            parsed.notes.append("no headers")
        parsed.subject = header_text(msg, "Subject")
        parsed.sender = header_text(msg, "From")
        parsed.content_type = msg.get_content_type()
        parsed.report_type = msg.get_param("report-type").lower()
        _Walker(parsed).walk(msg, 0, False)
    except RecursionError:
        parsed.gave_up = "nesting too deep"
    except Exception as exc:
        parsed.gave_up = f"walk failed: {type(exc).__name__}"
    # Plain-text bounces quote the original inline: keep it apart from the reporter's words.
    if parsed.narrative:
        head, original = split_original(parsed.narrative[0])
        if original:
            parsed.narrative[0] = head
            parsed.original_text = original[:MAX_PART_CHARS]
            quoted = _parse_headers(original)
            if quoted is not None:
                parsed.original_headers.append(quoted)
    if "depth limit" in parsed.notes and not parsed.narrative and not parsed.status_texts:
        parsed.gave_up = "nesting too deep"
    return parsed
