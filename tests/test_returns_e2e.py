"""Returns end to end: campaigns through the sink, returns back to the real returns server.

Real parts only, all on loopback: Ray delivery servers send three campaigns to an SMTP sink
whose rules accept some messages and then bounce them (hard, soft), answer them (vacation
program, person) or reject them at RCPT; the sink sends the DSNs and replies to each
message's VERP envelope sender at the returns server running here; the returns server
archives, classifies, suppresses and forwards the person's reply to a second, capturing
sink that plays customer service. Later campaigns must skip the suppressed addresses.
"""

from __future__ import annotations

import smtplib
from pathlib import Path

import polars as pl
import pytest

from conftest import make_spec, write_csv
from helpers import wait_for
from raymail.compose.verp import TokenKind, TokenSigner
from raymail.driver.campaign import run_campaign
from raymail.returns.config import ReturnsConfig
from raymail.returns.ledger_import import import_ledger
from raymail.returns.process import ReturnsProcessor
from raymail.returns.runner import RunningReturnsServer, run_returns_server
from raymail.returns.store import ReturnsStore
from raymail.run.report import RunReport
from raymail.sink import SinkConfig, iter_capture, read_capture, run_sink
from raymail.spec import ReturnsSettings

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_session"), pytest.mark.timeout(400)]

HARD = ["gone1@ok.test", "gone2@ok.test"]
DEAD_DOMAIN = ["anyone@dead.test"]  # a domain rule: every address there hard-bounces
SOFT = ["full@ok.test"]
AUTO = ["away@ok.test"]
HUMAN = ["asks@ok.test"]
REJECTED = ["refused@ok.test"]  # 550 at RCPT: no bounce message, only the ledger
FINE = [f"user{i}@ok.test" for i in range(24)] + [f"user{i}@other.test" for i in range(12)]
EVERYONE = HARD + DEAD_DOMAIN + SOFT + AUTO + HUMAN + REJECTED + FINE
SECRET = "e2e-secret"


def _suppressed(settings: ReturnsSettings) -> set[str]:
    return set(ReturnsStore(settings).suppression.active()["email"].to_list())


def _events(settings: ReturnsSettings, campaign: str) -> pl.DataFrame:
    return ReturnsStore(settings).events.read().filter(pl.col("campaign") == campaign)


def _delivered(capture: Path, campaign: str) -> set[str]:
    marker = f"X-Raymail-Campaign: {campaign}\r\n".encode()
    return {r for m in iter_capture(capture) if marker in m.raw for r in m.rcpt_tos}


def _send(tmp: Path, campaign: str, sink_port: int, settings: ReturnsSettings) -> RunReport:
    csv = write_csv(tmp / f"{campaign}.csv", "email,name", [f"{e},N" for e in EVERYONE])
    spec = make_spec(
        csv,
        sink_port,
        campaign=campaign,
        verp_secret=SECRET,
        return_domain="bounce.test",
        reply_to="reply@bounce.test",
        returns=settings.model_dump(mode="json"),
    )
    return run_campaign(spec, tmp / "runs" / campaign, live_progress=False)


def _refuses_strangers(rs: RunningReturnsServer) -> None:
    """The real server: no relaying, no forged or foreign tokens; its own addresses work."""
    signer = TokenSigner("c1", SECRET)
    good = f"bounces+{signer.token(TokenKind.BOUNCE, FINE[0])}@bounce.test"
    forged = good.replace(good[8:12], "0000" if good[8:12] != "0000" else "1111")
    foreign = f"bounces+{TokenSigner('c1', 'other').token(TokenKind.BOUNCE, FINE[0])}@bounce.test"
    unknown = f"bounces+{TokenSigner('never-sent', SECRET).token(TokenKind.BOUNCE, None)}"
    with smtplib.SMTP(rs.host, rs.port, timeout=10) as client:
        client.ehlo("tester.test")
        client.mail("someone@tester.test")
        for outside in ("victim@gmail.example", "postmaster@ok.test", "x@bounce.test.evil"):
            code, reply = client.rcpt(outside)
            assert (code, reply[:5]) == (550, b"5.7.1"), (outside, code, reply)
        for address in (forged, foreign, f"{unknown}@bounce.test", "bounces@bounce.test"):
            code, reply = client.rcpt(address)
            assert (code, reply[:5]) == (550, b"5.1.1"), (address, code, reply)
        for ours in (good, "reply@bounce.test", "abuse@bounce.test", "postmaster@bounce.test"):
            assert client.rcpt(ours)[0] == 250, ours
        client.rset()


def test_returns_flow_from_sink_to_suppression_and_customer_service(tmp_path: Path) -> None:
    cs_capture = tmp_path / "customer-service"
    sink_capture = tmp_path / "sink"
    with run_sink(SinkConfig(), capture_dir=cs_capture) as customer_service:
        settings = ReturnsSettings(
            home=str(tmp_path / "home"),
            reply_address="reply@bounce.test",
            abuse_address="abuse@bounce.test",
            customer_service=customer_service.address,
            customer_service_address="help@shop.test",
            rules={"soft_bounce_after": 2},
        )
        config = ReturnsConfig(settings=settings, runs=[str(tmp_path / "runs")])
        with run_returns_server(config, port=0) as rs:
            addresses: dict[str, str] = {a: "bounce_hard" for a in HARD}
            addresses |= {a: "bounce_soft" for a in SOFT}
            addresses |= {a: "auto_reply" for a in AUTO}
            addresses |= {a: "human_reply" for a in HUMAN}
            addresses |= {a: "permfail" for a in REJECTED}
            sink_config = SinkConfig.model_validate(
                {
                    "addresses": addresses,
                    "domains": {
                        "dead.test": {
                            "returns": "bounce_hard",
                            "bounce_hard_reply": "550 5.1.2 Host or domain name not found",
                        }
                    },
                    "returns_server": rs.address,
                }
            )
            with run_sink(sink_config, capture_dir=sink_capture) as sink:
                _campaigns(tmp_path, sink.port, settings, rs, sink_capture, cs_capture)
                assert sink.stats().returns_failed == 0
            _refuses_strangers(rs)
            assert rs.server.stats.refused_relay >= 3


def _campaigns(
    tmp: Path,
    sink_port: int,
    settings: ReturnsSettings,
    rs: RunningReturnsServer,
    sink_capture: Path,
    cs_capture: Path,
) -> None:
    returned = HARD + DEAD_DOMAIN + SOFT + AUTO + HUMAN
    hard = set(HARD + DEAD_DOMAIN)

    # Campaign 1: everyone is sent to; the returns come back and are judged.
    first = _send(tmp, "c1", sink_port, settings)
    assert first.accepted == len(EVERYONE) - len(REJECTED)
    assert first.failed == len(REJECTED) and first.suppressed == 0
    # The 5xx at RCPT never produced a bounce: the run recorded it from its ledger as it
    # ended, classified like one, and suppressed the address by the same rules.
    hard |= set(REJECTED)
    rejected = _events(settings, "c1").filter(pl.col("source") == "ledger")
    assert rejected["recipient"].to_list() == REJECTED
    assert rejected["category"].to_list() == ["hard_bounce_address"]
    assert REJECTED[0] in _suppressed(settings)
    wait_for("campaign 1 returns", lambda: _events(settings, "c1").height >= len(returned) + 1)
    wait_for("hard bounces suppressed", lambda: _suppressed(settings) >= hard)
    events = _events(settings, "c1").filter(pl.col("source") != "ledger")
    by_recipient = dict(zip(events["recipient"], events["category"], strict=True))
    assert {by_recipient[a] for a in HARD} == {"hard_bounce_address"}
    assert by_recipient[DEAD_DOMAIN[0]] == "hard_bounce_domain"
    assert by_recipient[SOFT[0]] == "mailbox_full"
    assert by_recipient[AUTO[0]] == "auto_reply"
    assert by_recipient[HUMAN[0]] == "human_reply"
    assert set(events["source"].to_list()) == {"dsn", "autoreply", "reply"}
    assert _suppressed(settings) == hard  # one soft bounce is below the threshold of 2

    # Importing the run by hand as well adds nothing: each rejection is recorded once.
    store = ReturnsStore(settings)
    assert import_ledger(tmp / "runs" / "c1", ReturnsProcessor(store)).events == 0

    # The person's reply reached customer service, unchanged but for our headers.
    def forwarded() -> list[bytes]:
        return [m.raw for m in iter_capture(cs_capture)] if cs_capture.exists() else []

    wait_for("forward to customer service", lambda: len(forwarded()) >= 1)
    message = forwarded()[0]
    assert f"X-Raymail-Recipient: {HUMAN[0]}\r\n".encode() in message
    assert b"X-Raymail-Campaign: c1\r\n" in message
    assert b"has not arrived yet" in message
    assert read_capture(cs_capture)["rcpt_to"].to_list() == ["help@shop.test"]

    # Campaign 2 skips the suppressed; the second soft bounce crosses the threshold.
    second = _send(tmp, "c2", sink_port, settings)
    assert second.suppressed == len(hard)
    assert second.accepted == len(EVERYONE) - len(hard)
    assert not _delivered(sink_capture, "c2") & hard
    assert _delivered(sink_capture, "c2") == set(EVERYONE) - hard
    wait_for("soft bounce suppressed", lambda: SOFT[0] in _suppressed(settings))
    assert _suppressed(settings) == hard | set(SOFT)

    # Campaign 3 skips the soft-bounced address too.
    third = _send(tmp, "c3", sink_port, settings)
    assert third.suppressed == len(hard) + len(SOFT)
    assert _delivered(sink_capture, "c3") == set(EVERYONE) - hard - set(SOFT)
    wait_for("campaign 3 returns", lambda: _events(settings, "c3").height >= len(AUTO + HUMAN))
    assert rs.server.stats.store_errors == 0
