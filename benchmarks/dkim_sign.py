"""Why raymail signs with ``cryptography`` and not dkimpy: the cost of one DKIM signature.

Signs the same personalised ~2 KB messages (the throughput benchmark's template) with
dkimpy's ``dkim.sign`` and with raymail's signer (``raymail.compose.dkim``), RSA-2048 and
Ed25519, in one process, one run; also the private-key operation alone and raymail's signer
without it (what its parsing, canonicalisation and hashing cost). A sample of raymail's
signatures is verified by dkimpy (keys given through its ``dnsfunc``). Prints JSON:
microseconds per message for each, and ``dkimpy_vs_raymail_*``.

    python benchmarks/dkim_sign.py [--messages 2000] [--dkimpy-messages 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import make_spec, write_recipients  # the same workload

DKIMPY_HEADERS = [b"from", b"subject", b"date", b"message-id", b"list-unsubscribe",
                  b"list-unsubscribe-post", b"to", b"mime-version", b"content-type"]  # fmt: skip
DIGEST = b"\x00" * 32


def per_message_us(sign: Callable[[bytes], object], messages: list[bytes], repeat: int) -> float:
    """Median over ``repeat`` passes of the time per message."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        for message in messages:
            sign(message)
        times.append((time.perf_counter() - started) / len(messages))
    return round(statistics.median(times) * 1e6, 1)


def key_operation(key: Any) -> Callable[[bytes], object]:
    """The private-key operation of one signature, on a fixed digest."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa
    from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

    if isinstance(key, rsa.RSAPrivateKey):
        return lambda _: key.sign(DIGEST, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    return lambda _: key.sign(DIGEST)


def dkimpy_signer(key: Any, pem: bytes, selector: str, domain: str) -> Callable[[bytes], bytes]:
    """dkimpy's sign with the same key (Ed25519 as dkimpy wants it: the base64 raw seed)."""
    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    algorithm = b"rsa-sha256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm = b"ed25519-sha256"
        raw = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )  # fmt: skip
        pem = base64.b64encode(raw)
    return lambda message: dkim.sign(
        message, selector.encode(), domain.encode(), pem, include_headers=DKIMPY_HEADERS,
        canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=algorithm,
    )  # fmt: skip


def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    import dkim
    import pyarrow.parquet as pq

    from raymail.compose import dkim as raymail_dkim
    from raymail.compose.dkim_keys import generate_key, load_private_key
    from raymail.compose.message import MessageTemplate
    from raymail.compose.settings import DkimSettings

    recipients = write_recipients(folder / "r.parquet", args.messages)
    spec = make_spec(recipients, 2525, 2, 20)
    template = MessageTemplate(spec)
    messages = [template.render(r["email"], r) for r in pq.read_table(recipients).to_pylist()]
    domain = spec.sender_domain
    result: dict[str, Any] = {
        "benchmark": "dkim_sign",
        "messages": args.messages,
        "dkimpy_messages": min(args.dkimpy_messages, args.messages),
        "message_bytes": round(sum(map(len, messages)) / len(messages)),
    }
    records: dict[bytes, bytes] = {}
    signers = {}
    for name, algorithm in (("rsa", "rsa-sha256"), ("ed25519", "ed25519-sha256")):
        generated = generate_key(algorithm)
        key_file = folder / f"{name}.pem"
        key_file.write_bytes(generated.private_pem)
        records[f"{name}._domainkey.{domain}.".encode()] = generated.record.encode()
        settings = DkimSettings(
            domain=domain, selector=name, key_file=str(key_file), algorithm=algorithm
        )  # type: ignore[call-arg]
        signer = raymail_dkim.DkimSigner([settings])
        signers[name] = signer
        key = load_private_key(generated.private_pem, algorithm, name)
        result[f"raymail_{name}_us"] = per_message_us(signer.sign, messages, args.repeat)
        result[f"{name}_key_operation_us"] = per_message_us(
            key_operation(key), messages, args.repeat
        )
        few = messages[: args.dkimpy_messages]
        dkimpy_sign = dkimpy_signer(key, generated.private_pem, name, domain)
        result[f"dkimpy_{name}_us"] = per_message_us(dkimpy_sign, few, 1)
        sample = [signer.sign(m) for m in messages[:20]]
        result[f"raymail_{name}_verified_by_dkimpy"] = all(
            dkim.verify(m, dnsfunc=lambda n, timeout=5: records.get(n)) for m in sample
        )
        result[f"dkimpy_vs_raymail_{name}"] = round(
            result[f"dkimpy_{name}_us"] / result[f"raymail_{name}_us"], 1
        )
    # Parsing, canonicalisation and hashing alone: the key operation taken out.
    original = raymail_dkim._Signature._sign
    raymail_dkim._Signature._sign = lambda self, digest: b"\x00" * 256  # type: ignore[method-assign]
    try:
        result["raymail_without_key_operation_us"] = per_message_us(
            signers["rsa"].sign, messages, args.repeat
        )
    finally:
        raymail_dkim._Signature._sign = original  # type: ignore[method-assign]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--dkimpy-messages", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="raymail-dkim-bench-") as tmp:
        result = measure(args, Path(tmp))
    print(json.dumps(result, indent=2))
    return 0 if all(v for k, v in result.items() if k.endswith("verified_by_dkimpy")) else 1


if __name__ == "__main__":
    sys.exit(main())
