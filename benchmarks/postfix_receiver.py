"""A private, real Postfix on loopback that allows N connections per client: the shaping
benchmark's second receiver.

Postfix's own connection limit does the refusing: ``smtpd_client_connection_count_limit``
(counted by anvil; loopback is not exempted, ``smtpd_client_event_limit_exceptions`` is
empty), beyond which smtpd answers ``421 4.7.0 ... Error: too many connections from
127.0.0.1`` and hangs up, logging "Connection concurrency limit exceeded". Accepted mail is
queued for real (cleanup, queue files) and then dropped by the ``discard`` transport, so
Postfix, not a loop in Python, sets the pace. ``in_flow_delay`` is 0 so smtpd does not
slow down while its queue manager catches up (that would be a tarpit, another test).

Needs root (Postfix's master drops privileges) and the Debian package ``postfix``
(installed with apt-get by ``throughput.ensure_postfix`` when missing).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REFUSAL = "Connection concurrency limit exceeded"


@dataclass
class PostfixReceiver:
    """A running instance: its smtpd port and its log."""

    root: Path
    port: int

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    def refusals(self) -> int:
        """Connections refused so far (smtpd's log lines for the concurrency limit)."""
        try:
            return self.maillog.read_text(errors="replace").count(REFUSAL)
        except OSError:
            return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _master_cf(port: int) -> str:
    out = []
    for line in Path("/etc/postfix/master.cf").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[1] == "inet" and fields[7].startswith("smtpd"):
            continue  # Debian's port-25 (and submission) smtpd go; ours is on loopback
        out.append(line)
    out.append(f"127.0.0.1:{port} inet n - n - - smtpd")
    return "\n".join(out) + "\n"


def _main_cf(root: Path, limit: int) -> str:
    return f"""compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.shaping.test
mydestination =
relay_domains =
mynetworks = 127.0.0.0/8
inet_interfaces = loopback-only
inet_protocols = ipv4
alias_maps =
alias_database =
local_recipient_maps =
default_transport = discard
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_client_connection_count_limit = {limit}
smtpd_client_event_limit_exceptions =
smtpd_error_sleep_time = 0s
in_flow_delay = 0s
smtp_dns_support_level = disabled
smtpd_tls_security_level = none
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
"""


@contextlib.contextmanager
def postfix_receiver(limit: int) -> Iterator[PostfixReceiver]:
    """Start a Postfix allowing ``limit`` connections per client; stop it and delete it."""
    base = Path(tempfile.mkdtemp(prefix="raymail-shaping-pf-"))  # traversable by 'postfix'
    base.chmod(0o755)
    root = base / "pf"
    etc = root / "etc"
    etc.mkdir(parents=True)
    for sub in ("spool", "data"):
        (root / sub).mkdir()
    shutil.chown(root / "data", "postfix")
    port = _free_port()
    (etc / "master.cf").write_text(_master_cf(port))
    (etc / "main.cf").write_text(_main_cf(root, limit))
    receiver = PostfixReceiver(root, port)
    try:
        subprocess.run(
            ["postfix", "-c", str(etc), "start"], check=True, capture_output=True, timeout=60
        )
        _wait_listening(receiver)
        yield receiver
    finally:
        subprocess.run(["postfix", "-c", str(etc), "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def _wait_listening(receiver: PostfixReceiver) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # bounded
        try:
            with socket.create_connection(("127.0.0.1", receiver.port), timeout=2) as sock:
                if sock.recv(512).startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
        except OSError:
            time.sleep(0.1)
    log = receiver.maillog.read_text(errors="replace") if receiver.maillog.exists() else ""
    raise RuntimeError(f"Postfix did not answer on 127.0.0.1:{receiver.port}; maillog:\n{log}")
