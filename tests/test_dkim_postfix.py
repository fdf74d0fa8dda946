"""DKIM end to end: raymail (real Ray) -> a real Postfix -> the sink; every captured message
is verified by dkimpy with the keys served by dnsmasq, RSA and Ed25519 side by side.

Personalised multipart messages get one signature pair each; shared content (no merge
fields) is signed once per transaction, so a transaction's recipients share one signature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import make_spec, write_csv
from helpers import wait_for
from helpers.dkim_dns import dkim_dns, records_for, signatures, verify_all, write_key
from helpers.postfix_mta import relay_postfix
from raymail.driver.campaign import run_campaign
from raymail.sink import SinkConfig, iter_capture, run_sink

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.usefixtures("ray_session")]

DOMAIN = "sender.test"
PASSED_POSTFIX = b"by relay.raymail.test (Postfix)"


def _captured(capture: Path, campaign: str, expected: int) -> list[Any]:
    marker = f"X-Raymail-Campaign: {campaign}\r\n".encode()

    def found() -> list[Any]:
        got = [m for m in iter_capture(capture) if marker in m.raw] if capture.exists() else []
        return got if sum(len(m.rcpt_tos) for m in got) >= expected else []

    return wait_for(f"{campaign}: {expected} deliveries at the sink", found, 60, 0.25)


def test_signatures_survive_postfix_and_verify(tmp_path: Path) -> None:
    rsa_path, rsa = write_key(tmp_path, "rsa", "rsa-sha256")
    ed_path, ed = write_key(tmp_path, "ed", "ed25519-sha256")
    dkim = [
        {"domain": DOMAIN, "selector": "r1", "key_file": str(rsa_path)},
        {"domain": DOMAIN, "selector": "e1", "key_file": str(ed_path),
         "algorithm": "ed25519-sha256"},
    ]  # fmt: skip
    people = [f"u{i}@ok.test,Ann{i}" for i in range(12)]
    people += [f"v{i}@two.test,Bø{i}" for i in range(8)]
    capture = tmp_path / "capture"
    with run_sink(SinkConfig(), capture_dir=capture) as sink:
        route = f"smtp:[127.0.0.1]:{sink.port}"
        with relay_postfix({"ok.test": route, "two.test": route}, {}) as postfix:
            common: dict[str, Any] = {
                "sender": f"News <news@{DOMAIN}>",
                "dkim": dkim,
                "smtp": {"helo_name": "client.raymail.test"},
            }
            personal = make_spec(
                write_csv(tmp_path / "people.csv", "email,name", people), postfix.port,
                campaign="dkim-personal", html="<p>Hi {{ name }}</p>\n",
                unsubscribe_url="https://sender.test/u/{token}", **common,
            )  # fmt: skip
            report = run_campaign(personal, tmp_path / "run-personal", live_progress=False)
            assert report.accepted == len(people)
            shared = make_spec(
                write_csv(tmp_path / "all.csv", "email", [p.split(",")[0] for p in people]),
                postfix.port, campaign="dkim-shared", subject="News for everyone",
                text="The same words\tfor   all.\n", html="<p>Same</p>\n", **common,
            )  # fmt: skip
            report = run_campaign(shared, tmp_path / "run-shared", live_progress=False)
            assert report.accepted == len(people)
            postfix.wait_idle()
            personal_mail = _captured(capture, "dkim-personal", len(people))
            shared_mail = _captured(capture, "dkim-shared", len(people))

    with dkim_dns(tmp_path, records_for(DOMAIN, {"r1": rsa, "e1": ed})) as dnsfunc:
        for message in personal_mail + shared_mail:
            raw = message.raw
            assert PASSED_POSTFIX in raw.partition(b"\r\n\r\n")[0]
            assert verify_all(raw, dnsfunc) == [True, True], raw[:2000]
    assert all(b"multipart/alternative" in m.raw for m in personal_mail)
    assert all(b"List-Unsubscribe-Post:" in m.raw for m in personal_mail)
    assert len(personal_mail) == len(people)  # one message, one signature pair, each
    personal_signatures = {signatures(m.raw)[0]["b"] for m in personal_mail}
    assert len(personal_signatures) == len(people)
    # Shared content: one signed message per raymail transaction (one per domain here),
    # whatever Postfix made of the recipients.
    by_message: dict[str, set[str]] = {}
    for message in shared_mail:
        by_message.setdefault(str(message.message_id), set()).add(signatures(message.raw)[1]["b"])
    assert len(by_message) == 2
    assert all(len(s) == 1 for s in by_message.values())
