"""Acceptance benchmark: raymail against a plain aiosmtplib loop and Postfix's smtp-source.

Sends the same N (default 50,000) personalised ~2 KB messages, in one run, three ways to
Postfix's ``smtp-sink`` on loopback:

``smtp_source``
    Postfix's ``smtp-source`` with connection reuse (``-d``) and as many sessions as
    connections: the practical limit of this machine and this sink.
``aiosmtplib_loop``
    One Python process, one event loop: ``--connections`` reused ``aiosmtplib.SMTP``
    connections pulling pre-built messages (the bytes raymail renders, built before the
    clock starts) from a shared queue.
``raymail``
    ``run_campaign`` on a Parquet recipient list (one transaction per recipient, mail merge
    in the delivery servers), 2 delivery servers x connections/2, PIPELINING on. Its rate
    uses the run's own ``elapsed_s`` (dispatch start to the last outcome, so delivery-server
    start-up is inside); ``raymail_wall_msg_s`` also counts loading, planning and the report.
``raymail_dkim`` (unless ``--no-dkim``)
    The same campaign and messages with an RSA-2048 DKIM signature on every message
    (``dkim_vs_unsigned``, target 0.8), and a round signed with Ed25519 instead (RFC 8463,
    ``dkim_ed25519_vs_unsigned``; ``--no-dkim-ed25519`` skips it). ``*_sign_us_per_message``
    is the signer alone on the pre-rendered messages, ``*_key_op_us`` its private-key
    operation alone, both CPU time in this process; ``*_vs_unsigned_bound`` is
    ``unsigned CPU per message / (that + key_op_us)``: what the ratio cannot pass on a
    machine whose cores the unsigned round already keeps busy, whatever else is cut.
``raymail_tracking`` (unless ``--no-tracking``)
    The same campaign and messages with an HTML part (four ``<a href>`` links) and
    ``tracking: {opens: true, clicks: true}``: every link rewritten to a signed per-recipient
    redirect and an open pixel added (``tracking_vs_unsigned``, target 0.8). The plain round
    has no HTML part, so ``raymail_html`` sends the same HTML untracked, back to back
    (``html_vs_unsigned``; ``tracking_vs_html`` is tracking's own cost). Before any clock one
    message is rendered and checked to carry the redirects and the pixel.
``raymail_smime`` (unless ``--no-smime``)
    Encrypted S/MIME (RFC 8551 enveloped-data, AES-256 to each recipient's RSA-2048
    certificate) on the first ``--smime-messages`` recipients (default 10,000: issuing a
    certificate per recipient takes about a millisecond), side by side in each round with a
    plain run of exactly those recipients: ``smime_vs_plain``. The certificates share one
    RSA key (the per-message cost, an RSA public-key operation and AES, is the same for
    distinct keys) and are issued by a throwaway Ed25519 CA. ``smime_render_us_per_message``
    and ``plain_render_us_per_message``: the renderer alone, in this process.

Ray starts once, before any clock. With ``--repeat N`` the three alternate N times and the
medians are reported; every ratio comes from measurements of this one run, because the
machine is shared and noisy (absolute rates vary by 2x from day to day).

Prints one JSON object on stdout (progress goes to stderr). Exit status 1 when raymail did
not get every message accepted. Besides the rates, each round records the CPU seconds of
this benchmark's own processes (this one, smtp-sink, Ray and its workers) per message, and
``background_cpu_share`` says how busy the rest of the machine was meanwhile: a loaded
machine hurts raymail, which needs both cores, more than the one-core loop. ``--profile
DIR`` records the last raymail round with py-spy (driver and delivery servers) and prints
where the time went.

Postfix comes from Debian's ``postfix`` package; when smtp-sink/smtp-source are missing and
this runs as root, it is installed with apt-get, else the benchmark exits saying so.

    python benchmarks/throughput.py [--messages 50000] [--connections 50] [--repeat 1]
                                    [--json-out PATH] [--profile DIR] [--no-warmup]
                                    [--no-dkim] [--no-dkim-ed25519] [--no-tracking]
                                    [--servers 1,2,4]
                                    [--no-smime] [--smime-messages 10000]

``--servers 1,2,4`` adds, after the rounds, one raymail run per delivery-server count (the
connections in total unchanged, the same sink and messages): ``by_servers`` in the JSON,
each with its msg/s, CPU per message and ratios to that run's smtp-source and loop.

``--ray-address ADDRESS`` joins that Ray instead of starting a private one (the test
suite's smoke run: a Ray start less); the CPU figures then miss Ray's own processes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TARGET_RAYMAIL_VS_LOOP = 1.2
TARGET_DKIM_VS_UNSIGNED = 0.8
TARGET_TRACKING_VS_UNSIGNED = 0.8
DOMAINS = 50
SENDER = "Raymail Bench <news@bench.example>"
HELO = "bench.localhost"
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_APT_TIMEOUT_S = 900.0

FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia")
LAST_NAMES = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson")
CITIES = ("Lisbon", "Kyoto", "Lagos", "Quito", "Oslo", "Perth", "Pune", "Tartu", "Leeds")

SUBJECT = "{{ first_name }}, your {{ city }} update (code {{ code }})"
TEXT_HEAD = (
    "Hi {{ first_name }} {{ last_name }},\n\n"
    "thank you for being a member since {{ since }}. Here is this month's news for\n"
    "{{ city }}, and your personal code is {{ code }}.\n\n"
)
TEXT_TAIL = "\nSee you soon in {{ city }},\n-- The Bench team\n"
WEB_BASE_URL = "https://mail.bench.example"
HTML = (
    "<html><body><p>Hi {{ first_name }} {{ last_name }},</p>\n"
    "<p>thank you for being a member since {{ since }}; your code is {{ code }}.</p>\n"
    '<p><a href="https://bench.example/news">This month in {{ city }}</a></p>\n'
    '<p><a data-link="events" href="https://bench.example/events">Events</a> | '
    '<a href="https://bench.example/offers?utm_source=bench">Offers</a></p>\n'
    '<p><a href="https://bench.example/account">Your account</a></p>\n'
    "<p>See you soon in {{ city }},<br>-- The Bench team</p></body></html>\n"
)
FILLER_LINE = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor."


def log(message: str) -> None:
    print(f"throughput: {message}", file=sys.stderr, flush=True)


# -- Postfix -------------------------------------------------------------------------------


def find_binary(name: str) -> str | None:
    """``shutil.which`` that also looks in the sbin folders a non-root PATH often lacks."""
    path = os.environ.get("PATH", os.defpath)
    return shutil.which(name, path=os.pathsep.join([path, *_SBIN]))


def ensure_postfix() -> tuple[str, str]:
    """Paths of smtp-sink and smtp-source; apt-get installs Postfix when missing and root."""
    sink, source = find_binary("smtp-sink"), find_binary("smtp-source")
    if sink and source:
        return sink, source
    how = "apt-get install --no-install-recommends postfix"
    if os.geteuid() != 0:
        raise SystemExit(
            "throughput: Postfix's smtp-sink/smtp-source are not installed and this is not "
            f"root, so they cannot be installed here; install the Debian package 'postfix' "
            f"({how}) and run again"
        )
    if shutil.which("apt-get") is None:
        raise SystemExit(
            "throughput: Postfix's smtp-sink/smtp-source are not installed and there is no "
            "apt-get to install the 'postfix' package; install Postfix and run again"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in (["update"], ["install", "-y", "--no-install-recommends", "postfix"]):
        command = ["apt-get", "-o", "DPkg::Lock::Timeout=120", "-q", *args]
        log(f"Postfix missing; running {' '.join(command)}")
        try:
            done = subprocess.run(
                command, env=env, capture_output=True, text=True, timeout=_APT_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            raise SystemExit(
                f"throughput: {' '.join(command)} did not finish within {_APT_TIMEOUT_S:.0f} s"
            ) from None
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-2000:]
            raise SystemExit(
                f"throughput: {' '.join(command)} failed (exit {done.returncode}):\n{tail}"
            )
    sink, source = find_binary("smtp-sink"), find_binary("smtp-source")
    if not (sink and source):
        raise SystemExit("throughput: installed 'postfix' but smtp-sink/smtp-source not found")
    return sink, source


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SmtpSink:
    """Postfix's smtp-sink on 127.0.0.1 at a free port; discards mail, offers PIPELINING."""

    def __init__(
        self,
        binary: str,
        log_path: Path,
        *,
        backlog: int = 256,
        max_sessions: int = 512,
        data_delay_s: int = 0,
    ) -> None:
        self.binary = binary
        self.log_path = log_path
        self.backlog = backlog
        self.max_sessions = max_sessions
        self.data_delay_s = data_delay_s  # -w: seconds before answering DATA (a slow MX)
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SmtpSink:
        for _ in range(3):  # another process may grab the free port before the sink binds it
            port = _free_port()
            command = [self.binary, "-4", "-h", "sink.localhost", "-m", str(self.max_sessions)]
            command += ["-t", "100"]
            if self.data_delay_s:
                command += ["-w", str(self.data_delay_s)]
            if os.geteuid() == 0:
                command += ["-u", "nobody"]  # required as root: drops privileges after bind
            command += [f"127.0.0.1:{port}", str(self.backlog)]
            with self.log_path.open("ab") as err:
                self._proc = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
                )
            if self._ready(port, timeout=10.0):
                self.port = port
                return self
            self.stop()
        raise RuntimeError(f"smtp-sink did not start; see {self.log_path}")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _ready(self, port: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def postfix_version() -> str | None:
    postconf = find_binary("postconf")
    if not postconf:
        return None
    try:
        out = subprocess.run(
            [postconf, "-d", "-h", "mail_version"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


# -- the workload --------------------------------------------------------------------------


@dataclass
class Workload:
    """The recipients, the campaign spec and the pre-rendered messages of one benchmark."""

    recipients: Path
    spec: Any  # raymail.spec.CampaignSpec
    jobs: list[tuple[str, str, bytes]]  # (envelope sender, recipient, message) per message
    sample_file: Path  # one rendered message, LF line ends, for smtp-source -F
    render_s: float  # time to render every message once, in this process

    @property
    def message_bytes(self) -> int:
        return round(sum(len(m) for _, _, m in self.jobs) / len(self.jobs))


def write_recipients(path: Path, count: int, *, first_row: int = 0, domains: int = DOMAINS) -> Path:
    """``count`` unique recipients spread evenly over ``domains`` domains, with merge fields."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = range(first_row, first_row + count)
    table = pa.table(
        {
            "email": [f"user{i}@d{i % domains:02d}.bench.example" for i in ids],
            "first_name": [FIRST_NAMES[i % len(FIRST_NAMES)] for i in ids],
            "last_name": [LAST_NAMES[(i // 7) % len(LAST_NAMES)] for i in ids],
            "city": [CITIES[(i * 5) % len(CITIES)] for i in ids],
            "since": [str(1990 + i % 35) for i in ids],
            "code": [f"B{i:07d}" for i in ids],
        }
    )
    pq.write_table(table, path)
    return path


def make_spec(
    recipients: Path,
    port: int,
    connections: int,
    filler_lines: int,
    *,
    campaign: str = "throughput-bench",
    servers: int = 2,
    max_attempts: int = 3,
    max_backoff_s: float = 2.0,
) -> Any:
    """The benchmark campaign: ``connections`` split over ``servers`` delivery servers
    (benchmarks/scale.py uses it too, with its own name, servers and retries)."""
    from raymail.spec import CampaignSpec, RetrySettings, SmtpSettings

    filler = "".join(f"{FILLER_LINE} {n:03d}\n" for n in range(filler_lines))
    return CampaignSpec(
        campaign=campaign,
        sender=SENDER,
        subject=SUBJECT,
        text=TEXT_HEAD + filler + TEXT_TAIL,
        recipients=str(recipients),
        mx_override={"*": f"127.0.0.1:{port}"},
        delivery_servers=servers,
        concurrency=max(1, connections // servers),
        unsubscribe_url="https://bench.example/unsubscribe/{token}",
        verp_secret="bench-secret",
        smtp=SmtpSettings(helo_name=HELO, starttls="never", pipelining=True),
        retry=RetrySettings(
            schedule=[],
            max_attempts=max_attempts,
            initial_backoff_s=0.5,
            max_backoff_s=max_backoff_s,
        ),
    )  # type: ignore[call-arg]


def _merge_rows(path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    fields = [c for c in table.column_names if c != "email"]
    columns = [table.column(c).to_pylist() for c in fields]
    for i, email in enumerate(table.column("email").to_pylist()):
        yield email, {name: col[i] for name, col in zip(fields, columns, strict=True)}


def build_workload(
    folder: Path, count: int, port: int, connections: int, message_bytes: int
) -> Workload:
    """Write the recipient list, size the template to ``message_bytes`` and pre-render."""
    from raymail.compose.message import MessageTemplate

    recipients = write_recipients(folder / "recipients.parquet", count)
    email, values = next(_merge_rows(recipients))
    line = len(FILLER_LINE) + 6  # "... 000\r\n"
    filler_lines = 0
    for _ in range(4):  # converge on the target size (the headers' size is the renderer's)
        spec = make_spec(recipients, port, connections, filler_lines)
        size = len(MessageTemplate(spec).render(email, values))
        missing = message_bytes - size
        if abs(missing) < line:
            break
        filler_lines = max(0, filler_lines + round(missing / line))
    template = MessageTemplate(spec)
    started = time.perf_counter()
    jobs = [
        (template.envelope_sender(address), address, template.render(address, merge))
        for address, merge in _merge_rows(recipients)
    ]
    render_s = time.perf_counter() - started
    sample_file = folder / "message.eml"
    sample = jobs[0][2].replace(b"\r\n", b"\n")  # smtp-source -F appends CRLF per line
    sample_file.write_bytes(sample if sample.endswith(b"\n") else sample + b"\n")
    return Workload(recipients, spec, jobs, sample_file, render_s)


def dkim_specs(workload: Workload, folder: Path, ed25519: bool) -> dict[str, Any]:
    """The workload's spec signed with a fresh RSA-2048 key (and, unless told not to, with
    Ed25519 alone)."""
    from raymail.compose.dkim_keys import generate_key
    from raymail.compose.settings import DkimSettings

    domain = workload.spec.sender_domain
    specs: dict[str, Any] = {}
    for name, algorithm in [("dkim", "rsa-sha256")] + ([("dkim_ed25519", "ed25519-sha256")]
                                                       if ed25519 else []):  # fmt: skip
        key_file = folder / f"{name}.pem"
        key_file.write_bytes(generate_key(algorithm).private_pem)
        settings = DkimSettings(
            domain=domain, selector=name.replace("_", "-"), key_file=str(key_file),
            algorithm=algorithm,
        )  # type: ignore[call-arg]  # fmt: skip
        specs[name] = workload.spec.model_copy(update={"dkim": [settings]})
    return specs


def signing_cost_us(spec: Any, workload: Workload, limit: int = 5000) -> dict[str, float]:
    """CPU microseconds per pre-rendered message of the DKIM signer alone (``sign``) and of
    its private-key operations alone (``key_op``: one per configured key), in this process."""
    from raymail.compose.dkim import DkimSigner

    signer = DkimSigner(spec.dkim)
    messages = [m for _, _, m in workload.jobs[:limit]]
    started = time.process_time()
    for message in messages:
        signer.sign(message)
    sign = (time.process_time() - started) / len(messages)
    digest = bytes(32)
    started = time.process_time()
    for _ in messages:
        for signature in signer._signatures:
            signature._sign(digest)
    key_op = (time.process_time() - started) / len(messages)
    return {"sign": round(sign * 1e6, 1), "key_op": round(key_op * 1e6, 1)}


def tracking_specs(workload: Workload) -> dict[str, Any]:
    """The workload's spec with an HTML part, untracked (``html``) and tracked (``tracking``)."""
    from raymail.spec import TrackingSettings, WebSettings

    web = WebSettings(base_url=WEB_BASE_URL)
    html = workload.spec.model_copy(update={"html": HTML, "web": web})
    tracking = TrackingSettings(opens=True, clicks=True)
    return {"html": html, "tracking": html.model_copy(update={"tracking": tracking})}


def check_tracking(specs: dict[str, Any], workload: Workload) -> dict[str, dict[str, float]]:
    """Fail loudly unless the tracked messages carry the redirects and the pixel (and the
    untracked ones do not); return each spec's render cost and size per message, here."""
    import email
    import email.policy

    from raymail.compose.message import MessageTemplate

    rows = list(_merge_rows(workload.recipients))[:2000]
    measured: dict[str, dict[str, float]] = {}
    for name, spec in specs.items():
        template = MessageTemplate(spec)
        address, values = rows[0]
        parsed = email.message_from_bytes(
            template.render(address, values), policy=email.policy.default
        )
        part = parsed.get_body(("html",))
        if part is None:
            raise SystemExit(f"throughput: the {name} round's message has no HTML part")
        body = part.get_content()
        clicks = body.count(f'href="{WEB_BASE_URL}/c/')
        pixel = f'src="{WEB_BASE_URL}/o/' in body
        want = (4, True) if name == "tracking" else (0, False)
        if (clicks, pixel) != want:
            raise SystemExit(
                f"throughput: the {name} round's HTML has {clicks} click redirects and "
                f"pixel={pixel}, expected {want}:\n{body}"
            )
        started = time.perf_counter()
        size = sum(len(template.render(address, values)) for address, values in rows)
        measured[name] = {
            "render_us": round((time.perf_counter() - started) / len(rows) * 1e6, 1),
            "message_bytes": round(size / len(rows)),
        }
    return measured


@dataclass
class SmimeWorkload:
    """The S/MIME round's recipients, as a plain and as an encrypted campaign."""

    messages: int
    plain: Any  # raymail.spec.CampaignSpec
    encrypted: Any
    message_bytes: int  # one encrypted message, rendered
    render_us: dict[str, float]  # plain / smime: the renderer alone, per message


def issue_certificates(folder: Path, emails: list[str]) -> Path:
    """``ADDRESS.pem`` per recipient (one RSA-2048 key, an Ed25519 CA): a certificate dir."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    ca = ed25519.Ed25519PrivateKey.generate()
    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Raymail Bench CA")])
    now = dt.datetime.now(dt.UTC)
    for serial, email in enumerate(emails, start=1):
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, email)]))
            .issuer_name(issuer)
            .public_key(public)
            .serial_number(serial)
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
            .sign(ca, None)
        )
        (folder / f"{email.lower()}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return folder


def build_smime(workload: Workload, folder: Path, count: int) -> SmimeWorkload:
    """The first ``count`` recipients with certificates; the plain and encrypted specs."""
    from raymail.compose.message import MessageTemplate
    from raymail.spec import SmimeSettings

    recipients = write_recipients(folder / "smime-recipients.parquet", count)
    emails = [address for _, address, _ in workload.jobs[:count]]
    certs = issue_certificates(folder / "smime-certs", emails)
    plain = workload.spec.model_copy(
        update={"recipients": str(recipients), "campaign": "throughput-bench-smime-plain"}
    )
    settings = SmimeSettings(mode="encrypt", certificate_dir=str(certs))  # type: ignore[call-arg]
    encrypted = plain.model_copy(update={"smime": settings, "campaign": "throughput-bench-smime"})
    rows = list(_merge_rows(recipients))[: min(count, 1000)]
    render_us: dict[str, float] = {}
    for name, spec in (("plain", plain), ("smime", encrypted)):
        template = MessageTemplate(spec)
        started = time.perf_counter()
        for address, merge in rows:
            template.render(address, merge)
        render_us[name] = round((time.perf_counter() - started) / len(rows) * 1e6, 1)
    size = len(MessageTemplate(encrypted).render(*rows[0]))
    return SmimeWorkload(count, plain, encrypted, size, render_us)


# -- the three senders ---------------------------------------------------------------------


@dataclass
class Result:
    method: str
    messages: int
    accepted: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.accepted / self.seconds if self.seconds > 0 else 0.0


def run_smtp_source(
    binary: str, port: int, workload: Workload, count: int, sessions: int
) -> Result:
    """smtp-source -d: ``sessions`` parallel sessions, each reusing its connection."""
    mail_from, rcpt, _ = workload.jobs[0]
    command = [
        binary, "-4", "-d", "-s", str(sessions), "-m", str(count), "-M", HELO,
        "-f", mail_from, "-t", rcpt, "-F", str(workload.sample_file), f"127.0.0.1:{port}",
    ]  # fmt: skip
    timeout = 300.0 + count / 100
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"smtp-source did not finish within {timeout:.0f} s") from None
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(
            f"smtp-source failed (exit {proc.returncode}): {err.decode(errors='replace')[-500:]}"
        )
    # smtp-source aborts (non-zero exit) on any reply it did not expect, so 0 = all accepted
    return Result("smtp_source", count, count, seconds)


async def _loop(port: int, jobs: list[tuple[str, str, bytes]], connections: int) -> Result:
    import aiosmtplib

    queue = deque(jobs)
    accepted = failed = reconnects = 0

    async def connect() -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, local_hostname=HELO, start_tls=False, timeout=60
        )
        await smtp.connect()
        return smtp

    async def worker() -> aiosmtplib.SMTP:
        nonlocal accepted, failed, reconnects
        smtp = await connect()
        while queue:
            mail_from, rcpt, message = queue.popleft()
            try:
                errors, _ = await smtp.sendmail(mail_from, [rcpt], message)
            except aiosmtplib.SMTPServerDisconnected:
                failed += 1
                reconnects += 1
                if reconnects > connections * 3:
                    raise
                smtp = await connect()
                continue
            except aiosmtplib.SMTPException:
                failed += 1
                continue
            if errors:
                failed += 1
            else:
                accepted += 1
        return smtp

    started = time.perf_counter()
    clients = await asyncio.gather(*(worker() for _ in range(connections)))
    seconds = time.perf_counter() - started
    await asyncio.gather(*(c.quit() for c in clients), return_exceptions=True)
    return Result("aiosmtplib_loop", len(jobs), accepted, seconds, {"failed": failed})


def run_loop(port: int, workload: Workload, connections: int) -> Result:
    """A plain single-process aiosmtplib loop: N reused connections, one shared queue."""
    return asyncio.run(_loop(port, workload.jobs, connections))


def run_raymail(spec: Any, run_dir: Path) -> Result:
    """One raymail campaign; the rate uses the run's own sending time (``elapsed_s``)."""
    from raymail.driver.campaign import run_campaign

    started = time.perf_counter()
    report = run_campaign(spec, run_dir, live_progress=False)
    wall = time.perf_counter() - started
    elapsed = float(report.elapsed_s)
    return Result(
        "raymail",
        int(report.total),
        int(report.accepted),
        elapsed,
        {
            "wall_s": wall,
            "deferred": int(report.deferred),
            "failed": int(report.failed),
            "not_attempted": int(report.not_attempted),
            "attempts": int(report.attempts),
        },
    )


# -- CPU accounting and profiling ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Proc:
    ppid: int
    name: str
    cpu_s: float  # user + system


def _processes() -> dict[int, _Proc]:
    """Every process's parent, name and CPU seconds so far, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, _Proc] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            comm = stat[stat.index("(") : stat.rindex(")") + 1]
            fields = stat[stat.rindex(")") + 2 :].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").strip()
            name = cmd.decode(errors="replace")[:70] or comm
            found[int(entry.name)] = _Proc(
                int(fields[1]), name, (int(fields[11]) + int(fields[12])) / tick
            )
    return found


def _descendants(root: int, procs: dict[int, _Proc]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, proc in procs.items():
        children.setdefault(proc.ppid, []).append(pid)
    tree, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in tree:
                tree.add(child)
                todo.append(child)
    return tree


class CpuWatch:
    """CPU seconds spent while a block runs: by this benchmark's own process tree (this
    process, smtp-sink, Ray and its workers) and by everything else on the machine.

    Sampled from /proc twice a second, so processes that exit inside the block (delivery
    servers) still count up to their last sample.
    """

    def __init__(self, every_s: float = 0.5) -> None:
        self.every_s = every_s
        self.root = os.getpid()
        self._start: dict[int, float] = {}
        self._last: dict[int, _Proc] = {}
        self._mine: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-watch", daemon=True)

    def _sample(self) -> None:
        procs = _processes()
        self._mine |= _descendants(self.root, procs)
        for pid, proc in procs.items():
            self._start.setdefault(pid, 0.0)  # born inside the block
            self._last[pid] = proc

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> CpuWatch:
        procs = _processes()
        self._start = {pid: proc.cpu_s for pid, proc in procs.items()}
        self._last = dict(procs)
        self._mine = _descendants(self.root, procs)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()

    def _used(self, pid: int) -> float:
        return max(self._last[pid].cpu_s - self._start.get(pid, 0.0), 0.0)

    @property
    def own_s(self) -> float:
        return round(sum(self._used(p) for p in self._mine if p in self._last), 2)

    @property
    def others_s(self) -> float:
        return round(sum(self._used(p) for p in self._last if p not in self._mine), 2)

    def busiest(self, top: int = 12) -> list[tuple[str, float]]:
        """This benchmark's processes that used the most CPU, with seconds."""
        used = [(f"{self._last[p].name} [{p}]", round(self._used(p), 2)) for p in self._mine]
        return sorted((u for u in used if u[1] >= 0.05), key=lambda u: -u[1])[:top]


def _delivery_server_pids() -> list[int]:
    """Delivery-server actor processes of this benchmark's Ray (not another session's)."""
    procs = _processes()
    mine = _descendants(os.getpid(), procs) & procs.keys()
    return sorted(pid for pid in mine if procs[pid].name.startswith("ray::DeliveryServer"))


@contextmanager
def py_spy_recording(folder: Path, servers: int) -> Iterator[None]:
    """py-spy the driver (this process) and every delivery server while the block runs."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        log("--profile: py-spy not found; running without a profile")
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    seen: set[int] = set()
    done = threading.Event()

    def record(pid: int, name: str) -> None:
        command = [
            py_spy, "record", "--nonblocking", "--rate", "100", "--format", "raw",
            "--output", str(folder / f"{name}.txt"), "--pid", str(pid),
        ]  # fmt: skip
        with (folder / f"{name}.log").open("wb") as err:
            procs.append(subprocess.Popen(command, stdout=err, stderr=err))

    def watch() -> None:
        deadline = time.monotonic() + 120
        while not done.is_set() and len(seen) < servers and time.monotonic() < deadline:
            for pid in _delivery_server_pids():
                if pid not in seen:
                    seen.add(pid)
                    record(pid, f"delivery-server-{pid}")
            done.wait(0.05)

    record(os.getpid(), "driver")
    watcher = threading.Thread(target=watch, name="py-spy-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join(timeout=5)
        for proc in procs:  # py-spy writes its output on SIGINT or when the target exits
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


_OWN_THREADS = ("CpuWatch.", "py_spy_recording.")  # this script's helper threads


def summarise_profile(folder: Path, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function, from py-spy's raw (collapsed) output.

    py-spy leaves out idle threads, so the shares are of the time a process was busy.
    """
    summary: dict[str, Any] = {}
    for path in sorted(folder.glob("*.txt")):
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        total = 0
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
            if not frames or any(f.startswith(_OWN_THREADS) for f in frames):
                continue
            count = int(count_text)
            total += count
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
        if total:
            summary[path.stem] = {
                "samples": total,
                "self": [(f, round(n / total, 3)) for f, n in own.most_common(top)],
                "inclusive": [(f, round(n / total, 3)) for f, n in inclusive.most_common(top)],
            }
    return summary


# -- the run -------------------------------------------------------------------------------


def private_home(folder: Path) -> None:
    """Point RAYMAIL_HOME at ``folder``: what shaping learned about 127.0.0.1 in other runs
    on this machine (kept in ~/.raymail/routing/shaping.json) must not cap this one's
    connections, and this run's must not cap theirs."""
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["RAYMAIL_HOME"] = str(folder)


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("raymail", "ray", "aiosmtplib", "pyarrow", "polars"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    versions["postfix"] = postfix_version()
    return versions


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None


def start_ray(address: str | None = None) -> None:
    """A fresh local Ray for this process, as ``ensure_ray`` would start one.

    Never a cluster that happens to run on this machine (``ray start``, RAY_ADDRESS): the
    comparison is of one machine's loopback, and others' work there would skew it. Only an
    ``address`` given on purpose (``--ray-address``) is joined.
    """
    import ray

    from raymail.runtime import DELIVERY_RESOURCE, LOCAL_DELIVERY_SLOTS, ensure_ray

    if address and not ray.is_initialized():
        ray.init(address=address, log_to_driver=True, logging_level=logging.WARNING)
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=max(2, os.cpu_count() or 2),
            resources={DELIVERY_RESOURCE: LOCAL_DELIVERY_SLOTS},
            include_dashboard=False,
            log_to_driver=True,
            logging_level=logging.WARNING,
        )
    ensure_ray()  # a no-op now; run_campaign calls it too


def _round(
    n: int,
    args: argparse.Namespace,
    port: int,
    source_bin: str,
    workload: Workload,
    work: Path,
    signed: dict[str, Any],
    smime: SmimeWorkload | None = None,
    tracked: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One round: the loop, raymail, smtp-source, each with its CPU accounting."""
    count = len(workload.jobs)
    gc.collect()
    with CpuWatch() as loop_cpu:
        loop = run_loop(port, workload, args.connections)
    log(f"round {n + 1}: aiosmtplib loop {loop.rate:,.0f} msg/s ({loop.seconds:.2f} s)")

    gc.collect()
    profile = args.profile if args.profile and n == args.repeat - 1 else None
    run_dir = work / f"run-{n + 1}"
    with CpuWatch() as ray_cpu:
        if profile:
            with py_spy_recording(profile, workload.spec.delivery_servers):
                raymail = run_raymail(workload.spec, run_dir)
        else:
            raymail = run_raymail(workload.spec, run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    wall = raymail.extra["wall_s"]
    log(
        f"round {n + 1}: raymail {raymail.rate:,.0f} msg/s ({raymail.seconds:.2f} s sending, "
        f"{wall:.2f} s wall, {raymail.accepted}/{raymail.messages} accepted)"
    )
    if profile:
        busiest = ray_cpu.busiest()
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "cpu_seconds.json").write_text(json.dumps(busiest, indent=2) + "\n")
        log(f"CPU seconds per process in the raymail round ({wall:.1f} s wall, py-spy included):")
        for name, seconds in busiest:
            log(f"  {seconds:7.2f}  {name}")

    dkim_rounds: dict[str, Any] = {}
    tracking_rounds: dict[str, Any] = {}
    variants = [(dkim_rounds, signed), (tracking_rounds, tracked or {})]
    for into, name, spec in [(r, k, v) for r, specs in variants for k, v in specs.items()]:
        # same recipients, signed or with HTML, right after the unsigned run
        gc.collect()
        signed_dir = work / f"run-{n + 1}-{name}"
        with CpuWatch() as signed_cpu:
            result = run_raymail(spec, signed_dir)
        shutil.rmtree(signed_dir, ignore_errors=True)
        log(
            f"round {n + 1}: raymail {name} {result.rate:,.0f} msg/s "
            f"({result.seconds:.2f} s, {result.accepted}/{result.messages} accepted)"
        )
        into[name] = {
            "msg_s": round(result.rate, 1),
            "vs_unsigned": _ratio(result.rate, raymail.rate),
            "elapsed_s": round(result.seconds, 3),
            "accepted": result.accepted,
            "cpu_us_per_msg": round(signed_cpu.own_s / count * 1e6, 1),
            "background_cpu_share": round(
                signed_cpu.others_s / (result.extra["wall_s"] * len(os.sched_getaffinity(0))), 3
            ),
        }

    smime_round: dict[str, Any] = {}
    if smime is not None:  # plain, then encrypted, on the same recipients, back to back
        for name, spec in (("plain", smime.plain), ("smime", smime.encrypted)):
            gc.collect()
            smime_dir = work / f"run-{n + 1}-smime-{name}"
            result = run_raymail(spec, smime_dir)
            shutil.rmtree(smime_dir, ignore_errors=True)
            log(
                f"round {n + 1}: raymail S/MIME round, {name}: {result.rate:,.0f} msg/s "
                f"({result.seconds:.2f} s, {result.accepted}/{result.messages} accepted)"
            )
            smime_round[f"{name}_msg_s"] = round(result.rate, 1)
            smime_round[f"{name}_accepted"] = result.accepted
        smime_round["vs_plain"] = _ratio(smime_round["smime_msg_s"], smime_round["plain_msg_s"])

    with CpuWatch() as source_cpu:
        source = run_smtp_source(source_bin, port, workload, count, args.connections)
    log(f"round {n + 1}: smtp-source {source.rate:,.0f} msg/s ({source.seconds:.2f} s)")

    def cpu(watch: CpuWatch) -> dict[str, float]:
        return {
            "own_cpu_s": watch.own_s,
            "own_cpu_us_per_msg": round(watch.own_s / count * 1e6, 1),
            "others_cpu_s": watch.others_s,
        }

    return {
        "smtp_source_msg_s": round(source.rate, 1),
        "aiosmtplib_loop_msg_s": round(loop.rate, 1),
        "raymail_msg_s": round(raymail.rate, 1),
        "raymail_wall_msg_s": round(raymail.accepted / wall, 1),
        "raymail_vs_loop": _ratio(raymail.rate, loop.rate),
        "raymail_vs_limit": _ratio(raymail.rate, source.rate),
        "smtp_source_s": round(source.seconds, 3),
        "aiosmtplib_loop_s": round(loop.seconds, 3),
        "raymail_elapsed_s": round(raymail.seconds, 3),
        "raymail_wall_s": round(wall, 3),
        "raymail_accepted": raymail.accepted,
        "raymail_deferred": raymail.extra["deferred"],
        "raymail_failed": raymail.extra["failed"],
        "raymail_attempts": raymail.extra["attempts"],
        "aiosmtplib_loop_accepted": loop.accepted,
        "signed": dkim_rounds,
        "tracking": tracking_rounds,
        "smime": smime_round,
        "cpu": {
            "smtp_source": cpu(source_cpu),
            "aiosmtplib_loop": cpu(loop_cpu),
            "raymail": cpu(ray_cpu),
        },
    }


def servers_sweep(
    args: argparse.Namespace, workload: Workload, work: Path, rounds: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """raymail with each of ``--servers`` delivery-server counts, the connections in total
    unchanged, right after the rounds on the same sink. ``vs_limit`` and ``vs_loop`` divide
    by the median smtp-source and loop rates of those rounds (same run, same messages)."""
    limit = _median([r["smtp_source_msg_s"] for r in rounds])
    loop = _median([r["aiosmtplib_loop_msg_s"] for r in rounds])
    rows: list[dict[str, Any]] = []
    for servers in args.servers:
        spec = workload.spec.model_copy(
            update={
                "delivery_servers": servers,
                "concurrency": max(1, args.connections // servers),
            }
        )
        gc.collect()
        run_dir = work / f"run-servers-{servers}"
        with CpuWatch() as watch:
            result = run_raymail(spec, run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        log(
            f"servers {servers} x {spec.concurrency} connections: raymail {result.rate:,.0f} "
            f"msg/s ({result.accepted}/{result.messages} accepted)"
        )
        wall = result.extra["wall_s"]
        rows.append(
            {
                "servers": servers,
                "connections_per_server": spec.concurrency,
                "raymail_msg_s": round(result.rate, 1),
                "accepted": result.accepted,
                "vs_limit": _ratio(result.rate, limit),
                "vs_loop": _ratio(result.rate, loop),
                "cpu_us_per_msg": round(watch.own_s / max(result.accepted, 1) * 1e6, 1),
                "background_cpu_share": round(
                    watch.others_s / (wall * len(os.sched_getaffinity(0))), 3
                ),
            }
        )
    return rows


def benchmark(
    args: argparse.Namespace, sink_bin: str, source_bin: str, work: Path
) -> dict[str, Any]:
    log(
        f"joining Ray at {args.ray_address}" if args.ray_address else "starting a private local Ray"
    )
    start_ray(args.ray_address)
    with SmtpSink(sink_bin, work / "smtp-sink.log") as sink:
        log(f"smtp-sink on 127.0.0.1:{sink.port}; rendering {args.messages} messages")
        workload = build_workload(
            work, args.messages, sink.port, args.connections, args.message_bytes
        )
        log(
            f"{len(workload.jobs)} messages of ~{workload.message_bytes} bytes rendered in "
            f"{workload.render_s:.1f} s ({workload.render_s / len(workload.jobs) * 1e6:.0f} "
            "us each, one process)"
        )
        signed = dkim_specs(workload, work, args.dkim_ed25519) if args.dkim else {}
        sign_us = {name: signing_cost_us(spec, workload) for name, spec in signed.items()}
        tracked = tracking_specs(workload) if args.tracking else {}
        tracking_us = check_tracking(tracked, workload) if tracked else {}
        smime = None
        if args.smime:
            count = min(args.smime_messages, args.messages)
            log(f"S/MIME: issuing {count} recipient certificates")
            smime = build_smime(workload, work, count)
        if args.warmup:
            warm = min(args.messages, 1000)
            log(f"warm-up: raymail with {warm} messages (worker imports, caches)")
            warm_list = str(write_recipients(work / "warmup.parquet", warm))
            protected = [smime.encrypted] if smime else []
            specs = [workload.spec, *signed.values(), *tracked.values(), *protected]
            for n, spec in enumerate(specs):
                warm_spec = spec.model_copy(update={"recipients": warm_list})
                run_raymail(warm_spec, work / f"run-warmup-{n}")
        rounds = [
            _round(n, args, sink.port, source_bin, workload, work, signed, smime, tracked)
            for n in range(args.repeat)
        ]
        by_servers = servers_sweep(args, workload, work, rounds)

    def med(key: str) -> float:
        return round(_median([r[key] for r in rounds]), 1)

    raymail_rate, loop_rate, limit = (
        med("raymail_msg_s"), med("aiosmtplib_loop_msg_s"), med("smtp_source_msg_s")
    )  # fmt: skip
    accepted = min(r["raymail_accepted"] for r in rounds)
    # Ratios pair the measurements of one round, then take the median over rounds.
    vs_loop = round(_median([r["raymail_vs_loop"] or 0.0 for r in rounds]), 3)
    vs_limit = round(_median([r["raymail_vs_limit"] or 0.0 for r in rounds]), 3)
    cores = len(os.sched_getaffinity(0))
    seconds = {"smtp_source": "smtp_source_s", "aiosmtplib_loop": "aiosmtplib_loop_s",
               "raymail": "raymail_wall_s"}  # fmt: skip
    cpu_per_msg = {
        m: round(_median([r["cpu"][m]["own_cpu_us_per_msg"] for r in rounds]), 1) for m in seconds
    }
    background = {
        m: round(_median([r["cpu"][m]["others_cpu_s"] / (r[k] * cores) for r in rounds]), 3)
        for m, k in seconds.items()
    }
    result: dict[str, Any] = {
        "benchmark": "throughput",
        "messages": args.messages,
        "message_bytes": workload.message_bytes,
        "connections": args.connections,
        "delivery_servers": workload.spec.delivery_servers,
        "concurrency_per_server": workload.spec.concurrency,
        "domains": DOMAINS,
        "repeat": args.repeat,
        "smtp_source_msg_s": limit,
        "aiosmtplib_loop_msg_s": loop_rate,
        "raymail_msg_s": raymail_rate,
        "raymail_wall_msg_s": med("raymail_wall_msg_s"),
        "raymail_vs_loop": vs_loop,
        "raymail_vs_limit": vs_limit,
        "loop_vs_limit": _ratio(loop_rate, limit),
        "raymail_wall_vs_loop": _ratio(med("raymail_wall_msg_s"), loop_rate),
        "target_raymail_vs_loop": TARGET_RAYMAIL_VS_LOOP,
        "meets_target": vs_loop >= TARGET_RAYMAIL_VS_LOOP,
        "raymail_accepted": accepted,
        "raymail_missing": args.messages - accepted,
        "aiosmtplib_loop_accepted": min(r["aiosmtplib_loop_accepted"] for r in rounds),
        "render_us_per_message": round(workload.render_s / len(workload.jobs) * 1e6, 1),
        # CPU of this benchmark's processes (incl. smtp-sink, Ray) per message sent
        "cpu_us_per_message": cpu_per_msg,
        # share of all cores used by other processes on the machine while each ran
        "background_cpu_share": background,
        **_dkim_summary(rounds, signed, sign_us, cpu_per_msg["raymail"]),
        **_tracking_summary(rounds, tracking_us),
        **({"by_servers": by_servers} if by_servers else {}),
        **_smime_summary(rounds, smime),
        "rounds": rounds,
        "cpu_count": os.cpu_count(),
        "cpus_usable": cores,
        "platform": platform.platform(),
        "versions": _versions(),
    }
    return result


def _dkim_summary(
    rounds: list[dict[str, Any]],
    signed: dict[str, Any],
    sign_us: dict[str, dict[str, float]],
    unsigned_cpu_us: float,
) -> dict[str, Any]:
    """The signed rounds' medians and their ratios to the unsigned run of the same round."""
    if not signed:
        return {}
    out: dict[str, Any] = {"target_dkim_vs_unsigned": TARGET_DKIM_VS_UNSIGNED}
    for name in signed:
        runs = [r["signed"][name] for r in rounds]
        ratio = round(_median([r["vs_unsigned"] or 0.0 for r in runs]), 3)
        out[f"raymail_{name}_msg_s"] = round(_median([r["msg_s"] for r in runs]), 1)
        out[f"{name}_vs_unsigned"] = ratio
        out[f"raymail_{name}_accepted"] = min(r["accepted"] for r in runs)
        out[f"{name}_sign_us_per_message"] = sign_us[name]["sign"]
        key_op = sign_us[name]["key_op"]
        out[f"{name}_key_op_us"] = key_op
        out[f"{name}_cpu_us_per_message"] = round(_median([r["cpu_us_per_msg"] for r in runs]), 1)
        # Each personalised message needs its own key operation on cores already busy.
        out[f"{name}_vs_unsigned_bound"] = _ratio(unsigned_cpu_us, unsigned_cpu_us + key_op)
    out["meets_dkim_target"] = out["dkim_vs_unsigned"] >= TARGET_DKIM_VS_UNSIGNED
    return out


def _tracking_summary(
    rounds: list[dict[str, Any]], measured: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """The HTML rounds' medians; ratios pair runs of one round (plain, html, tracking)."""
    if not measured:
        return {}
    out: dict[str, Any] = {"target_tracking_vs_unsigned": TARGET_TRACKING_VS_UNSIGNED}
    for name in ("html", "tracking"):
        runs = [r["tracking"][name] for r in rounds]
        out[f"raymail_{name}_msg_s"] = round(_median([r["msg_s"] for r in runs]), 1)
        out[f"{name}_vs_unsigned"] = round(_median([r["vs_unsigned"] or 0.0 for r in runs]), 3)
        out[f"raymail_{name}_accepted"] = min(r["accepted"] for r in runs)
        out[f"{name}_render_us_per_message"] = measured[name]["render_us"]
        out[f"{name}_message_bytes"] = measured[name]["message_bytes"]
    pairs = [_ratio(r["tracking"]["tracking"]["msg_s"], r["tracking"]["html"]["msg_s"])
             for r in rounds]  # fmt: skip
    out["tracking_vs_html"] = round(_median([p or 0.0 for p in pairs]), 3)
    out["meets_tracking_target"] = out["tracking_vs_unsigned"] >= TARGET_TRACKING_VS_UNSIGNED
    return out


def _smime_summary(rounds: list[dict[str, Any]], smime: SmimeWorkload | None) -> dict[str, Any]:
    """The S/MIME rounds' medians; the ratio pairs each round's encrypted and plain runs."""
    if smime is None:
        return {}
    runs = [r["smime"] for r in rounds]
    return {
        "smime_messages": smime.messages,
        "smime_message_bytes": smime.message_bytes,
        "raymail_smime_msg_s": round(_median([r["smime_msg_s"] for r in runs]), 1),
        "raymail_smime_plain_msg_s": round(_median([r["plain_msg_s"] for r in runs]), 1),
        "smime_vs_plain": round(_median([r["vs_plain"] or 0.0 for r in runs]), 3),
        "raymail_smime_accepted": min(r["smime_accepted"] for r in runs),
        "raymail_smime_plain_accepted": min(r["plain_accepted"] for r in runs),
        "smime_render_us_per_message": smime.render_us["smime"],
        "plain_render_us_per_message": smime.render_us["plain"],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000, help="messages per method")
    parser.add_argument("--connections", type=int, default=50, help="SMTP connections each")
    parser.add_argument("--repeat", type=int, default=1, help="alternate rounds; medians")
    parser.add_argument("--message-bytes", type=int, default=2048, help="rendered size target")
    parser.add_argument("--json-out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--no-warmup", dest="warmup", action="store_false", help="skip the raymail warm-up"
    )
    parser.add_argument(
        "--profile", type=Path, help="py-spy the last raymail round; write profiles here"
    )
    parser.add_argument(
        "--no-dkim", dest="dkim", action="store_false", help="skip the RSA-2048 DKIM round"
    )
    parser.add_argument(
        "--dkim-ed25519",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the round signed with Ed25519 only (on by default)",
    )
    parser.add_argument(
        "--no-tracking",
        dest="tracking",
        action="store_false",
        help="skip the HTML rounds (untracked, and with opens and clicks tracked)",
    )
    parser.add_argument(
        "--servers",
        default="",
        help="after the rounds, raymail again with these delivery-server counts (e.g. 1,2,4; "
        "same connections in total, same sink): the servers table",
    )
    parser.add_argument(
        "--no-smime", dest="smime", action="store_false", help="skip the S/MIME round"
    )
    parser.add_argument(
        "--smime-messages", type=int, default=10_000, help="recipients of the S/MIME round"
    )
    parser.add_argument("--ray-address", help="join this Ray instead of a private one")
    args = parser.parse_args(argv)
    try:
        args.servers = [int(x) for x in args.servers.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--servers: comma-separated whole numbers expected, got {args.servers!r}")
    if any(n < 1 or n > args.connections for n in args.servers):
        parser.error("--servers: each count must be between 1 and --connections")
    if args.smime and args.smime_messages < 1:
        parser.error("--smime-messages must be >= 1")
    if args.messages < 1 or args.connections < 2 or args.repeat < 1:
        parser.error("--messages and --repeat must be >= 1, --connections >= 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sink_bin, source_bin = ensure_postfix()
    with tempfile.TemporaryDirectory(prefix="raymail-throughput-") as tmp:
        private_home(Path(tmp) / "raymail-home")
        result = benchmark(args, sink_bin, source_bin, Path(tmp))
    if args.profile:
        summary = summarise_profile(args.profile)
        (args.profile / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        for name, entry in summary.items():
            log(f"profile {name} ({entry['samples']} samples), top self time:")
            for frame, share in entry["self"][:12]:
                log(f"  {share:6.1%}  {frame}")
    text = json.dumps(result, indent=2)
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(text + "\n", encoding="utf-8")
    print(text, flush=True)
    if result["raymail_missing"]:
        log(f"raymail left {result['raymail_missing']} of {args.messages} messages unaccepted")
        return 1
    for row in result.get("by_servers", []):
        if row["accepted"] < args.messages:
            log(
                f"raymail with {row['servers']} servers left "
                f"{args.messages - row['accepted']} unaccepted"
            )
            return 1
    for name in ("smime", "smime_plain"):
        expected = result.get("smime_messages", 0)
        missing = expected - result.get(f"raymail_{name}_accepted", expected)
        if missing:
            log(f"raymail {name} left {missing} of {expected} messages unaccepted")
            return 1
    for name in ("dkim", "dkim_ed25519", "html", "tracking"):
        missing = args.messages - result.get(f"raymail_{name}_accepted", args.messages)
        if missing:
            log(f"raymail {name} left {missing} of {args.messages} messages unaccepted")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
