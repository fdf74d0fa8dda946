"""S/MIME (RFC 8551): sign with the sender's key, encrypt to each recipient's certificate.

Applied to the body entity (content headers, blank line, body: text, alternative or mixed
with attachments) after rendering and before any DKIM signature, since DKIM signs the final
bytes. The message's own headers (From, To, Subject, Date, Message-ID, List-Unsubscribe)
stay outside, readable by every MTA.

- ``sign``: multipart/signed (protocol application/pkcs7-signature, micalg sha-256) with a
  detached CMS signature of the entity's exact bytes (already CRLF, so nothing is
  canonicalised on the way: ``Binary``).
- ``encrypt``: application/pkcs7-mime; smime-type=enveloped-data, content encrypted with
  AES-256-CBC for the recipient's RSA certificate (``cryptography``'s PKCS7EnvelopeBuilder).
- ``sign_and_encrypt``: signed first, then the signed entity encrypted (RFC 8551 3.6).

A recipient's certificate comes from the row (``certificate_column``) or from
``certificate_dir/ADDRESS.pem``; it must parse, be valid now and name the recipient's
address (subjectAltName rfc822Name, or the subject's emailAddress). When it does not, the
spec's ``on_missing_certificate`` answers: ``plain`` sends without encryption (signed if
signing), ``skip`` rejects the row at intake with the reason, ``fail`` stops the campaign
before anything is sent. A certificate that goes bad between intake and sending fails that
recipient (never a silent plain send unless the policy says ``plain``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from raymail.compose.attachments import base64_lines, list_folder
from raymail.compose.settings import SmimeSettings
from raymail.errors import SmimeError, TemplateError
from raymail.spec import CampaignSpec

_CACHE: Final = 4096  # recipient certificates kept parsed per delivery server


def certificate_path(
    settings: SmimeSettings, email: str, value: str | None, list_folder: Path
) -> Path | None:
    """Where this recipient's certificate should be (None: nowhere configured)."""
    if value and value.strip():
        path = Path(value.strip()).expanduser()
        return path if path.is_absolute() else list_folder / path
    if settings.certificate_dir:
        return Path(settings.certificate_dir) / f"{email.lower()}.pem"
    return None


def load_certificate(
    path: Path | None, email: str, *, now: datetime | None = None
) -> x509.Certificate:
    """The recipient's certificate, checked: SmimeError saying why it cannot be used."""
    if path is None:
        raise SmimeError(f"no certificate for {email}")
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise SmimeError(f"certificate {path}: file not found") from None
    except OSError as exc:
        raise SmimeError(f"certificate {path}: cannot read: {exc.strerror}") from None
    except ValueError:
        raise SmimeError(f"certificate {path}: not a PEM X.509 certificate") from None
    moment = now or datetime.now(UTC)
    if moment > cert.not_valid_after_utc:
        raise SmimeError(f"certificate {path}: expired on {cert.not_valid_after_utc:%Y-%m-%d}")
    if moment < cert.not_valid_before_utc:
        raise SmimeError(
            f"certificate {path}: not valid before {cert.not_valid_before_utc:%Y-%m-%d}"
        )
    if email.lower() not in _addresses(cert):
        raise SmimeError(f"certificate {path}: not for {email} (names {_shown(cert)})")
    if not isinstance(cert.public_key(), rsa.RSAPublicKey):
        raise SmimeError(f"certificate {path}: not an RSA key (encryption needs RSA)")
    return cert


def _addresses(cert: x509.Certificate) -> set[str]:
    found = {
        str(a.value).lower() for a in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)
    }
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found |= {name.lower() for name in san.get_values_for_type(x509.RFC822Name)}
    except x509.ExtensionNotFound:
        pass
    return found


def _shown(cert: x509.Certificate) -> str:
    names = sorted(_addresses(cert))
    return ", ".join(names) if names else "no address"


def check_row(
    settings: SmimeSettings, email: str, value: str | None, list_folder: Path
) -> str | None:
    """Why this recipient cannot get an encrypted message (None: they can)."""
    if settings.mode == "sign":
        return None
    try:
        load_certificate(certificate_path(settings, email, value, list_folder), email)
    except SmimeError as exc:
        return str(exc)
    return None


class SmimeProtector:
    """Signs and/or encrypts body entities for one campaign (one per delivery server)."""

    def __init__(self, settings: SmimeSettings, list_folder: Path, boundary: str) -> None:
        self.settings = settings
        self.column = settings.certificate_column
        self._folder = list_folder
        self._boundary = boundary
        self._certs: OrderedDict[Path, x509.Certificate] = OrderedDict()
        self._signer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None = None
        if settings.mode != "encrypt":
            self._signer = _load_signer(settings)

    @classmethod
    def for_spec(cls, spec: CampaignSpec, boundary: str) -> SmimeProtector | None:
        if spec.smime is None:
            return None
        try:
            return cls(spec.smime, list_folder(spec), boundary)
        except SmimeError as exc:
            raise TemplateError(str(exc)) from None

    @property
    def encrypts(self) -> bool:
        return self.settings.mode != "sign"

    def protect(self, entity: bytes, email: str, fields: Mapping[str, str]) -> bytes:
        """The S/MIME entity that replaces ``entity``; TemplateError fails this recipient."""
        if self._signer is not None:
            entity = self._sign(entity)
        if not self.encrypts:
            return entity
        path = certificate_path(self.settings, email, fields.get(self.column or ""), self._folder)
        try:
            cert = self._certificate(path, email)
        except SmimeError as exc:
            if self.settings.on_missing_certificate == "plain":
                return entity  # the policy's explicit choice
            raise TemplateError(f"S/MIME: {exc}") from None
        return self._encrypt(entity, cert)

    def _certificate(self, path: Path | None, email: str) -> x509.Certificate:
        if path is not None and path in self._certs:
            cert = self._certs[path]
            self._certs.move_to_end(path)
            if datetime.now(UTC) <= cert.not_valid_after_utc:
                return cert
        cert = load_certificate(path, email)
        assert path is not None
        self._certs[path] = cert
        if len(self._certs) > _CACHE:
            self._certs.popitem(last=False)
        return cert

    def _sign(self, entity: bytes) -> bytes:
        assert self._signer is not None
        cert, key = self._signer
        signature = (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(entity)
            .add_signer(cert, key, hashes.SHA256())
            .sign(
                serialization.Encoding.DER,
                [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
            )
        )
        b = f"{self._boundary}_sig"
        return b"".join(
            (
                f'Content-Type: multipart/signed; protocol="application/pkcs7-signature"; '
                f'micalg=sha-256;\r\n boundary="{b}"\r\n\r\n'
                "This is an S/MIME signed message.\r\n"
                f"--{b}\r\n".encode("ascii"),
                entity,
                f"\r\n--{b}\r\n"
                'Content-Type: application/pkcs7-signature; name="smime.p7s"\r\n'
                "Content-Transfer-Encoding: base64\r\n"
                'Content-Disposition: attachment; filename="smime.p7s"\r\n\r\n'.encode("ascii"),
                base64_lines(signature),
                f"--{b}--\r\n".encode("ascii"),
            )
        )

    def _encrypt(self, entity: bytes, cert: x509.Certificate) -> bytes:
        envelope = (
            pkcs7.PKCS7EnvelopeBuilder()
            .set_data(entity)
            .add_recipient(cert)
            .set_content_encryption_algorithm(algorithms.AES256)
            .encrypt(serialization.Encoding.DER, [pkcs7.PKCS7Options.Binary])
        )
        head = (
            'Content-Type: application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"\r\n'
            "Content-Transfer-Encoding: base64\r\n"
            'Content-Disposition: attachment; filename="smime.p7m"\r\n\r\n'
        )
        return head.encode("ascii") + base64_lines(envelope)


def _load_signer(settings: SmimeSettings) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
    cert_path, key_path = Path(settings.signer_certificate or ""), Path(settings.signer_key or "")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise SmimeError(f"smime.signer_certificate {cert_path}: unusable: {exc}") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SmimeError(f"smime.signer_key {key_path}: unusable: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise SmimeError(f"smime.signer_key {key_path}: not an RSA key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise SmimeError(f"smime.signer_key {key_path}: does not match the signer certificate")
    return cert, key
