"""The archive's object store: S3 (or moto, MinIO) through boto3 for what pyarrow.fs lacks.

pyarrow's S3 filesystem reads and writes objects but cannot name a storage class, change
one, or restore from Glacier; boto3 does all of that, so the archive uses boto3 to write,
verify and re-tier, and pyarrow.fs (the same one ``s3://`` recipients use) to read Parquet.
Endpoint and credentials: the settings, then the usual AWS environment variables.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from raymail.errors import StorageError
from raymail.intake.staging import s3_filesystem
from raymail.spec import S3Settings

# Storage classes that must be restored before an object can be read.
FROZEN_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})


def split_url(url: str) -> tuple[str, str]:
    """(bucket, key) of ``s3://bucket/key``."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise StorageError(f"{url}: not an s3://bucket/key URL")
    return parts.netloc, parts.path.lstrip("/")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ObjectState:
    size: int
    storage_class: str
    restored: bool  # a frozen object's temporary copy is readable


class ObjectStore:
    """boto3 calls the archive makes, each turning failures into one StorageError line."""

    def __init__(self, settings: S3Settings | None = None) -> None:
        self.settings = settings or S3Settings()
        env = os.environ
        self.endpoint_url = (
            self.settings.endpoint_url
            or env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL")
        )
        self.region = self.settings.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            options: dict[str, Any] = {
                "endpoint_url": self.endpoint_url,
                "region_name": self.region,
                "config": Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
            }
            if self.settings.access_key_id and self.settings.secret_access_key:
                options["aws_access_key_id"] = self.settings.access_key_id
                options["aws_secret_access_key"] = self.settings.secret_access_key
                options["aws_session_token"] = self.settings.session_token
            self._client = boto3.client("s3", **options)
        return self._client

    def _call(self, what: str, url: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(**kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise StorageError(
                f"{url}: {what} failed: {error.get('Code')} {error.get('Message', '')}".strip()
            ) from None
        except BotoCoreError as exc:
            raise StorageError(f"{url}: {what} failed: {exc}") from None

    def put(self, local: Path, url: str, storage_class: str) -> None:
        bucket, key = split_url(url)
        with local.open("rb") as body:
            self._call(
                "upload",
                url,
                self.client.put_object,
                Bucket=bucket,
                Key=key,
                Body=body,
                StorageClass=storage_class,
            )

    def fetch_sha256(self, url: str) -> tuple[str, bytes]:
        """The object's SHA-256 and its bytes, read back from the store."""
        bucket, key = split_url(url)
        answer = self._call("read-back", url, self.client.get_object, Bucket=bucket, Key=key)
        data: bytes = answer["Body"].read()
        return hashlib.sha256(data).hexdigest(), data

    def state(self, url: str) -> ObjectState:
        bucket, key = split_url(url)
        head = self._call("head", url, self.client.head_object, Bucket=bucket, Key=key)
        restore = str(head.get("Restore") or "")
        return ObjectState(
            size=int(head["ContentLength"]),
            storage_class=str(head.get("StorageClass") or "STANDARD"),
            restored='ongoing-request="false"' in restore,
        )

    def change_class(self, url: str, storage_class: str) -> None:
        """Copy the object onto itself in another class (how S3 changes a class)."""
        bucket, key = split_url(url)
        self._call(
            "storage class change",
            url,
            self.client.copy_object,
            Bucket=bucket,
            Key=key,
            CopySource={"Bucket": bucket, "Key": key},
            StorageClass=storage_class,
            MetadataDirective="COPY",
        )

    def restore(self, url: str, days: int = 7) -> None:
        """Ask for a readable copy of a GLACIER / DEEP_ARCHIVE object."""
        bucket, key = split_url(url)
        self._call(
            "restore",
            url,
            self.client.restore_object,
            Bucket=bucket,
            Key=key,
            RestoreRequest={"Days": days},
        )

    def delete(self, url: str) -> None:
        bucket, key = split_url(url)
        self._call("delete", url, self.client.delete_object, Bucket=bucket, Key=key)

    def filesystem(self) -> pafs.S3FileSystem:
        """pyarrow's S3 filesystem at the same endpoint (for reading Parquet)."""
        settings = self.settings.model_copy(
            update={"endpoint_url": self.endpoint_url, "region": self.region}
        )
        return s3_filesystem(settings)


def store_for(
    endpoint_url: str | None, region: str | None, s3: S3Settings | None = None
) -> ObjectStore:
    """A store for an archived object: ``s3``'s endpoint and region, else those recorded."""
    settings = (s3 or S3Settings()).model_copy(
        update={
            "endpoint_url": (s3.endpoint_url if s3 else None) or endpoint_url,
            "region": (s3.region if s3 else None) or region,
        }
    )
    return ObjectStore(settings)
