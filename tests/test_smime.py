"""S/MIME: messages raymail encrypts and signs are decrypted and verified by openssl; a
recipient without a usable certificate gets the policy's answer, never a silent plain send."""

from __future__ import annotations

import email
import email.policy
import subprocess
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from conftest import make_spec, write_csv
from helpers.smime_certs import SmimeCA
from helpers.system_packages import require_binary
from raymail.compose.checks import recipient_checks
from raymail.compose.message import MessageTemplate
from raymail.driver.campaign import run_campaign
from raymail.errors import SmimeError, TemplateError
from raymail.intake.recipients import intake_recipients
from raymail.sink import SinkConfig, read_capture, run_sink


@pytest.fixture(scope="module")
def openssl() -> str:
    return require_binary("openssl", "openssl")


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> SmimeCA:
    authority = SmimeCA(tmp_path_factory.mktemp("certs"))
    authority.issue("news@sender.test")  # the signer
    for address in ("ann@x.test", "bob@x.test"):
        authority.issue(address)
    authority.issue("old@x.test", expired=True)
    authority.issue("eve@x.test", names=["someone-else@x.test"])
    return authority


def _smime(ca: SmimeCA, mode: str, **extra: Any) -> dict[str, Any]:
    settings = {"mode": mode, "certificate_dir": str(ca.dir), **extra}
    if mode != "encrypt":
        settings |= {"signer_certificate": str(ca.dir / "news@sender.test.pem"),
                     "signer_key": str(ca.dir / "news@sender.test.key")}  # fmt: skip
    return settings


def _openssl(openssl: str, *args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([openssl, *args], input=data, capture_output=True, timeout=60)


def _decrypt(openssl: str, ca: SmimeCA, address: str, raw: bytes) -> bytes:
    done = _openssl(openssl, "cms", "-decrypt", "-recip", str(ca.dir / f"{address}.pem"),
                    "-inkey", str(ca.dir / f"{address}.key"), data=raw)  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def _verify(openssl: str, ca: SmimeCA, signed: bytes) -> bytes:
    done = _openssl(openssl, "smime", "-verify", "-CAfile", str(ca.ca_path), data=signed)
    assert done.returncode == 0, done.stderr.decode()
    assert b"Verification successful" in done.stderr
    return done.stdout


def _parse(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_encrypted_for_the_recipient_with_aes_256(
    openssl: str, ca: SmimeCA, tmp_path: Path
) -> None:
    template = MessageTemplate(make_spec(tmp_path / "l.csv", 25, smime=_smime(ca, "encrypt")))
    assert not template.shareable
    raw = template.render("ann@x.test", {"name": "Ann"})
    outer = _parse(raw)
    assert outer["To"] == "ann@x.test" and outer["Subject"] == "Hello Ann"  # headers readable
    assert outer.get_content_type() == "application/pkcs7-mime"
    assert outer.get_param("smime-type") == "enveloped-data"
    assert b"Hi Ann" not in raw  # the body is not readable on the way
    structure = _openssl(openssl, "cms", "-cmsout", "-print", "-inform", "SMIME", data=raw)
    assert b"aes-256-cbc" in structure.stdout
    inner = _parse(_decrypt(openssl, ca, "ann@x.test", raw))
    assert inner.get_content_type() == "text/plain" and "Hi Ann," in inner.get_content()
    # Bob's key cannot open Ann's message.
    wrong = _openssl(openssl, "cms", "-decrypt", "-recip", str(ca.dir / "bob@x.test.pem"),
                     "-inkey", str(ca.dir / "bob@x.test.key"), data=raw)  # fmt: skip
    assert wrong.returncode != 0


def test_signed_verifies_and_a_changed_byte_does_not(
    openssl: str, ca: SmimeCA, tmp_path: Path
) -> None:
    spec = make_spec(tmp_path / "l.csv", 25, html="<p>Hi {{ name }}</p>", smime=_smime(ca, "sign"))
    raw = MessageTemplate(spec).render("anyone@y.test", {"name": "Zoe"})  # no cert needed
    outer = _parse(raw)
    assert outer.get_content_type() == "multipart/signed"
    assert outer.get_param("protocol") == "application/pkcs7-signature"
    content = _parse(_verify(openssl, ca, raw))
    assert content.get_content_type() == "multipart/alternative"
    tampered = raw.replace(b"Hi Zoe", b"Hi Zed", 1)
    assert _openssl(openssl, "smime", "-verify", "-CAfile", str(ca.ca_path),
                    data=tampered).returncode != 0  # fmt: skip


def test_sign_then_encrypt_with_an_attachment(openssl: str, ca: SmimeCA, tmp_path: Path) -> None:
    doc = tmp_path / "terms.pdf"
    doc.write_bytes(b"%PDF terms " * 300)
    spec = make_spec(tmp_path / "l.csv", 25, smime=_smime(ca, "sign_and_encrypt"),
                     attachments={"files": [str(doc)]})  # fmt: skip
    raw = MessageTemplate(spec).render("bob@x.test", {"name": "Bob"})
    signed = _decrypt(openssl, ca, "bob@x.test", raw)
    assert _parse(signed).get_content_type() == "multipart/signed"
    mixed = _parse(_verify(openssl, ca, signed))
    text, pdf = list(mixed.iter_parts())
    assert "Hi Bob," in text.get_content() and pdf.get_content() == doc.read_bytes()


def test_certificate_problems_get_the_policy_answer(ca: SmimeCA, tmp_path: Path) -> None:
    (tmp_path / "mine.pem").write_bytes((ca.dir / "bob@x.test.pem").read_bytes())
    csv = write_csv(
        tmp_path / "list.csv",
        "email,name,cert",
        [
            "ann@x.test,A,",  # from the directory
            "nobody@x.test,N,",  # none anywhere
            "old@x.test,O,",  # expired
            "eve@x.test,E,",  # names another address
            "bob@x.test,B,mine.pem",  # from the row's column (relative to the list)
            "carl@x.test,C,mine.pem",  # Bob's certificate on Carl's row
        ],
    )
    run = tmp_path / "run"
    run.mkdir()
    spec = make_spec(csv, 25, smime=_smime(ca, "encrypt", certificate_column="cert"))
    result = intake_recipients(csv, run, "recipients.parquet", row_check=recipient_checks(spec))
    assert result.accepted == 2
    assert pl.read_parquet(run / "recipients.parquet")["email"].to_list() == [
        "ann@x.test",
        "bob@x.test",
    ]
    reasons = dict(pl.read_parquet(run / "rejects.parquet").select("row", "reason").iter_rows())
    assert "nobody@x.test.pem: file not found" in reasons[2]
    assert "expired on" in reasons[3]
    assert "not for eve@x.test (names someone-else@x.test)" in reasons[4]
    assert "not for carl@x.test (names bob@x.test)" in reasons[6]
    # fail: the campaign stops before anything is sent.
    failing = make_spec(csv, 25, smime=_smime(ca, "encrypt", on_missing_certificate="fail"))
    with pytest.raises(SmimeError, match=r"recipient nobody@x\.test: .*nothing was sent"):
        intake_recipients(csv, tmp_path, "r2.parquet", row_check=recipient_checks(failing))
    # plain: the row stays and goes out unencrypted, as the policy says ...
    plain = make_spec(csv, 25, smime=_smime(ca, "encrypt", on_missing_certificate="plain"))
    check = recipient_checks(plain)
    assert check is not None and check(pl.read_csv(csv, infer_schema=False).to_arrow()) == []
    raw = MessageTemplate(plain).render("nobody@x.test", {"name": "N"})
    assert _parse(raw).get_content_type() == "text/plain"
    # ... but under skip, a certificate gone since intake fails the recipient, never plain.
    with pytest.raises(TemplateError, match=r"S/MIME: .*nobody@x\.test\.pem: file not found"):
        MessageTemplate(spec).render("nobody@x.test", {"name": "N", "cert": ""})


@pytest.mark.usefixtures("ray_session")
@pytest.mark.slow
def test_encrypted_campaign_through_the_sink(openssl: str, ca: SmimeCA, tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "list.csv", "email,name",
                    ["ann@x.test,Ann", "bob@x.test,Bob", "old@x.test,Old"])  # fmt: skip
    with run_sink(SinkConfig(), capture_dir=tmp_path / "cap") as sink:
        spec = make_spec(csv, sink.port, smime=_smime(ca, "sign_and_encrypt"))
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
    assert report.accepted == 2 and report.rejected_input == 1
    captured = read_capture(tmp_path / "cap", with_data=True)
    assert sorted(captured["rcpt_to"].to_list()) == ["ann@x.test", "bob@x.test"]
    for rcpt, raw in zip(captured["rcpt_to"], captured["data"], strict=True):
        content = _parse(_verify(openssl, ca, _decrypt(openssl, ca, rcpt, raw)))
        assert f"Hi {rcpt.split('@')[0].title()}," in content.get_content()
    rejects = pl.read_parquet(tmp_path / "run" / "rejects.parquet")
    assert rejects["value"].to_list() == ["old@x.test"] and "expired" in rejects["reason"][0]


def test_dkim_signs_the_encrypted_message(openssl: str, ca: SmimeCA, tmp_path: Path) -> None:
    """S/MIME comes first, DKIM last: the signature covers the bytes that travel, and a
    verifier (dkimpy, keys from real DNS) accepts the encrypted message."""
    from helpers.dkim_dns import dkim_dns, records_for, verify_all, write_key

    key_path, key = write_key(tmp_path, "rsa", "rsa-sha256")
    dkim = [{"domain": "sender.test", "selector": "s1", "key_file": str(key_path)}]
    spec = make_spec(tmp_path / "l.csv", 25, smime=_smime(ca, "sign_and_encrypt"), dkim=dkim)
    raw = MessageTemplate(spec).render("ann@x.test", {"name": "Ann"})
    assert raw.startswith(b"DKIM-Signature:")
    with dkim_dns(tmp_path, records_for("sender.test", {"s1": key})) as dnsfunc:
        assert verify_all(raw, dnsfunc) == [True]
    content = _parse(_verify(openssl, ca, _decrypt(openssl, ca, "ann@x.test", raw)))
    assert "Hi Ann," in content.get_content()
