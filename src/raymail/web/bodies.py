"""Request bodies read with a size cap and parsed by content type, with clear refusals.

Every refusal is a :class:`BadRequest` carrying the HTTP status and one line saying what
was wrong (413 too large, 415 wrong content type, 400 malformed, 422 invalid field).
"""

from __future__ import annotations

import json
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request

__all__ = ["FORM_TYPES", "BadRequest", "content_type", "parse_form", "parse_json", "read_body"]

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


class BadRequest(Exception):
    """A refused request: ``status`` and a one-line ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def content_type(request: Request) -> str:
    """The media type, lower-case, without parameters ('' when absent)."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing more than ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise BadRequest(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise BadRequest(413, f"body of {declared} bytes is over the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_form(request: Request, body: bytes) -> dict[str, str]:
    """Fields of a urlencoded or multipart/form-data body (first value of each name)."""
    kind = content_type(request)
    if kind == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise BadRequest(400, "form body is not UTF-8") from None
        out: dict[str, str] = {}
        for key, value in pairs:
            out.setdefault(key, value)
        return out
    if kind == "multipart/form-data":
        head = f"Content-Type: {request.headers.get('content-type')}\r\n\r\n".encode("latin-1")
        message = BytesParser(policy=HTTP).parsebytes(head + body)
        if not message.is_multipart():
            raise BadRequest(400, "multipart/form-data body has no parts (boundary?)")
        fields: dict[str, str] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not name or part.get_filename():
                continue
            payload = part.get_payload(decode=True)
            text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
            fields.setdefault(str(name), text)
        return fields
    raise BadRequest(
        415, f"content type {kind or '(none)'!r} not accepted; use {' or '.join(FORM_TYPES)}"
    )


def parse_json(request: Request, body: bytes) -> Any:
    """A JSON body; 415 for another content type, 400 for bad JSON."""
    kind = content_type(request)
    if kind != "application/json":
        raise BadRequest(
            415, f"content type {kind or '(none)'!r} not accepted; use application/json"
        )
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"body is not valid JSON: {exc}") from None
