"""The campaign spec's sections about the message itself: DKIM, attachments, S/MIME.

Part of the spec (``raymail.spec.CampaignSpec`` holds them under ``dkim``, ``attachments``
and ``smime``), kept beside the code that uses them as ``shaping/rules.py`` keeps the
shaping section. A DKIM key is read and checked when the spec is loaded.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from raymail._strict import StrictModel
from raymail.compose.dkim_keys import load_private_key, read_key_source
from raymail.errors import DkimError

# RFC 6376 5.4 and RFC 8058 3: what a bulk message's signature must cover.
DKIM_REQUIRED_HEADERS = (
    "from",
    "subject",
    "date",
    "message-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
DKIM_DEFAULT_HEADERS = (
    *DKIM_REQUIRED_HEADERS,
    "to",
    "reply-to",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "x-raymail-campaign",
)
DKIM_SELECTOR_PATTERN = (
    r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}))*$"
)
DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                        r"[A-Za-z0-9-]{2,63}$")  # fmt: skip


class DkimSettings(StrictModel):
    """One DKIM signature (RFC 6376) every message gets; the key is checked when the spec is
    loaded, and travels with the spec to the delivery servers (never written to spec.yaml)."""

    domain: str = Field(..., description="The signing domain (d=); align it with From's.")
    selector: str = Field(
        ...,
        pattern=DKIM_SELECTOR_PATTERN,
        description="The selector (s=): the key is published at SELECTOR._domainkey.DOMAIN.",
    )
    key_file: str | None = Field(
        None, description="PEM private key file (relative paths: from the spec's folder)."
    )
    key_env: str | None = Field(
        None, description="Environment variable holding the PEM private key instead."
    )
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = Field(
        "rsa-sha256",
        description="rsa-sha256 (what every verifier checks) or ed25519-sha256 (RFC 8463; add "
        "it beside an RSA signature, not alone).",
    )
    headers: list[str] = Field(
        default_factory=lambda: list(DKIM_DEFAULT_HEADERS),
        description="Header fields the signature covers, when present in the message; must "
        f"include {', '.join(DKIM_REQUIRED_HEADERS)}.",
    )
    _private_pem: bytes = PrivateAttr(b"")

    @field_validator("domain")
    @classmethod
    def _domain(cls, value: str) -> str:
        if not DOMAIN_RE.match(value):
            raise ValueError(f"not a domain name: {value!r}")
        return value.lower()

    @field_validator("key_file")
    @classmethod
    def _key_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        base = (info.context or {}).get("base")
        if value and base is not None and not Path(value).expanduser().is_absolute():
            return str((Path(base) / value).resolve())
        return str(Path(value).expanduser()) if value else value

    @field_validator("headers")
    @classmethod
    def _header_names(cls, value: list[str]) -> list[str]:
        names = list(dict.fromkeys(h.strip().lower() for h in value))
        bad = [h for h in names if not re.fullmatch(r"[!-9;-~]+", h)]
        if bad:
            raise ValueError(f"not a header field name: {bad[0]!r}")
        missing = [h for h in DKIM_REQUIRED_HEADERS if h not in names]
        if missing:
            raise ValueError(f"must include {', '.join(missing)} (RFC 6376, RFC 8058)")
        return names

    @model_validator(mode="after")
    def _load_key(self) -> DkimSettings:
        if bool(self.key_file) == bool(self.key_env):
            raise ValueError("give exactly one of key_file and key_env")
        pem, where = read_key_source(self.key_file, self.key_env)
        try:
            load_private_key(pem, self.algorithm, where)
        except DkimError as exc:
            raise ValueError(str(exc)) from None
        self._private_pem = pem
        return self

    @property
    def private_pem(self) -> bytes:
        """The key as read when the spec was loaded."""
        return self._private_pem


class AttachmentSettings(StrictModel):
    """Files attached to every message, and a column naming each recipient's own files."""

    files: list[str] = Field(
        default_factory=list,
        description="Files attached to every message (relative paths: from the spec's folder).",
    )
    column: str | None = Field(
        None,
        description="Recipient column holding paths of that recipient's files, separated by "
        "';' (relative paths: from the recipient list's folder). A row whose file is missing "
        "or too big is rejected with the reason.",
    )
    max_bytes: int = Field(
        10 * 1024 * 1024,
        ge=1,
        description="Largest total size of one message's attachments before base64 (the "
        "campaign's and the recipient's together).",
    )


class SmimeSettings(StrictModel):
    """S/MIME (RFC 8551): sign with the sender's key, encrypt to each recipient's certificate."""

    mode: Literal["encrypt", "sign", "sign_and_encrypt"] = Field(
        ...,
        description="encrypt: enveloped-data (AES-256-CBC) for the recipient's certificate; "
        "sign: a detached multipart/signed signature (SHA-256) with the sender's key; "
        "sign_and_encrypt: signed, then the signed message encrypted.",
    )
    certificate_column: str | None = Field(
        None,
        description="Recipient column with the path of the recipient's PEM certificate "
        "(relative paths: from the recipient list's folder).",
    )
    certificate_dir: str | None = Field(
        None,
        description="Folder of recipient certificates named ADDRESS.pem (lower case), used "
        "when the row names none.",
    )
    signer_certificate: str | None = Field(
        None, description="The sender's PEM certificate (sign modes)."
    )
    signer_key: str | None = Field(
        None, description="The sender's unencrypted PEM private key (sign modes)."
    )
    on_missing_certificate: Literal["plain", "skip", "fail"] = Field(
        "skip",
        description="A recipient with no usable certificate (none, unreadable, expired, not "
        "for their address): plain sends unencrypted (signed if signing); skip rejects the "
        "row with the reason; fail stops the campaign before anything is sent.",
    )

    @model_validator(mode="after")
    def _complete(self) -> SmimeSettings:
        if self.mode != "sign" and not (self.certificate_column or self.certificate_dir):
            raise ValueError("encryption needs certificate_column or certificate_dir")
        if self.mode != "encrypt" and not (self.signer_certificate and self.signer_key):
            raise ValueError("signing needs signer_certificate and signer_key")
        return self
