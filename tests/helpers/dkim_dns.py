"""DKIM verification as a receiver does it: dkimpy's verifier, the key record from a real DNS
server (dnsmasq on loopback) asked through dnspython."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dkim  # type: ignore[import-untyped]  # dkimpy ships no type hints
import dns.resolver

from helpers.dns_server import Dnsmasq
from helpers.system_packages import require_binary
from raymail.compose.dkim_keys import GeneratedKey, generate_key, record_name

DnsFunc = Callable[..., bytes | None]


def zone(records: dict[str, str]) -> str:
    """dnsmasq config serving each ``name -> TXT value`` (split into 255-byte strings);
    other names under .test are answered NXDOMAIN, not refused."""
    lines = ["local=/test/"]
    for name, value in records.items():
        chunks = ",".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
        lines.append(f"txt-record={name},{chunks}")
    return "\n".join(lines) + "\n"


@contextmanager
def dkim_dns(folder: Path, records: dict[str, str]) -> Iterator[DnsFunc]:
    """A dnsmasq serving ``records``, and a dkimpy ``dnsfunc`` that asks it."""
    server = Dnsmasq(require_binary("dnsmasq", "dnsmasq-base"), folder, zone(records))
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = server.port

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode("ascii").rstrip("."), "TXT", lifetime=timeout)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        return b"".join(b"".join(r.strings) for r in answer)

    try:
        yield dnsfunc
    finally:
        server.stop()


def write_key(folder: Path, name: str, algorithm: str) -> tuple[Path, GeneratedKey]:
    """A fresh key pair; the private key written to ``folder/name.pem``."""
    generated = generate_key(algorithm)
    path = folder / f"{name}.pem"
    path.write_bytes(generated.private_pem)
    return path, generated


def records_for(domain: str, keys: dict[str, GeneratedKey]) -> dict[str, str]:
    """``selector -> key`` as DNS records of ``domain``."""
    return {record_name(s, domain): k.record for s, k in keys.items()}


def signatures(message: bytes) -> list[dict[str, str]]:
    """The tags of each DKIM-Signature field of ``message`` (whitespace removed)."""
    head = message.partition(b"\r\n\r\n")[0].decode("ascii", "replace")
    fields = re.findall(r"(?ims)^DKIM-Signature:(.*?)(?=^\S|\Z)", head + "\r\nX:")
    out = []
    for field in fields:
        tags = {}
        for tag in re.sub(r"\s+", "", field).split(";"):
            if "=" in tag:
                key, _, value = tag.partition("=")
                tags[key] = value
        out.append(tags)
    return out


def verify_all(message: bytes, dnsfunc: DnsFunc) -> list[bool]:
    """dkimpy's verdict on each signature of ``message``, top to bottom (a body hash
    mismatch, which dkimpy raises, is a failed signature)."""
    verdicts = []
    for i in range(len(signatures(message))):
        try:
            verdicts.append(bool(dkim.DKIM(message).verify(idx=i, dnsfunc=dnsfunc)))
        except dkim.ValidationError:
            verdicts.append(False)
    return verdicts
