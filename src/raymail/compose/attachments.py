"""Attachments (seed 001's "attaching data to the message"): multipart/mixed, base64 parts.

The campaign's files are read, checked and base64-encoded once per delivery server; a
recipient's own files (the spec's ``attachments.column``, paths separated by ``;``) are
encoded when first needed and kept in a small cache, since many recipients often share a
file. The body entity (text, or multipart/alternative) becomes the first part of a
multipart/mixed entity whose boundary contains ``=_``, which neither base64 nor
quoted-printable output can contain.

Checks happen before anything is sent: a campaign file that is missing or above the cap is
an error when the spec is loaded; a recipient whose file is missing, unreadable or too big
is rejected at intake (``rejects.parquet``, with the reason), see :func:`check_row`.
"""

from __future__ import annotations

import base64
import mimetypes
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Final
from urllib.parse import quote

from raymail.compose.settings import AttachmentSettings
from raymail.errors import AttachmentError, SpecError, TemplateError
from raymail.spec import CampaignSpec

_LINE: Final = 76  # base64 characters per line (RFC 2045 6.8)
_CACHE_BYTES: Final = 64 * 1024 * 1024  # recipient files kept encoded per delivery server


def check_campaign_files(settings: AttachmentSettings, source: str) -> None:
    """Every campaign file exists and together they fit the cap; SpecError naming the file."""
    total = 0
    for name in settings.files:
        try:
            total += _size(Path(name))
        except AttachmentError as exc:
            raise SpecError(f"{source}: key 'attachments.files': {exc}") from None
    if total > settings.max_bytes:
        raise SpecError(
            f"{source}: key 'attachments.files': {total} bytes in all, above "
            f"attachments.max_bytes ({settings.max_bytes})"
        )


def recipient_paths(value: str | None, list_folder: Path) -> list[Path]:
    """The paths one row's column names (``;``-separated, relative to the list's folder)."""
    if not value:
        return []
    paths = []
    for part in value.split(";"):
        part = part.strip()
        if part:
            path = Path(part).expanduser()
            paths.append(path if path.is_absolute() else list_folder / path)
    return paths


def check_row(settings: AttachmentSettings, value: str | None, list_folder: Path) -> str | None:
    """Why a recipient's attachments cannot be sent (None: they can)."""
    total = sum(_size(Path(f)) for f in settings.files)
    for path in recipient_paths(value, list_folder):
        try:
            total += _size(path)
        except AttachmentError as exc:
            return str(exc)
    if total > settings.max_bytes:
        return (
            f"attachments of this message: {total} bytes, above attachments.max_bytes "
            f"({settings.max_bytes})"
        )
    return None


def _size(path: Path) -> int:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise AttachmentError(f"attachment {path}: file not found") from None
    except OSError as exc:
        raise AttachmentError(f"attachment {path}: cannot read: {exc.strerror}") from None
    if not path.is_file():
        raise AttachmentError(f"attachment {path}: not a file")
    return info.st_size


def list_folder(spec: CampaignSpec) -> Path:
    """Where relative paths in recipient columns are taken from: the list's folder."""
    return Path(spec.recipients).parent if "://" not in spec.recipients else Path.cwd()


def base64_lines(data: bytes) -> bytes:
    """Base64 in lines of 76 characters, each ending with CRLF (RFC 2045 6.8)."""
    encoded = base64.b64encode(data)
    return b"\r\n".join(encoded[i : i + _LINE] for i in range(0, len(encoded), _LINE)) + b"\r\n"


def encode_part(name: str, data: bytes) -> bytes:
    """One attachment as a MIME part: headers, blank line, base64 in 76-character lines."""
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    head = (
        f"Content-Type: {content_type};\r\n {_parameter('name', name)}\r\n"
        f"Content-Disposition: attachment;\r\n {_parameter('filename', name)}\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    )
    return head.encode("ascii") + base64_lines(data)


def _parameter(key: str, value: str) -> str:
    """``key="value"``, or RFC 2231's ``key*=utf-8''...`` for a name that is not plain ASCII."""
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return f'{key}="{value}"'
    return f"{key}*=utf-8''{quote(value, safe='')}"


class Attachments:
    """A campaign's attachments, ready to wrap any recipient's body entity."""

    def __init__(self, settings: AttachmentSettings, list_folder: Path, boundary: str) -> None:
        self.settings = settings
        self.column = settings.column
        self._folder = list_folder
        self._boundary = boundary
        self._campaign_bytes = 0
        parts = []
        for name in settings.files:
            path = Path(name)
            data = _read(path)
            self._campaign_bytes += len(data)
            parts.append(encode_part(path.name, data))
        self._campaign_parts = b"".join(f"--{boundary}\r\n".encode("ascii") + p for p in parts)
        self._cache: OrderedDict[Path, bytes] = OrderedDict()
        self._cached_bytes = 0

    @classmethod
    def for_spec(cls, spec: CampaignSpec, boundary: str) -> Attachments | None:
        if spec.attachments is None or not (spec.attachments.files or spec.attachments.column):
            return None
        try:
            return cls(spec.attachments, list_folder(spec), boundary)
        except AttachmentError as exc:
            raise TemplateError(str(exc)) from None

    @property
    def per_recipient(self) -> bool:
        return self.column is not None

    def wrap(self, entity: bytes, fields: Mapping[str, str]) -> bytes:
        """``entity`` (content headers, blank line, body) as the first part of a
        multipart/mixed entity with the campaign's and the recipient's files."""
        own = b""
        if self.column is not None:
            paths = recipient_paths(fields.get(self.column), self._folder)
            own = b"".join(self._recipient_part(p) for p in paths)
        boundary = self._boundary
        return b"".join(
            (
                f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
                f"--{boundary}\r\n".encode("ascii"),
                entity,
                b"\r\n",
                self._campaign_parts,
                own,
                f"--{boundary}--\r\n".encode("ascii"),
            )
        )

    def _recipient_part(self, path: Path) -> bytes:
        part = self._cache.get(path)
        if part is None:
            try:
                data = _read(path)
            except AttachmentError as exc:  # gone since intake: that recipient fails
                raise TemplateError(str(exc)) from None
            if self._campaign_bytes + len(data) > self.settings.max_bytes:
                raise TemplateError(
                    f"attachment {path}: {len(data)} bytes, above attachments.max_bytes with "
                    "the campaign's files"
                )
            part = f"--{self._boundary}\r\n".encode("ascii") + encode_part(path.name, data)
            self._cache[path] = part
            self._cached_bytes += len(part)
            while self._cached_bytes > _CACHE_BYTES and len(self._cache) > 1:
                _, dropped = self._cache.popitem(last=False)
                self._cached_bytes -= len(dropped)
        else:
            self._cache.move_to_end(path)
        return part


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise AttachmentError(f"attachment {path}: file not found") from None
    except OSError as exc:
        raise AttachmentError(f"attachment {path}: cannot read: {exc.strerror}") from None
