"""Where files live: a local path or an object-store URL (``s3://bucket/key``).

The recipient list and a run's exported Parquet may sit in S3 (or any S3-compatible store:
MinIO, Ceph, moto). Everything goes through one :class:`pyarrow.fs.FileSystem`, so the
readers and writers are the same code for both; Arrow streams S3 objects without a copy on
local disk.

Endpoint and credentials come, in this order, from the spec's ``s3`` section, then the
usual AWS environment variables (``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``,
``AWS_REGION``/``AWS_DEFAULT_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``), then the AWS SDK's default chain (profile files, instance roles).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from raymail.spec import S3Settings

__all__ = ["Location", "is_remote", "locate", "s3_filesystem", "stage_recipients"]

_REMOTE_SCHEMES = ("s3",)


def is_remote(url: str | Path) -> bool:
    """True for an object-store URL (``s3://...``), False for a local path."""
    return isinstance(url, str) and urlsplit(url).scheme.lower() in _REMOTE_SCHEMES


@dataclass(frozen=True)
class Location:
    """A file or folder: the filesystem that holds it and its path inside it."""

    fs: pafs.FileSystem
    path: str  # "bucket/key" for S3, an absolute path for local files
    url: str  # as the user wrote it, for messages

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.path).suffix.lower()

    def join(self, *parts: str) -> Location:
        """A location below this one (``parts`` use ``/``)."""
        path = "/".join([self.path.rstrip("/"), *parts])
        return Location(self.fs, path, "/".join([self.url.rstrip("/"), *parts]))

    def info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)


def locate(url: str | Path, s3: S3Settings | None = None) -> Location:
    """The filesystem and path of a local path or an ``s3://`` URL."""
    if not is_remote(url):
        path = Path(url).expanduser().resolve()
        return Location(pafs.LocalFileSystem(), str(path), str(url))
    parts = urlsplit(str(url))
    bucket_key = (parts.netloc + parts.path).rstrip("/") if parts.path != "/" else parts.netloc
    return Location(s3_filesystem(s3), bucket_key, str(url))


def s3_filesystem(settings: S3Settings | None = None) -> pafs.S3FileSystem:
    """An S3 filesystem configured from the spec's ``s3`` section and the environment."""
    settings = settings or S3Settings()
    env = os.environ
    endpoint = (
        settings.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    )
    region = settings.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    options: dict[str, object] = {}
    if endpoint:
        parsed = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["endpoint_override"] = parsed.netloc
        options["scheme"] = parsed.scheme or "https"
    if region:
        options["region"] = region
    if settings.access_key_id and settings.secret_access_key:
        options["access_key"] = settings.access_key_id
        options["secret_key"] = settings.secret_access_key
        if settings.session_token:
            options["session_token"] = settings.session_token
    # Path-style addressing ("host/bucket/key"): what MinIO, Ceph and moto expect, and
    # still accepted by AWS; virtual-host style would need DNS for every bucket.
    if endpoint:
        options["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**options)


def stage_recipients(url: str | Path, s3: S3Settings | None, run_dir: Path) -> Path:
    """A local file to read the recipient list from: ``url`` itself, or for an ``s3://``
    URL a copy under ``run_dir/input`` (streamed by pyarrow, so memory stays flat). The
    intake reads local files a batch at a time, and a resume must read the same list again
    even if the object changed or the store is unreachable."""
    from raymail.errors import RecipientError, first_line

    if not is_remote(url):
        return Path(url)
    try:
        loc = locate(url, s3)
        kind = loc.info().type
    except (OSError, pa.ArrowException) as exc:  # unreachable store, access denied
        raise RecipientError(f"{url}: cannot open: {first_line(exc)}") from None
    if kind == pafs.FileType.NotFound:
        raise RecipientError(f"{url}: file not found")
    dest = run_dir / "input" / loc.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        pafs.copy_files(
            loc.path,
            str(dest),
            source_filesystem=loc.fs,
            destination_filesystem=pafs.LocalFileSystem(),
        )
    except (OSError, pa.ArrowException) as exc:
        raise RecipientError(f"{url}: cannot copy: {first_line(exc)}") from None
    return dest
