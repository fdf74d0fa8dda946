"""A private Postfix that raymail sends through: an smtpd on a loopback port, relaying by
domain to servers on loopback, rejecting chosen domains at RCPT, bouncing others with DSNs.

Real MTA behaviour the tests rely on: Postfix's smtpd answers RCPT TO from an access map
(``550 5.1.1 ... User unknown``), its cleanup adds Received and keeps the rest of the
message (so DKIM signatures must survive it), its error transport turns a recipient into a
DSN sent to the envelope sender (raymail's VERP address), which the transport map routes to
the returns server. No DNS: every route is a transport entry to ``[127.0.0.1]:port``.
Needs root (Postfix's master runs as root and drops privileges); Postfix is installed with
apt-get when missing (system_packages.require_binary).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import wait_for
from helpers.system_packages import require_binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RelayPostfix:
    """A running private Postfix; ``port`` is its smtpd on 127.0.0.1."""

    root: Path
    port: int

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    def queue_empty(self) -> bool:
        """No message left in any queue (delivered or bounced)."""
        spool = self.root / "spool"
        queues = ("maildrop", "incoming", "active", "deferred")
        return not any(p.is_file() for q in queues for p in (spool / q).rglob("*"))

    def wait_idle(self, timeout_s: float = 60.0) -> None:

        def why() -> str:
            log = self.maillog.read_text(errors="replace")[-3000:] if self.maillog.exists() else ""
            return f"the Postfix queue to empty ({timeout_s} s); maillog:\n{log}"

        wait_for(why, self.queue_empty, timeout_s, 0.25)


def require_postfix() -> None:
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance needs root")
    for binary in ("postfix", "postconf"):
        require_binary(binary, "postfix")


def _master_cf(port: int) -> str:
    """Debian's master.cf with its port-25 smtpd replaced by one on 127.0.0.1:port."""
    lines = Path("/etc/postfix/master.cf").read_text().splitlines()
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and fields[1] == "inet" and fields[7].startswith("smtpd"):
            continue  # every inet smtpd (25, submission, smtps) goes
        out.append(line)
    out.append(f"127.0.0.1:{port} inet n - n - - smtpd")
    return "\n".join(out) + "\n"


def _main_cf(root: Path, port: int) -> str:
    etc = root / "etc"
    return f"""compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = relay.raymail.test
mydomain = raymail.test
myorigin = raymail.test
mydestination =
relay_domains =
mynetworks = 127.0.0.0/8
inet_interfaces = loopback-only
inet_protocols = ipv4
alias_maps =
alias_database =
local_recipient_maps =
transport_maps = texthash:{etc}/transport
smtpd_recipient_restrictions = check_recipient_access texthash:{etc}/rcpt_access,
    permit_mynetworks, reject_unauth_destination
smtpd_error_sleep_time = 0s
smtpd_soft_error_limit = 1000
smtpd_hard_error_limit = 1000
smtpd_client_connection_count_limit = 0
smtp_dns_support_level = disabled
smtp_tls_security_level = none
smtpd_tls_security_level = none
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
bounce_queue_lifetime = 0
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
"""


@contextlib.contextmanager
def relay_postfix(routes: dict[str, str], rejects: dict[str, str]) -> Iterator[RelayPostfix]:
    """Start a Postfix relaying ``routes`` (domain -> transport, e.g. ``smtp:[127.0.0.1]:N``
    or ``error:5.1.1 text``) and rejecting ``rejects`` (domain -> ``550 5.1.1 text``) at
    RCPT; stop it and delete its files after."""
    require_postfix()
    # Not under pytest's tmp_path: Postfix's daemons run as 'postfix' and must traverse it.
    base = Path(tempfile.mkdtemp(prefix="raymail-relay-"))
    base.chmod(0o755)
    root = base / "pf"
    etc = root / "etc"
    etc.mkdir(parents=True)
    for sub in ("spool", "data"):
        (root / sub).mkdir()
    shutil.chown(root / "data", "postfix")
    port = free_port()
    (etc / "master.cf").write_text(_master_cf(port))
    (etc / "main.cf").write_text(_main_cf(root, port))
    (etc / "transport").write_text("".join(f"{d} {t}\n" for d, t in routes.items()))
    (etc / "rcpt_access").write_text("".join(f"{d} {r}\n" for d, r in rejects.items()))
    instance = RelayPostfix(root, port)
    try:
        subprocess.run(
            ["postfix", "-c", str(etc), "start"], check=True, capture_output=True, timeout=60
        )
        _wait_listening(port, instance)
        yield instance
    finally:
        subprocess.run(["postfix", "-c", str(etc), "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def _wait_listening(port: int, instance: RelayPostfix) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # bounded
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                if sock.recv(512).startswith(b"220"):
                    sock.sendall(b"QUIT\r\n")
                    return
        except OSError:
            time.sleep(0.1)
    log = instance.maillog.read_text(errors="replace") if instance.maillog.exists() else ""
    raise RuntimeError(f"Postfix smtpd did not answer on 127.0.0.1:{port}; maillog:\n{log}")


@contextlib.contextmanager
def rejecting_sink(reply: str, command: str = "RCPT") -> Iterator[int]:
    """Postfix's smtp-sink on a loopback port answering ``command`` with the 5xx ``reply``:
    a remote server that refuses, so Postfix (not its smtpd) bounces with a DSN."""
    with smtp_sink("-f", command, "-B", reply) as port:
        yield port


@contextlib.contextmanager
def smtp_sink(*options: str) -> Iterator[int]:
    """Postfix's smtp-sink with ``options`` on a free loopback port, once it accepts."""
    binary = require_binary("smtp-sink", "postfix")
    port = free_port()
    user = ["-u", "postfix"] if os.geteuid() == 0 else []
    process = subprocess.Popen(
        [binary, *user, *options, f"127.0.0.1:{port}", "10"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # bounded
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)
