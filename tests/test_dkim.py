"""DKIM signing, checked by an independent verifier (dkimpy) with keys served by real DNS.

Also: keys are checked when the spec is loaded (a clear error before anything is sent),
``raymail dkim keygen`` writes a pair whose printed record verifies, and the sender set-up
warnings (alignment, HELO name).
"""

from __future__ import annotations

import pickle
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from helpers.dkim_dns import dkim_dns, records_for, signatures, verify_all, write_key
from raymail.cli import _register, app
from raymail.compose.dkim import DkimSigner, alignment_warnings, canonical_body, canonical_header
from raymail.compose.message import MessageTemplate
from raymail.compose.settings import DKIM_REQUIRED_HEADERS
from raymail.delivery.envelope import helo_name, sender_setup_warnings
from raymail.errors import DkimError, SpecError
from raymail.run.rundir import RunDir
from raymail.spec import load_spec, parse_spec

DOMAIN = "sender.test"


def _spec(tmp_path: Path, dkim: list[dict[str, Any]], **overrides: Any) -> Any:
    data: dict[str, Any] = {
        "campaign": "dkim-test",
        "sender": f"Sender <news@{DOMAIN}>",
        "subject": "Hello {{ name }}",
        "text": "Hi {{ name }},\n  two  spaces\tand a tab stay as they are.\n",
        "html": "<p>Hi {{ name }}</p>\n",
        "recipients": str(tmp_path / "list.csv"),
        "unsubscribe_url": "https://sender.test/u/{token}",
        "verp_secret": "s",
        "dkim": dkim,
    }
    data.update(overrides)
    return parse_spec(data, "test-spec")


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    rsa_path, rsa = write_key(tmp_path, "rsa", "rsa-sha256")
    ed_path, ed = write_key(tmp_path, "ed", "ed25519-sha256")
    return {
        "settings": [
            {"domain": DOMAIN, "selector": "r2026", "key_file": str(rsa_path)},
            {
                "domain": DOMAIN,
                "selector": "e2026",
                "key_file": str(ed_path),
                "algorithm": "ed25519-sha256",
            },
        ],
        "records": records_for(DOMAIN, {"r2026": rsa, "e2026": ed}),
        "rsa_path": rsa_path,
        "ed_path": ed_path,
    }


def test_relaxed_canonicalisation_matches_rfc6376_example() -> None:
    # RFC 6376 3.4.5
    assert canonical_header(b"A: X") == b"a:X\r\n"
    assert canonical_header(b"B : Y\t\r\n\tZ  ") == b"b:Y Z\r\n"
    assert canonical_body(b" C \r\nD \t E\r\n\r\n\r\n") == b" C\r\nD E\r\n"
    assert canonical_body(b"") == b""
    assert canonical_body(b"\r\n\r\n") == b""


def test_rsa_and_ed25519_signatures_verify_through_dns(
    tmp_path: Path, keys: dict[str, Any]
) -> None:
    template_spec = _spec(tmp_path, keys["settings"])
    template = MessageTemplate(template_spec)
    shared_spec = _spec(
        tmp_path, keys["settings"], subject="News", text="Same for all\n", html=None,
        unsubscribe_url=None,
    )  # fmt: skip
    shared = MessageTemplate(shared_spec)
    assert shared.shareable
    messages = [
        template.render("ann@example.org", {"name": "Ann"}),
        template.render("bob@example.org", {"name": "Bøb  Ünïcode"}),
        shared.render_shared(["a@example.org", "b@example.org"]),
    ]
    with dkim_dns(tmp_path, keys["records"]) as dnsfunc:
        for message in messages:
            assert verify_all(message, dnsfunc) == [True, True], message[:1500]
            tags = signatures(message)
            assert {t["a"] for t in tags} == {"rsa-sha256", "ed25519-sha256"}
            assert {t["d"] for t in tags} == {DOMAIN}
            for tag in tags:
                signed = set(tag["h"].split(":"))
                text = message.decode().lower()
                present = {h for h in DKIM_REQUIRED_HEADERS if f"\n{h}:" in text}
                assert present <= signed
        assert "list-unsubscribe-post" in signatures(messages[0])[0]["h"]
        # A changed header or body no longer verifies; nor does a key that is not published.
        assert verify_all(messages[0].replace(b"Hello Ann", b"Hello Eve"), dnsfunc) == [
            False,
            False,
        ]
        assert verify_all(messages[0].replace(b"Hi Ann", b"Hi Eve"), dnsfunc) == [False, False]
        # One signer, static headers that change (its cached hash state must follow).
        signer = DkimSigner(template_spec.dkim)
        plain = b"Subject: s\r\nDate: d\r\nMessage-ID: <m@x>\r\n\r\nbody  text \r\n"
        for sender in (b"a@sender.test", b"b@sender.test", b"a@sender.test"):
            message = signer.sign(b"From: " + sender + b"\r\nMIME-Version: 1.0\r\n" + plain)
            assert verify_all(message, dnsfunc) == [True, True]
        other = _spec(tmp_path, [{**keys["settings"][0], "selector": "unpublished"}])
        assert verify_all(MessageTemplate(other).render("c@example.org", {"name": "C"}),
                          dnsfunc) == [False]  # fmt: skip


def test_signer_reuses_hashes_but_not_signatures(tmp_path: Path, keys: dict[str, Any]) -> None:
    spec = _spec(tmp_path, keys["settings"][:1])
    signer = DkimSigner(spec.dkim)
    one = b"From: a@sender.test\r\nSubject: x\r\nDate: d\r\nMessage-ID: <1@x>\r\n\r\nbody\r\n"
    two = one.replace(b"<1@x>", b"<2@x>")
    first, second, again = (signer.sign(m, now=100) for m in (one, two, one))
    assert signatures(first)[0]["bh"] == signatures(second)[0]["bh"]
    assert signatures(first)[0]["b"] != signatures(second)[0]["b"]
    assert first == again  # RSA PKCS#1 v1.5 is deterministic: same input, same bytes
    with pytest.raises(DkimError, match="From"):
        signer.sign(b"Subject: x\r\n\r\nbody\r\n")


def test_spec_accepts_relative_key_file_and_key_env(
    tmp_path: Path, keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "campaign"
    folder.mkdir()
    shutil.copy(keys["rsa_path"], folder / "rsa.pem")
    monkeypatch.setenv("RAYMAIL_TEST_ED_KEY", keys["ed_path"].read_text())
    (folder / "list.csv").write_text("email\nx@example.org\n")
    spec_file = folder / "campaign.yaml"
    spec_file.write_text(
        yaml.safe_dump(
            {
                "campaign": "c", "sender": f"news@{DOMAIN}", "subject": "s", "text": "t",
                "recipients": "list.csv",
                "dkim": [
                    {"domain": DOMAIN, "selector": "r2026", "key_file": "rsa.pem"},
                    {"domain": DOMAIN, "selector": "e2026", "key_env": "RAYMAIL_TEST_ED_KEY",
                     "algorithm": "ed25519-sha256"},
                ],
            }
        )
    )  # fmt: skip
    spec = load_spec(spec_file)
    assert spec.dkim[0].key_file == str(folder / "rsa.pem")
    with dkim_dns(tmp_path, keys["records"]) as dnsfunc:
        message = MessageTemplate(spec).render("x@example.org", {})
        assert verify_all(message, dnsfunc) == [True, True]
        # The key travels to delivery servers inside the (pickled) spec, not in spec.yaml.
        copy = pickle.loads(pickle.dumps(spec))
        assert verify_all(MessageTemplate(copy).render("x@example.org", {}), dnsfunc) == [
            True,
            True,
        ]
    rd = RunDir(tmp_path / "run")
    rd.create(spec)
    written = (tmp_path / "run" / "spec.yaml").read_text()
    assert "PRIVATE KEY" not in written
    assert rd.spec().dkim[0].private_pem == (folder / "rsa.pem").read_bytes()


def _openssl_key(tmp_path: Path, name: str, *args: str) -> Path:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed")
    path = tmp_path / f"{name}.pem"
    subprocess.run([openssl, "genpkey", *args, "-out", str(path)], check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    return path


def test_bad_keys_are_clear_errors_at_spec_load(
    tmp_path: Path, keys: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    small = _openssl_key(tmp_path, "small", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512")
    ec = _openssl_key(tmp_path, "ec", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256")
    encrypted = _openssl_key(tmp_path, "enc", "-algorithm", "ed25519", "-aes256", "-pass", "pass:x")
    monkeypatch.delenv("RAYMAIL_NO_SUCH_KEY", raising=False)
    base = {"domain": DOMAIN, "selector": "s1"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({**base, "key_file": str(tmp_path / "missing.pem")}, "missing.pem: no such file"),
        ({**base, "key_file": str(garbage)}, "garbage.pem: not a readable PEM private key"),
        ({**base, "key_file": str(keys["ed_path"])}, "an Ed25519 key, but algorithm is rsa-sha256"),
        ({**base, "key_file": str(keys["rsa_path"]), "algorithm": "ed25519-sha256"},
         "an RSA key, but algorithm is ed25519-sha256"),
        ({**base, "key_file": str(small)}, "RSA key of 512 bits; at least 1024"),
        ({**base, "key_file": str(ec)}, "an EC key, but algorithm is rsa-sha256"),
        ({**base, "key_file": str(encrypted), "algorithm": "ed25519-sha256"}, "encrypted"),
        ({**base, "key_env": "RAYMAIL_NO_SUCH_KEY"}, "$RAYMAIL_NO_SUCH_KEY: the environment"),
        (base, "exactly one of key_file and key_env"),
        ({**base, "key_file": str(keys["rsa_path"]), "key_env": "X"}, "exactly one of"),
        ({**base, "key_file": str(keys["rsa_path"]), "headers": ["from", "subject"]},
         "must include date, message-id, list-unsubscribe, list-unsubscribe-post"),
        ({**base, "key_file": str(keys["rsa_path"]), "algorithm": "rsa-sha1"}, "algorithm"),
        ({**base, "domain": "not a domain", "key_file": str(keys["rsa_path"])}, "domain"),
    ]  # fmt: skip
    for entry, expected in cases:
        with pytest.raises(SpecError) as caught:
            _spec(tmp_path, [entry])
        message = str(caught.value)
        assert "dkim.0" in message and expected in message, (entry, message)
    twice = {**base, "key_file": str(keys["rsa_path"])}
    with pytest.raises(SpecError, match=r"two signatures with domain sender\.test and selector s1"):
        _spec(tmp_path, [twice, twice])


def test_alignment_and_helo_warnings(tmp_path: Path, keys: dict[str, Any]) -> None:
    aligned = _spec(tmp_path, keys["settings"], smtp={"helo_name": "mta1.sender.test"})
    assert alignment_warnings(aligned) == []
    assert sender_setup_warnings(aligned) == []
    sub = _spec(tmp_path, [{**keys["settings"][0], "domain": "mail.sender.test"}])
    assert alignment_warnings(sub) == []  # relaxed alignment: a subdomain of From's
    foreign = _spec(tmp_path, [{**keys["settings"][0], "domain": "esp.example"}])
    (warning,) = alignment_warnings(foreign)
    assert "esp.example" in warning and "sender.test" in warning
    dotless = _spec(
        tmp_path, [], smtp={"helo_name": "vm"},
        source_addresses=["127.0.0.2", {"address": "127.0.0.3", "helo_name": "mta3.sender.test"}],
    )  # fmt: skip
    assert dotless.source_addresses == ["127.0.0.2", "127.0.0.3"]
    assert helo_name(dotless, "127.0.0.3") == "mta3.sender.test"
    assert helo_name(dotless, "127.0.0.2") == "vm"
    (warning,) = sender_setup_warnings(dotless)
    assert "'vm' for source address 127.0.0.2 has no dot" in warning
    default = _spec(tmp_path, [])
    assert default.smtp.helo_name is None
    import socket

    assert helo_name(default, None) == socket.getfqdn()
    with pytest.raises(SpecError, match="unknown key 'port'"):
        _spec(tmp_path, [], source_addresses=[{"address": "127.0.0.2", "port": 25}])


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_keygen_writes_a_pair_whose_record_verifies(tmp_path: Path, algorithm: str) -> None:
    _register()
    out = tmp_path / "keys"
    args = ["dkim", "keygen", "--domain", "Sender.Test", "--selector", "k1", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--algorithm", algorithm, "--json"])
    assert result.exit_code == 0, result.output
    import json

    printed = json.loads(result.stdout)
    key_file = Path(printed["key_file"])
    assert key_file == out / "k1.sender.test.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert printed["name"] == "k1._domainkey.sender.test"
    assert printed["value"].startswith(
        "v=DKIM1; k=ed25519; p=" if algorithm.startswith("ed") else "v=DKIM1; k=rsa; p="
    )
    zone_line = (out / "k1.sender.test.txt").read_text()
    assert zone_line.startswith("k1._domainkey.sender.test. IN TXT (")
    assert all(len(s) <= 255 for s in zone_line.split('"')[1::2])
    entry = {"domain": DOMAIN, "selector": "k1", "key_file": str(key_file), "algorithm": algorithm}
    with dkim_dns(tmp_path, {printed["name"]: printed["value"]}) as dnsfunc:
        message = MessageTemplate(_spec(tmp_path, [entry])).render("x@example.org", {"name": "X"})
        assert verify_all(message, dnsfunc) == [True]
    # Never overwrites a key; a plain run prints the record to publish.
    again = CliRunner().invoke(app, [*args, "--algorithm", algorithm])
    assert again.exit_code == 2 and "exists already" in again.output
    plain = CliRunner().invoke(app, ["dkim", "keygen", "--domain", "d.test", "--selector", "s",
                                     "--out", str(out)])  # fmt: skip
    assert plain.exit_code == 0 and "s._domainkey.d.test" in plain.stdout
    bad = ["dkim", "keygen", "--domain", "d.test", "--selector", "../../etc", "--out", str(out)]
    refused = CliRunner().invoke(app, bad)
    assert refused.exit_code == 2 and "selector" in refused.output
