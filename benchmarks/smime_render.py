"""Benchmark: the cost of S/MIME per message, side by side with a plain render.

Renders the same ~2 KB personalised message (``MessageTemplate.render``) four ways in
alternating rounds: plain, ``sign`` (RSA-2048, SHA-256, detached), ``encrypt`` (AES-256-CBC
for an RSA-2048 recipient certificate) and ``sign_and_encrypt``. Certificates come from a
throwaway CA made at start; the recipient certificate is parsed once and cached, as a
delivery server does. Prints microseconds per message (best and median of ``--repeat``
rounds), each mode's ratio to plain, and the messages per second one core renders.

    python benchmarks/smime_render.py [--number 500] [--repeat 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from raymail.compose.message import MessageTemplate
from raymail.spec import parse_spec

RECIPIENT = "reader@example.com"
SENDER = "news@sender.example"
TEXT = "Hello {{ first_name }},\n\n" + "Lorem ipsum dolor sit amet, consectetur.\n" * 40
MODES = ("plain", "sign", "encrypt", "sign_and_encrypt")


def _issue(folder: Path, email: str, ca: tuple[x509.Name, rsa.RSAPrivateKey] | None) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, email)])
    issuer, signing_key = ca or (name, key)
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .sign(signing_key, hashes.SHA256())
    )
    (folder / f"{email}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{email}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def template(mode: str, certs: Path) -> MessageTemplate:
    data: dict[str, Any] = {
        "campaign": "bench",
        "sender": f"Raymail Bench <{SENDER}>",
        "subject": "Spring news, {{ first_name }}",
        "text": TEXT,
        "recipients": "unused.csv",
        "verp_secret": "bench-secret",
    }
    if mode != "plain":
        data["smime"] = {
            "mode": mode,
            "certificate_dir": str(certs),
            "signer_certificate": str(certs / f"{SENDER}.pem"),
            "signer_key": str(certs / f"{SENDER}.key"),
        }
    return MessageTemplate(parse_spec(data, "bench"))


def per_message_us(tpl: MessageTemplate, number: int) -> float:
    start = time.perf_counter()
    for i in range(number):
        tpl.render(RECIPIENT, {"first_name": f"Reader {i}"})
    return (time.perf_counter() - start) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--number", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        certs = Path(folder)
        _issue(certs, SENDER, None)
        _issue(certs, RECIPIENT, None)
        templates = {mode: template(mode, certs) for mode in MODES}
        sizes = {m: len(t.render(RECIPIENT, {"first_name": "R"})) for m, t in templates.items()}
        results: dict[str, list[float]] = {mode: [] for mode in MODES}
        for _ in range(args.repeat):  # alternate, so load changes hit every mode alike
            for mode, tpl in templates.items():
                results[mode].append(per_message_us(tpl, args.number))
    best = {mode: min(values) for mode, values in results.items()}
    out = {
        "benchmark": "smime_render",
        "renders_per_round": args.number,
        "rounds": args.repeat,
        "message_bytes": sizes,
        **{f"{m}_best_us": round(v, 1) for m, v in best.items()},
        **{f"{m}_median_us": round(statistics.median(v), 1) for m, v in results.items()},
        **{f"{m}_vs_plain": round(best[m] / best["plain"], 1) for m in MODES[1:]},
        **{f"{m}_msgs_per_s_one_core": round(1e6 / v) for m, v in best.items()},
        "python": platform.python_version(),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
