"""Bounces written by real MTAs: a private Postfix and a private Exim against the responder.

Postfix is Debian's installed one, run with its own configuration, queue and spool under a
temporary folder (no listener). Exim is Debian's ``exim4-daemon-light`` package, fetched
with ``apt-get download`` and unpacked with ``dpkg -x`` into a folder (nothing installed, so
Postfix stays the system's MTA), run as root with ``-C`` and a private spool. Each message
goes to one or a few recipients whose replies the responder scripts; some go to local
conditions instead (a host that does not resolve, a closed port, a silent server, too
many hops, a local user that does not exist). ``maximal_queue_lifetime = 0`` (Postfix) and
the absence of retry rules (Exim) turn a temporary failure into a bounce at once, which is
what a real queue does days later.
"""

from __future__ import annotations

import mailbox
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cases import Label, category_for
from replies import REPLIES
from responder import Plan, Responder, running

SENDER_LOCAL = "root"
NAMES = (
    "anna.berg", "li.wei", "omar.haddad", "sofia.rossi", "kenji.sato", "maria.garcia",
    "john.smith", "eva.novak", "lars.olsen", "amara.okafor", "chen.min", "pierre.dubois",
)  # fmt: skip


@dataclass
class Job:
    """One message to send and what its bounce must say."""

    case: str
    recipients: list[str]
    reason: str
    reply: str
    held_out: bool
    extra_headers: str = ""


@dataclass
class Scenario:
    """The responder plans, the domain routes and the jobs of one MTA run."""

    routes: dict[str, int] = field(default_factory=dict)  # domain -> port ('' = special)
    specials: dict[str, str] = field(default_factory=dict)  # domain -> special route
    jobs: list[Job] = field(default_factory=list)


def _address(index: int, domain: str) -> str:
    return f"{NAMES[index % len(NAMES)]}{index}@{domain}"


def build_scenario(responder: Responder, prefix: str, closed_port: int) -> Scenario:
    """Jobs for every reply in the bank plus the local conditions."""
    scenario = Scenario()
    per_rcpt = Plan()
    rcpt_port = responder.add(per_rcpt)
    fixed_ports: dict[str, int] = {}
    index = 0
    for reply in REPLIES:
        if reply.phase in {"RCPT", "DATA"}:
            domain = f"{prefix}-{reply.key}.test".lower()
            scenario.routes[domain] = rcpt_port
        else:
            domain = f"{prefix}-{reply.key}.test".lower()
            fixed_ports[reply.key] = responder.add(Plan(fixed=reply))
            scenario.routes[domain] = fixed_ports[reply.key]
        rcpt = _address(index, domain)
        index += 1
        if reply.phase in {"RCPT", "DATA"}:
            per_rcpt.by_recipient[rcpt] = reply
        scenario.jobs.append(
            Job(f"{prefix}-{reply.key}", [rcpt], reply.reason, reply.key, reply.held_out)
        )
    # Several recipients in one message, each with its own RCPT reply.
    rcpt_replies = [r for r in REPLIES if r.phase == "RCPT" and not r.temporary]
    for group in range(0, min(len(rcpt_replies), 36), 3):
        chosen = rcpt_replies[group : group + 3]
        domain = f"{prefix}-multi{group}.test"
        scenario.routes[domain] = rcpt_port
        rcpts = []
        for reply in chosen:
            rcpt = _address(index, domain)
            index += 1
            per_rcpt.by_recipient[rcpt] = reply
            rcpts.append(rcpt)
        # The label is the first recipient's reason (reports are judged on the first).
        scenario.jobs.append(
            Job(
                f"{prefix}-multi{group}",
                rcpts,
                chosen[0].reason,
                chosen[0].key,
                any(r.held_out for r in chosen),
            )
        )
    silent = responder.add(Plan(silent=True))
    locals_ = (
        ("nxdomain", "networkerror", "host"),  # no DNS here: "temporary failure in name resolution"
        ("refused", "expired", f"127.0.0.1:{closed_port}"),
        ("silent", "expired", f"127.0.0.1:{silent}"),
    )
    for name, reason, route in locals_:
        for n in range(4):
            domain = f"{prefix}-{name}{n}.test"
            scenario.specials[domain] = route
            scenario.jobs.append(
                Job(f"{prefix}-{name}{n}", [_address(index, domain)], reason, name, n == 3)
            )
            index += 1
    hops = "".join(
        f"Received: from relay{n}.example by relay{n + 1}.example; "
        f"Mon, 1 Jun 2026 10:00:{n % 60:02d} +0000\n"
        for n in range(60)
    )
    for n in range(3):
        domain = f"{prefix}-loop{n}.test"
        scenario.routes[domain] = rcpt_port
        scenario.jobs.append(
            Job(
                f"{prefix}-loop{n}",
                [_address(index, domain)],
                "networkerror",
                "hops",
                n == 2,
                extra_headers=hops,
            )
        )
        index += 1
    return scenario


def _message(job: Job, sender: str) -> bytes:
    return (
        f"{job.extra_headers}From: Spring News <{sender}>\nTo: {', '.join(job.recipients)}\n"
        f"Subject: Spring offers for you\nMessage-ID: <{job.case}@raymail.test>\n"
        f"Date: Mon, 1 Jun 2026 10:00:00 +0000\nMIME-Version: 1.0\n"
        f"Content-Type: text/plain; charset=utf-8\n\nHello,\nour spring offers are here.\n"
    ).encode()


def _collect(
    messages: list[bytes], jobs: list[Job], fmt: str, out: Path, source: str
) -> list[Label]:
    """Match bounces to jobs through the returned copy's Message-ID; write .eml files."""
    by_case = {job.case: job for job in jobs}
    labels = []
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    for raw in messages:
        found = re.search(rb"Message-ID: <([^@>]+)@raymail\.test>", raw, re.I)
        if not found:
            continue
        case = found.group(1).decode()
        job = by_case.get(case)
        if job is None or case in seen:
            continue
        seen.add(case)
        delayed = b"Action: delayed" in raw
        name = f"{case}.eml"
        (out / name).write_bytes(raw)
        labels.append(
            Label(
                file=f"{out.name}/{name}",
                format=fmt,
                recipients=sorted(job.recipients),
                reason=job.reason,
                category=category_for(job.reason, delayed),
                split="heldout" if job.held_out or fmt == "exim" else "tuned",
                reply=job.reply,
                source=source,
            )
        )
    return labels


def _wait(count: Callable[[], int], expected: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last, stable = -1, 0
    while time.monotonic() < deadline:
        now = count()
        if now >= expected:
            return
        stable = stable + 1 if now == last else 0
        last = now
        if stable > 40:  # nothing new for 20 s
            return
        time.sleep(0.5)


# --------------------------------------------------------------------------------- Postfix


def run_postfix(out: Path, timeout: float = 240) -> list[Label]:
    """Bounces from a private Postfix instance; labels for each."""
    base = Path(tempfile.mkdtemp(prefix="raymail-corpus-pf-", dir=_tmp_root()))
    base.chmod(0o755)
    root = base / "pf"
    etc = root / "etc"
    try:
        with running() as responder:
            scenario = build_scenario(responder, "pf", _closed_port())
            transport = [f"{d} smtp:[127.0.0.1]:{p}" for d, p in scenario.routes.items()]
            for domain, route in scenario.specials.items():
                target = (
                    "nonexistent-host.invalid"
                    if route == "host"
                    else f"[{route.split(':')[0]}]:{route.split(':')[1]}"
                )
                transport.append(f"{domain} smtp:{target}")
            _postfix_config(root, transport)
            subprocess.run(
                ["postfix", "-c", str(etc), "start"], check=True, capture_output=True, timeout=60
            )
            try:
                sender = f"{SENDER_LOCAL}@raymail.test"
                for job in scenario.jobs:
                    subprocess.run(
                        ["sendmail", "-C", str(etc), "-f", sender, *job.recipients],
                        input=_message(job, sender),
                        check=True,
                        capture_output=True,
                        timeout=60,
                    )
                box = root / "mail" / SENDER_LOCAL

                def count() -> int:
                    return (
                        box.read_bytes().count(b"\nFrom MAILER-DAEMON") + 1 if box.exists() else 0
                    )

                _wait(count, len(scenario.jobs), timeout)
                time.sleep(1)
            finally:
                subprocess.run(["postfix", "-c", str(etc), "stop"], capture_output=True, timeout=60)
            messages = [m.as_bytes() for m in mailbox.mbox(str(box))] if box.exists() else []
            return _collect(messages, scenario.jobs, "postfix", out, "postfix")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _postfix_config(root: Path, transport: list[str]) -> None:
    """The private instance of test_returns_postfix.py, plus the corpus's own settings."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from test_returns_postfix import _write_config

    _write_config(root, transport)
    # Later lines override earlier ones in main.cf.
    with (root / "etc" / "main.cf").open("a") as main_cf:
        main_cf.write(
            """smtp_connect_timeout = 3s
smtp_helo_timeout = 3s
smtp_skip_5xx_greeting = no
hopcount_limit = 40
maximal_queue_lifetime = 0
bounce_queue_lifetime = 0
delay_warning_time = 0
default_destination_concurrency_limit = 50
"""
        )


def _closed_port() -> int:
    from responder import _free_port

    return _free_port()


def _tmp_root() -> str:
    path = Path(os.environ.get("RAYMAIL_CORPUS_TMP", tempfile.gettempdir()))
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


# ------------------------------------------------------------------------------------ Exim

EXIM_PACKAGES = ("exim4-daemon-light", "libidn12")


def exim_binary(cache: Path) -> Path:
    """Debian's exim4 unpacked (apt-get download + dpkg -x) into ``cache``; not installed."""
    root = cache / "exim-root"
    binary = root / "usr" / "sbin" / "exim4"
    if binary.exists():
        return binary
    debs = cache / "exim-debs"
    debs.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["apt-get", "download", *EXIM_PACKAGES],
        cwd=debs,
        check=True,
        capture_output=True,
        timeout=300,
    )
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(
            ["dpkg", "-x", str(deb), str(root)], check=True, capture_output=True, timeout=120
        )
    return binary


_EXIM_CONF = """\
exim_user = Debian-exim
exim_group = Debian-exim
primary_hostname = mx.exim.test
qualify_domain = raymail.test
domainlist local_domains = raymail.test
spool_directory = {base}/spool
log_file_path = {base}/log/%slog
keep_environment = LD_LIBRARY_PATH
never_users =
trusted_users = root
host_lookup =
rfc1413_hosts =
received_headers_max = 40
begin routers
unresolvable:
  driver = manualroute
  domains = partial-lsearch;{base}/unresolvable
  route_data = nonexistent-host.invalid
  host_find_failed = defer
  transport = remote_smtp
sink:
  driver = manualroute
  domains = ! +local_domains
  route_data = 127.0.0.1
  self = send
  transport = remote_smtp
local:
  driver = accept
  domains = +local_domains
  transport = box
begin transports
remote_smtp:
  driver = smtp
  port = ${{lookup{{$domain}}lsearch{{{base}/routes}}{{$value}}{{25}}}}
  allow_localhost
  hosts_avoid_tls = *
  connect_timeout = 3s
  command_timeout = 3s
box:
  driver = appendfile
  directory = {base}/out
  maildir_format
  user = nobody
  group = nogroup
  mode = 0666
begin retry
begin rewrite
"""


def run_exim(out: Path, cache: Path, timeout: float = 240) -> list[Label]:
    """Bounces from a private Exim (Debian's binary, unpacked) against the responder."""
    binary = exim_binary(cache)
    libs = binary.parents[2] / "usr" / "lib" / "x86_64-linux-gnu"
    base = Path(tempfile.mkdtemp(prefix="raymail-corpus-exim-", dir=_tmp_root()))
    base.chmod(0o755)
    try:
        for sub in ("spool", "log", "out"):
            (base / sub).mkdir()
        for sub in ("spool", "log"):
            os.chown(base / sub, 65534, 65534)  # Exim's user inside the namespace
        (base / "out").chmod(0o1777)
        # Exim looks its compiled-in user up at start: give it one in a private mount
        # namespace (a copy of passwd/group bind-mounted), so the system is untouched; the
        # unpacked sbin folder is mounted over /usr/sbin there, where Exim re-executes itself.
        passwd = (
            Path("/etc/passwd").read_text()
            + "Debian-exim:x:65534:65534::/nonexistent:/usr/sbin/nologin\n"
        )
        group = Path("/etc/group").read_text() + "Debian-exim:x:65534:\n"
        (base / "passwd").write_text(passwd)
        (base / "group").write_text(group)
        with running() as responder:
            scenario = build_scenario(responder, "ex", _closed_port())
            routes = dict(scenario.routes)
            unresolvable = []
            for domain, route in scenario.specials.items():
                if route == "host":
                    unresolvable.append(domain)
                else:
                    routes[domain] = int(route.split(":")[1])
            (base / "routes").write_text("".join(f"{d}: {p}\n" for d, p in routes.items()))
            (base / "unresolvable").write_text("".join(f"{d}\n" for d in unresolvable))
            (base / "exim.conf").write_text(_EXIM_CONF.format(base=base))
            # The unpacked libraries are found through a private loader cache (LD_LIBRARY_PATH
            # does not survive Exim's change of user); -X: ldconfig touches no links.
            (base / "ld.so.conf").write_text(f"{libs}\ninclude /etc/ld.so.conf\n")
            subprocess.run(
                ["ldconfig", "-X", "-C", str(base / "ld.so.cache"), "-f", str(base / "ld.so.conf")],
                check=True,
                capture_output=True,
                timeout=60,
            )
            script = (
                f"mount --bind {base}/passwd /etc/passwd && mount --bind {base}/group /etc/group"
                f" && mount --bind {base}/ld.so.cache /etc/ld.so.cache"
                f" && mount --bind {binary.parent} /usr/sbin"
                f' && exec "$@"'
            )
            sender = f"{SENDER_LOCAL}@raymail.test"
            env = {**os.environ, "LD_LIBRARY_PATH": str(libs)}
            for job in scenario.jobs:
                subprocess.run(
                    [
                        "unshare",
                        "-m",
                        "sh",
                        "-c",
                        script,
                        "sh",
                        "/usr/sbin/exim4",
                        "-C",
                        str(base / "exim.conf"),
                        "-odi",
                        "-f",
                        sender,
                        *job.recipients,
                    ],
                    input=_message(job, sender),
                    capture_output=True,
                    timeout=60,
                    env=env,
                    check=False,
                )
            new = base / "out" / "new"

            def count() -> int:
                return len(list(new.glob("*"))) if new.exists() else 0

            _wait(count, len(scenario.jobs), timeout)
            messages = [p.read_bytes() for p in sorted(new.glob("*"))] if new.exists() else []
            return _collect(messages, scenario.jobs, "exim", out, "exim")
    finally:
        shutil.rmtree(base, ignore_errors=True)
