"""Real delivery status notifications from a real MTA: a private Postfix instance.

A throw-away Postfix (its own config, queue and mail spool under tmp_path; no SMTP
listener) bounces messages through the error transport, local delivery and smtp-sink
servers on 127.0.0.1 that reject with chosen replies; the bounces land in an mbox, and the
classifier must read them right. Needs root (Postfix's master runs as root and drops
privileges); Postfix itself is installed with apt-get when missing, as CI does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest

from helpers import wait_for
from helpers.system_packages import require_binary
from raymail.returns import classify_paths

pytestmark = [pytest.mark.slow, pytest.mark.root]

SENDER = "root@raymail.test"

# (recipient, expected category, expected reason, expected action)
CASES = [
    ("user@gone.test", "hard_bounce_address", "userunknown", "failed"),
    ("user@full.test", "mailbox_full", "mailboxfull", "failed"),
    ("nosuchuser@raymail.test", "hard_bounce_address", "userunknown", "failed"),
    ("user@blocked.test", "blocked", "blocked", "failed"),
    ("user@spam.test", "content_rejected", "spamdetected", "failed"),
    ("user@slow.test", "mailbox_full", "mailboxfull", "delayed"),
]
SINKS = {
    # domain: (smtp-sink options)
    "blocked.test": [
        "-f",
        "RCPT",
        "-B",
        "550 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using zen.spamhaus.org",
    ],
    "spam.test": ["-f", ".", "-B", "554 5.7.1 Message rejected as spam by content filter"],
    "slow.test": ["-r", "RCPT", "-b", "452 4.2.2 <user@slow.test>: Mailbox full, try again later"],
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Postfix:
    """A private Postfix instance rooted at ``root``."""

    root: Path

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def mailbox(self) -> Path:
        return self.root / "mail" / "root"

    def run(self, *args: str, stdin: bytes | None = None) -> None:
        subprocess.run(args, input=stdin, check=True, capture_output=True, timeout=60)

    def send(self, recipient: str) -> None:
        body = (
            f"From: News <{SENDER}>\nTo: {recipient}\nSubject: Spring offers\n"
            "X-Raymail-Campaign: spring-2026\n\nHello\n"
        ).encode()
        self.run("sendmail", "-C", str(self.etc), "-f", SENDER, recipient, stdin=body)


def _write_config(root: Path, transport: list[str]) -> None:
    etc = root / "etc"
    etc.mkdir(parents=True)
    root.chmod(0o755)
    for sub in ("spool", "data", "mail"):
        (root / sub).mkdir()
    shutil.chown(root / "data", "postfix")
    (root / "mail").chmod(0o1777)  # local(8) delivers root's mail as nobody
    shutil.copy("/etc/postfix/master.cf", etc / "master.cf")
    (etc / "main.cf").write_text(
        f"""compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mta.raymail.test
mydomain = raymail.test
myorigin = raymail.test
mydestination = raymail.test
inet_interfaces = loopback-only
inet_protocols = ipv4
master_service_disable = inet
alias_maps =
alias_database =
mail_spool_directory = {root}/mail
transport_maps = texthash:{etc}/transport
smtp_dns_support_level = disabled
delay_warning_time = 1s
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
"""
    )
    (etc / "transport").write_text("\n".join(transport) + "\n")


@pytest.fixture
def postfix() -> Iterator[Postfix]:
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root")
    for binary in ("postfix", "smtp-sink", "sendmail"):
        require_binary(binary, "postfix")  # installed with apt-get when missing (CI)
    with private_postfix() as instance:
        yield instance


@contextlib.contextmanager
def private_postfix() -> Iterator[Postfix]:
    """Start a throw-away Postfix with its smtp-sink peers; stop and delete it after."""
    # Not under tmp_path: Postfix's daemons run as 'postfix' and must traverse the path.
    base = Path(tempfile.mkdtemp(prefix="raymail-postfix-"))
    base.chmod(0o755)
    root = base / "pf"
    sinks: list[subprocess.Popen[bytes]] = []
    transport = [
        "gone.test error:5.1.1 <user@gone.test>: Recipient address rejected: "
        "User unknown in virtual mailbox table",
        "full.test error:5.2.2 <user@full.test>: Mailbox full: user is over quota",
    ]
    try:
        for domain, options in SINKS.items():
            port = _free_port()
            sinks.append(
                subprocess.Popen(
                    ["smtp-sink", "-u", "postfix", *options, f"127.0.0.1:{port}", "10"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            transport.append(f"{domain} smtp:[127.0.0.1]:{port}")
        _write_config(root, transport)
        instance = Postfix(root)
        instance.run("postfix", "-c", str(instance.etc), "start")
        try:
            yield instance
        finally:
            subprocess.run(
                ["postfix", "-c", str(instance.etc), "stop"], capture_output=True, timeout=60
            )
    finally:
        for sink in sinks:
            sink.terminate()
            sink.wait(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def bounce_all(postfix: Postfix) -> None:
    """Send one message per case and wait until every bounce is in the mailbox."""
    for recipient, *_ in CASES:
        postfix.send(recipient)

    def bounced() -> bool:
        box = postfix.mailbox.read_bytes() if postfix.mailbox.exists() else b""
        return box.count(b"From MAILER-DAEMON ") >= len(CASES)

    wait_for(f"{len(CASES)} bounces in the mailbox", bounced, 60, 0.5)


def check_mbox(mbox: Path) -> None:
    """Every case's bounce is classified as expected."""
    frame = classify_paths([mbox])
    rows = {row["recipients"][0]: row for row in frame.iter_rows(named=True) if row["recipients"]}
    assert set(rows) >= {r for r, *_ in CASES}, frame.select("path", "reason", "recipients")
    for recipient, category, reason, action in CASES:
        row = rows[recipient]
        assert (row["category"], row["reason"], row["action"]) == (category, reason, action), row
        assert row["campaign"] == "spring-2026"
        assert row["status"] is not None


def test_real_postfix_bounces(postfix: Postfix) -> None:
    bounce_all(postfix)
    check_mbox(postfix.mailbox)


# -- raymail through a real Postfix: DSNs and RCPT-time rejections feed suppression ---------

GONE = ["old1@gone.test", "old2@gone.test"]  # accepted by Postfix; its next hop refuses: DSN
REFUSED = ["nobody1@refused.test", "nobody2@refused.test"]  # 550 5.1.1 at RCPT: no DSN
FULL = ["full@full.test"]  # 552 5.2.2 at RCPT: a soft bounce, below the threshold of 3
BLOCKED = ["someone@blocked.test"]  # 550 5.7.1 at RCPT: about the sender, never suppressed
DELIVERED = [f"user{i}@ok.test" for i in range(10)]
EVERYONE = GONE + REFUSED + FULL + BLOCKED + DELIVERED


@pytest.mark.usefixtures("ray_session")
@pytest.mark.timeout(400)
def test_raymail_through_postfix_suppresses_dsns_and_rcpt_rejections(tmp_path: Path) -> None:
    from conftest import make_spec, write_csv
    from helpers.postfix_mta import rejecting_sink, relay_postfix
    from raymail.driver.campaign import run_campaign
    from raymail.returns.config import ReturnsConfig
    from raymail.returns.runner import run_returns_server
    from raymail.returns.store import ReturnsStore
    from raymail.run.report import RunReport
    from raymail.sink import SinkConfig, iter_capture, run_sink
    from raymail.spec import ReturnsSettings

    settings = ReturnsSettings(home=str(tmp_path / "home"))
    runs = tmp_path / "runs"

    def suppressed() -> set[str]:
        return set(ReturnsStore(settings).suppression.active()["email"].to_list())

    def events(campaign: str) -> pl.DataFrame:
        frame = ReturnsStore(settings).events.read()
        return frame.filter(pl.col("campaign") == campaign)

    def send(campaign: str, port: int) -> RunReport:
        rows = [f"{e},N{i}" for i, e in enumerate(EVERYONE)]
        spec = make_spec(
            write_csv(tmp_path / f"{campaign}.csv", "email,name", rows), port,
            campaign=campaign, verp_secret="pf-secret", return_domain="bounce.test",
            returns=settings.model_dump(mode="json"), smtp={"helo_name": "client.raymail.test"},
        )  # fmt: skip
        return run_campaign(spec, runs / campaign, live_progress=False)

    capture = tmp_path / "capture"
    config = ReturnsConfig(settings=settings, runs=[str(runs)])
    unknown_user = "550 5.1.1 <old@gone.test>: Recipient address rejected: User unknown"
    with (
        run_returns_server(config, port=0) as returns_server,
        run_sink(SinkConfig(), capture_dir=capture) as sink,
        rejecting_sink(unknown_user) as gone_port,
    ):
        routes = {
            "ok.test": f"smtp:[127.0.0.1]:{sink.port}",
            "bounce.test": f"smtp:[{returns_server.host}]:{returns_server.port}",
            "gone.test": f"smtp:[127.0.0.1]:{gone_port}",
        }
        rejects = {
            "refused.test": "550 5.1.1 User unknown in virtual mailbox table",
            "full.test": "552 5.2.2 Mailbox full: user is over quota",
            "blocked.test": "550 5.7.1 Client host blocked using zen.spamhaus.org",
        }
        with relay_postfix(routes, rejects) as postfix:
            first = send("pf1", postfix.port)
            rejected_at_rcpt = REFUSED + FULL + BLOCKED
            assert first.failed == len(rejected_at_rcpt)
            assert first.accepted == len(GONE + DELIVERED)
            # The run itself recorded its RCPT-time rejections, classified like bounces.
            ledger = events("pf1").filter(pl.col("source") == "ledger")
            verdicts = dict(zip(ledger["recipient"], ledger["category"], strict=True))
            assert verdicts == {
                **dict.fromkeys(REFUSED, "hard_bounce_address"),
                **dict.fromkeys(FULL, "mailbox_full"),
                **dict.fromkeys(BLOCKED, "blocked"),
            }
            assert suppressed() >= set(REFUSED)
            # Postfix's DSNs for gone.test come back to the returns server.
            wait_for("DSNs suppressed", lambda: suppressed() >= set(GONE), 60.0, 0.25)
            dsn = events("pf1").filter(pl.col("source") == "dsn")
            assert set(dsn["recipient"]) == set(GONE)
            assert set(dsn["category"]) == {"hard_bounce_address"}
            assert suppressed() == set(GONE + REFUSED)  # soft once and blocked: not suppressed

            second = send("pf2", postfix.port)
            postfix.wait_idle()
    assert second.suppressed == len(GONE + REFUSED)
    assert second.failed == len(FULL + BLOCKED)  # still sent to, still refused
    delivered = {r for m in iter_capture(capture) if b"pf2" in m.raw for r in m.rcpt_tos}
    assert delivered == set(DELIVERED)
