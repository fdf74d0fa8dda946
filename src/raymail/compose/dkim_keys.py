"""DKIM keys: read a private key and check it fits its algorithm; make pairs; the DNS record.

Apart from signing (``raymail.compose.dkim``) so that the campaign spec can check every key
when it is loaded, before anything is sent, without importing the composer. Keys are PEM
(PKCS#8 or PKCS#1 for RSA, PKCS#8 for Ed25519), unencrypted; RSA keys have at least 1024 bits
(RFC 8301 forbids verifiers to accept less; 2048 is what ``generate`` makes).
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from raymail.errors import DkimError

__all__ = [
    "ALGORITHMS",
    "ED25519_SHA256",
    "RSA_SHA256",
    "GeneratedKey",
    "PrivateKey",
    "dns_record",
    "generate_key",
    "load_private_key",
    "read_key_source",
    "record_name",
    "write_key_pair",
    "zone_line",
]

RSA_SHA256: Final = "rsa-sha256"
ED25519_SHA256: Final = "ed25519-sha256"
ALGORITHMS: Final = (RSA_SHA256, ED25519_SHA256)
MIN_RSA_BITS: Final = 1024
DEFAULT_RSA_BITS: Final = 2048
_TXT_CHUNK: Final = 255  # longest character-string of a TXT record (RFC 1035 3.3)

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def read_key_source(key_file: str | None, key_env: str | None) -> tuple[bytes, str]:
    """The PEM bytes of a key and where they came from (for error messages)."""
    if key_file:
        where = f"key_file {key_file}"
        try:
            return Path(key_file).read_bytes(), where
        except FileNotFoundError:
            raise DkimError(f"{where}: no such file") from None
        except OSError as exc:
            raise DkimError(f"{where}: cannot read it: {exc.strerror}") from None
    if key_env:
        where = f"key_env ${key_env}"
        value = os.environ.get(key_env)
        if not value:
            raise DkimError(f"{where}: the environment variable is not set or empty")
        return value.replace("\\n", "\n").encode("utf-8"), where
    raise DkimError("give key_file or key_env")


def load_private_key(pem: bytes, algorithm: str, where: str) -> PrivateKey:
    """Parse ``pem`` and check it is a key for ``algorithm``; DkimError naming ``where``."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        raise DkimError(f"{where}: the key is encrypted; give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise DkimError(f"{where}: not a readable PEM private key ({exc})") from None
    if algorithm == RSA_SHA256:
        if not isinstance(key, rsa.RSAPrivateKey):
            raise DkimError(f"{where}: {_kind(key)} key, but algorithm is {RSA_SHA256}")
        if key.key_size < MIN_RSA_BITS:
            raise DkimError(
                f"{where}: RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} "
                "(RFC 8301), 2048 recommended"
            )
        return key
    if algorithm == ED25519_SHA256:
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise DkimError(f"{where}: {_kind(key)} key, but algorithm is {ED25519_SHA256}")
        return key
    raise DkimError(f"{where}: unknown algorithm {algorithm!r} (one of {', '.join(ALGORITHMS)})")


def _kind(key: object) -> str:
    """'an RSA', 'an Ed25519', 'an EC', 'a DSA': what a key is, for error messages."""
    name = type(key).__name__.removeprefix("_").removesuffix("PrivateKey")
    return ("an " if name in {"RSA", "Ed25519", "Ed448", "EC", "X25519", "X448"} else "a ") + name


def dns_record(key: PrivateKey) -> str:
    """The TXT record value publishing ``key``'s public half (RFC 6376 3.6.1, RFC 8463)."""
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def record_name(selector: str, domain: str) -> str:
    """Where verifiers look the key up: ``selector._domainkey.domain``."""
    return f"{selector}._domainkey.{domain}".lower()


def zone_line(selector: str, domain: str, record: str) -> str:
    """A zone-file line; the value split in strings of at most 255 characters."""
    chunks = [record[i : i + _TXT_CHUNK] for i in range(0, len(record), _TXT_CHUNK)]
    quoted = " ".join(f'"{c}"' for c in chunks)
    return f"{record_name(selector, domain)}. IN TXT ( {quoted} )"


@dataclass(frozen=True, slots=True)
class GeneratedKey:
    """A new key pair: the private key as PEM and the DNS record to publish."""

    private_pem: bytes
    record: str


def generate_key(algorithm: str = RSA_SHA256, bits: int = DEFAULT_RSA_BITS) -> GeneratedKey:
    """A fresh key for ``algorithm`` (RSA of ``bits`` bits, or Ed25519)."""
    key: PrivateKey
    if algorithm == RSA_SHA256:
        if bits < MIN_RSA_BITS:
            raise DkimError(f"RSA keys need at least {MIN_RSA_BITS} bits, not {bits}")
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif algorithm == ED25519_SHA256:
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise DkimError(f"unknown algorithm {algorithm!r} (one of {', '.join(ALGORITHMS)})")
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return GeneratedKey(pem, dns_record(key))


def write_key_pair(folder: Path, selector: str, domain: str, generated: GeneratedKey) -> Path:
    """Write ``SELECTOR.DOMAIN.pem`` (mode 0600) and ``.txt`` (the record); never overwrite."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{selector}.{domain}".lower()
    private, public = folder / f"{stem}.pem", folder / f"{stem}.txt"
    for path in (private, public):
        if path.exists():
            raise DkimError(f"{path}: exists already; remove it or choose another --out")
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(generated.private_pem)
    public.write_text(zone_line(selector, domain, generated.record) + "\n", encoding="ascii")
    return private
