"""Chaos tool: kill -9 a running campaign at random moments, resume until done, count mail.

Each trial sends one personalised campaign (default 20,000 recipients over 20 domains) to a
capturing SMTP sink on loopback that runs in its own process, so it outlives every kill:

1. ``raymail send SPEC --run-dir D`` starts as a subprocess in a new session (the driver and
   the local Ray it starts share that session);
2. once a random share (``--kill-from``..``--kill-to``, default 5-90 %) of the recipients
   reached the sink, one kill of a random kind (every block of three trials holds each kind
   once, in a random order):

   ``driver``  kill -9 of the driver process alone. Its Ray session (daemons, delivery
               servers) lives on: with probability ``--fence-prob`` it is left running
               until the next resume has fenced it off and ended (the delivery servers
               must stop before the resume reads their journals), else it is killed after
               ``--orphan-grace-s`` so the machine does not fill up with orphans;
   ``actor``   kill -9 of one delivery-server actor process; the run goes on by itself
               (Ray restarts the actor, the driver settles its portions from the journal);
   ``ray``     kill -9 of the whole session at once: driver, Ray daemons and workers;
   ``head``    (only when asked for with ``--kinds``) SIGSTOP of Ray's GCS and raylet (a
               head cut off from the network) and kill -9 of the driver: the delivery
               servers go on with the portions they hold until the next resume fences
               them off (the session is killed once that resume ended);

   ``retry``   (only when asked for with ``--kinds``) the deferral queue: the sink defers a
               share (``--deferred-share``, default 20 %) of the recipients at their first
               two RCPTs, the spec retries on a schedule of 1 s, 2 s; kill -9 of the whole
               session once every other recipient and a random share of the deferred ones
               reached the sink, so the rest are between retries or being retried;

   ``scheduler``, ``scheduler_run``, ``scheduler_all`` (only when asked for with
               ``--kinds``): the campaign goes through the queue and a scheduler instead,
               and the kill hits the scheduler, its run process, or both; new schedulers
               are started until the queue says done (see ``chaos_scheduler.py``);

3. ``raymail resume D`` (a subprocess in a new session) until the run's report says
   complete; with probability ``--rekill-prob`` a resume is itself killed (a random kind)
   once it has sent some more, at most ``--max-rekills`` times per trial.

After each trial the sink's capture is counted per (recipient, Message-ID) and compared with
the run's report: ``missed`` recipients never captured, ``duplicates`` recipients captured
more than once, ``duplicates_not_in_doubt`` duplicates the report never listed as in doubt
(``in_doubt_recipients``; beyond its first 1000 names, the ledger's in_doubt rows), and
``in_doubt`` against two bounds: ``in_flight_bound``, the SMTP transactions that can be in
flight at one kill (delivery servers x concurrency) times the kills of that trial, and
``in_flight_at_kills``, the transactions each kill actually caught, measured from the killed
processes' journals (rows whose last line is "in flight"). For orphans left to the fence,
``orphan_rows_after_fence`` counts, by journal state, what their journals got after the
resume's fence wait (a fate arriving late is fine: that recipient was in doubt; a new "in
flight" line, ``orphan_in_flight_after_fence``, means the fence failed).

Prints one JSON object on stdout (progress goes to stderr); exit status 1 when any trial
missed someone, sent a duplicate not in doubt, had more in doubt than in flight at its
kills, or did not end complete. The folders of such trials are kept (their paths are in the
JSON); clean ones are deleted unless ``--keep``.

    python benchmarks/chaos.py [--trials 20] [--recipients 20000] [--seed 1]
                               [--dispatch push|pull|mixed] [--fence-prob 0.5]
                               [--json-out PATH] [--work-dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from raymail.delivery.journal import (
    FENCE_FILE,
    FENCE_WAIT_S,
    JOURNAL_DIR,
    journal_files,
    journal_states,
)
from raymail.run.ledger import read_outcomes
from raymail.run.report import build_report
from raymail.run.rundir import RunDir
from raymail.sink import SinkConfig, SinkProcess, read_capture

KINDS = ("driver", "actor", "ray")  # the default mix
SCHEDULER_KINDS = ("scheduler", "scheduler_run", "scheduler_all")  # chaos_scheduler.py
ALL_KINDS = (*KINDS, "head", "retry", *SCHEDULER_KINDS)
DEFERRED_TIMES = 2  # kind retry: RCPTs the sink defers each chosen recipient at
RETRY_SCHEDULE = {"schedule": ["1s", "2s"], "max_age": "1h", "linger": "1m"}
DOMAINS = 20
RUN_TIMEOUT_S = 900.0  # one send or resume subprocess, start to exit
KILL_WAIT_S = 600.0  # longest wait for the kill moment
POLL_S = 0.02

FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia")
LAST_NAMES = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson")
CITIES = ("Lisbon", "Kyoto", "Lagos", "Quito", "Oslo", "Perth", "Pune", "Tartu", "Leeds")


def log(message: str) -> None:
    print(f"chaos: {message}", file=sys.stderr, flush=True)


# -- inputs --------------------------------------------------------------------------------


def write_recipients(path: Path, count: int, *, domains: int = DOMAINS, seed: int = 11) -> Path:
    """``count`` unique recipients over ``domains`` domains of uneven size, four merge fields."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.sqrt(np.arange(1, domains + 1))
    domain_of = rng.choice(domains, size=count, p=weights / weights.sum()).tolist()
    table = pa.table(
        {
            "email": [f"r{i}@chaos{d}.example" for i, d in enumerate(domain_of)],
            "first_name": [FIRST_NAMES[i % len(FIRST_NAMES)] for i in range(count)],
            "last_name": [LAST_NAMES[(i * 5) % len(LAST_NAMES)] for i in range(count)],
            "city": [CITIES[(i * 7) % len(CITIES)] for i in range(count)],
            "code": [f"C{i:07d}" for i in range(count)],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def write_spec(
    path: Path,
    recipients: Path,
    sink_address: str,
    *,
    servers: int,
    concurrency: int,
    dispatch: str = "push",
    retry: dict[str, Any] | None = None,
) -> Path:
    """A personalised campaign (one transaction per recipient) aimed at the sink."""
    spec = {
        "campaign": "chaos",
        "sender": "Chaos Bench <news@chaos.example>",
        "subject": "{{ first_name }}, your {{ city }} news (code {{ code }})",
        "text": (
            "Hi {{ first_name }} {{ last_name }},\n\nhere is this month's news for {{ city }}.\n"
            "Your personal code is {{ code }}.\n\n-- The Chaos team\n"
        ),
        "recipients": str(recipients),
        "mx_override": {"*": sink_address},
        "delivery_servers": servers,
        "concurrency": concurrency,
        "unsubscribe_url": "https://chaos.example/u/{token}",
        "verp_secret": "chaos-secret",
        "dispatch": dispatch,
    }
    if retry is not None:
        spec["retry"] = retry
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


# -- processes -----------------------------------------------------------------------------


# Every process this tool starts (and every Ray process those start: they inherit the
# environment) carries this mark. Kills go only to processes of the right session that
# carry it: pids wrap quickly on a busy machine (pid_max may be 32768), and a session id
# left over from a dead driver may since belong to somebody else's process.
OWNER_VAR = "RAYMAIL_CHAOS_OWNER"
# setdefault: chaos_scheduler.py imports this file again as ``chaos`` (it runs as __main__),
# and both copies must mark and recognise the same processes.
OWNER = os.environ.setdefault(OWNER_VAR, f"{os.getpid()}-{uuid.uuid4().hex}")
_OWNER_ENTRY = f"{OWNER_VAR}={OWNER}".encode()


def raymail_env(ray_tmpdir: Path) -> dict[str, str]:
    """Environment of raymail subprocesses: a fresh local Ray under our own temp folder,
    and a RAYMAIL_HOME of our own (the routing table and suppression list of the machine's
    user are neither read nor written)."""
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_TMPDIR=str(ray_tmpdir))
    env["RAYMAIL_HOME"] = str(ray_tmpdir / "raymail-home")
    env[OWNER_VAR] = OWNER
    env.pop("RAY_ADDRESS", None)
    return env


def owned(pid: int) -> bool:
    """Whether ``pid`` was started by this tool (directly or through Ray)."""
    try:
        return _OWNER_ENTRY in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def spawn_raymail(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``raymail ARGS`` in a new session (its Ray daemons and workers join that session)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "raymail.cli", *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def _stat_fields(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()  # fields from the 3rd on (state, ppid, ...)


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid`` that this tool started."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fields = _stat_fields(pid)
        if fields is not None and int(fields[3]) == sid and fields[0] != "Z" and owned(pid):
            pids.append(pid)
    return pids


def kill_session(sid: int, *, rounds: int = 20) -> int:
    """kill -9 every process of session ``sid`` (driver, Ray daemons, workers); bounded.

    Ray gives each worker a process group of its own, so ``killpg`` is not enough; a raylet
    may fork a worker while it dies, hence a few rounds until the session is empty.
    """
    killed = 0
    for _ in range(rounds):
        pids = session_pids(sid)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.05)
    return killed


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def actor_pids(sid: int) -> list[int]:
    """Delivery-server actor processes of session ``sid`` (Ray titles them by class)."""
    return sorted(pid for pid in session_pids(sid) if b"DeliveryServer" in cmdline(pid))


def busy_actors(pids: list[int], run_dir: Path, recent_s: float = 1.0) -> list[int]:
    """The actors among ``pids`` whose delivery journal grew in the last ``recent_s``.

    Each delivery-server process journals to ``journal/<server>-<pid>.log``; an actor that
    has not written lately holds no transaction, and killing it would test nothing.
    """
    now = time.time()
    busy = []
    for pid in pids:
        for path in (run_dir / JOURNAL_DIR).glob(f"*-{pid}.log"):
            with contextlib.suppress(OSError):
                stat = path.stat()
                if stat.st_size and now - stat.st_mtime <= recent_s:
                    busy.append(pid)
                    break
    return busy


class CaptureCounter:
    """Counts captured transactions by reading only the new bytes of the capture files."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._offsets: dict[Path, int] = {}
        self.count = 0

    def poll(self) -> int:
        for path in sorted(self.folder.glob("capture-*.jsonl")):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as fh:
                fh.seek(offset)
                data = fh.read()
            end = data.rfind(b"\n")
            if end >= 0:
                self.count += data.count(b"\n", 0, end + 1)
                self._offsets[path] = offset + end + 1
        return self.count


def wait_until(condition: Callable[[], bool], timeout_s: float, poll_s: float = POLL_S) -> bool:
    """Poll ``condition`` until true or ``timeout_s``; say which."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)


def sent_or_ended(
    counter: CaptureCounter, goal: int, proc: subprocess.Popen[bytes]
) -> Callable[[], bool]:
    """A condition: the sink captured ``goal`` transactions, or ``proc`` exited."""
    return lambda: counter.poll() >= goal or proc.poll() is not None


@dataclass
class Sessions:
    """Every session this tool started, so a ``finally`` can kill what is left of them."""

    sids: list[int] = field(default_factory=list)

    def add(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        self.sids.append(proc.pid)
        return proc

    def kill_all(self) -> None:
        for sid in self.sids:
            kill_session(sid)


def wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """The exit code, or None (after killing its whole session) when it ran too long."""
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        return None


# -- one trial -----------------------------------------------------------------------------


@dataclass
class Settings:
    recipients: int
    servers: int
    concurrency: int
    latency_ms: float
    kill_from: float
    kill_to: float
    rekill_prob: float
    max_rekills: int
    orphan_grace_s: float
    fence_prob: float
    dispatch: str  # push, pull, or mixed (push in even trials, pull in odd ones)
    kinds: list[str]  # kill kinds to draw from (resume kills too)
    deferred_share: float = 0.2  # kind retry: share of recipients the sink defers at first

    def dispatch_of(self, trial: int) -> str:
        if self.dispatch == "mixed":
            return "push" if trial % 2 == 0 else "pull"
        return self.dispatch

    @property
    def in_flight_per_kill(self) -> int:
        return self.servers * self.concurrency


def run_status(run_dir: Path) -> str | None:
    try:
        return str(RunDir(run_dir).manifest().get("status"))
    except Exception:  # not created yet, or unreadable: not complete either way
        return None


def journal_sizes(run_dir: Path) -> dict[str, int]:
    sizes = {}
    for path in (run_dir / JOURNAL_DIR).glob("*.log"):
        with contextlib.suppress(OSError):
            sizes[path.name] = path.stat().st_size
    return sizes


def fence_stamp(run_dir: Path) -> tuple[int, int] | None:
    """Identity of the fence file (a resume replaces it, even with the same epoch)."""
    try:
        stat = (run_dir / JOURNAL_DIR / FENCE_FILE).stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def epoch_prefix(run_dir: Path) -> str:
    """Journal-name prefix of the current driver's delivery servers (ds0, r1-ds0, ...)."""
    resumes = int(RunDir(run_dir).manifest().get("resumes") or 0)
    return "ds" if resumes == 0 else f"r{resumes}-ds"


def in_flight_rows(run_dir: Path, match: Callable[[str], bool]) -> int:
    """Rows whose last journal line is "in flight", in the journals ``match`` selects: the
    transactions a kill caught between writing the body and journaling the reply."""
    files = [p for p in journal_files(run_dir) if match(p.name)]
    return int((journal_states(files)["state"] == "I").sum()) if files else 0


def of_epoch(prefix: str) -> Callable[[str], bool]:
    return lambda name: name.startswith(prefix) and name[len(prefix) : len(prefix) + 1].isdigit()


def wait_dead(pid: int, timeout_s: float = 5.0) -> None:
    """Until ``pid`` is gone or a zombie (SIGKILL is delivered asynchronously)."""
    wait_until(lambda: (_stat_fields(pid) or ["Z"])[0] == "Z", timeout_s, poll_s=0.01)


@dataclass
class Orphans:
    """The session of a driver killed alone, left running until a resume fences it."""

    sid: int
    record: dict[str, Any]
    journals: list[str]  # its delivery servers' journal files at the kill
    prefix: str  # their journal-name prefix
    killed_at: float = field(default_factory=time.monotonic)
    # (fd, size) per journal once the resume's fence wait is over; an open descriptor
    # still reads a journal the completed run has since removed.
    after_fence: dict[str, tuple[int, int]] = field(default_factory=dict)

    def late_rows(self) -> dict[str, int]:
        """Rows journaled (by state) after the fence wait; closes the descriptors."""
        rows: Counter[str] = Counter()
        for fd, size in self.after_fence.values():
            try:
                data = os.pread(fd, 1 << 24, size)
            finally:
                os.close(fd)
            for line in data.decode("ascii", "replace").splitlines():
                parts = line.split("\t")
                if len(parts) == 4 and parts[3]:
                    rows[parts[0]] += parts[3].count(",") + 1
        self.after_fence.clear()
        return dict(rows)


class Trial:
    """One send, one kill, resumes (maybe killed again) until complete; then the counts."""

    def __init__(
        self,
        index: int,
        rng: random.Random,
        settings: Settings,
        folder: Path,
        env: dict[str, str],
    ) -> None:
        self.index = index
        self.rng = rng
        self.settings = settings
        self.run_dir = folder / "run"
        self.capture = folder / "capture"
        self.logs = folder / "logs"
        self.folder = folder
        self.env = env
        self.counter = CaptureCounter(self.capture)
        self.sessions = Sessions()
        self.kills: list[dict[str, Any]] = []
        self.exits: list[int | None] = []
        self.orphans: list[Orphans] = []
        self.resumes = 0

    def spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        return self.sessions.add(spawn_raymail(args, self.logs / log_name, self.env))

    def kill(self, kind: str, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        """Kill as ``kind`` says; ``proc`` is the driver (its pid is the session id)."""
        sid = proc.pid
        record: dict[str, Any] = {"kind": kind, "captured_at_kill": self.counter.poll()}
        if kind == "driver":
            os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if self.rng.random() < self.settings.fence_prob:
                # Leave its Ray (and delivery servers) running: the next resume must fence
                # them off. They are killed once that resume has ended.
                self._leave(sid, record)
            else:
                self._grace(sid, record)
        elif kind == "actor":
            pids = actor_pids(sid)
            if not pids:
                return {"kind": "none", "why": "no delivery-server process found"}
            busy = busy_actors(pids, self.run_dir)
            victim = self.rng.choice(busy or pids)
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
            wait_dead(victim)
            record.update(actor_pid=victim, actors_seen=len(pids), actors_busy=len(busy))
            record["in_flight_at_kill"] = in_flight_rows(
                self.run_dir, lambda name: name.endswith(f"-{victim}.log")
            )
        elif kind == "head":
            # Freeze Ray's control plane (GCS and raylet: a head cut off from the network)
            # and kill -9 the driver. Nobody is left to stop the delivery servers, which go
            # on with the portions they hold until a resume fences them off; the session is
            # killed once that resume has ended.
            frozen = [
                pid
                for pid in session_pids(sid)
                if any(name in cmdline(pid) for name in (b"gcs_server", b"raylet"))
            ]
            for pid in frozen:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            os.kill(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            record["frozen"] = len(frozen)
            self._leave(sid, record)
        elif kind in ("ray", "retry"):  # retry: the whole session, in the retry phase
            prefix = epoch_prefix(self.run_dir)
            record["processes_killed"] = kill_session(sid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            record["in_flight_at_kill"] = in_flight_rows(self.run_dir, of_epoch(prefix))
        else:
            raise ValueError(f"unknown kill kind {kind!r}")
        return record

    def _leave(self, sid: int, record: dict[str, Any]) -> None:
        """Leave a killed driver's session to the next resume's fence."""
        record["orphans"] = "left to the resume's fence"
        journals = sorted(journal_sizes(self.run_dir))
        self.orphans.append(Orphans(sid, record, journals, epoch_prefix(self.run_dir)))

    def _grace(self, sid: int, record: dict[str, Any]) -> None:
        """The orphans go on for a moment, as after a real crash; then kill what is left.

        Notes how long Ray lets the dead driver's delivery servers live, and what they sent.
        """
        grace = self.settings.orphan_grace_s
        started = time.monotonic()
        wait_until(lambda: not actor_pids(sid), grace, poll_s=0.1)
        gone = time.monotonic() - started
        record["orphans"] = "killed after the grace period"
        record["actors_gone_after_s"] = round(gone, 2) if not actor_pids(sid) else None
        time.sleep(max(0.0, grace - gone))
        record["lingering_processes"] = len(session_pids(sid))
        record["lingering_actors"] = len(actor_pids(sid))
        record["captured_during_grace"] = self.counter.poll() - record["captured_at_kill"]
        prefix = epoch_prefix(self.run_dir)
        kill_session(sid)
        record["in_flight_at_kill"] = in_flight_rows(self.run_dir, of_epoch(prefix))

    def _watch_fence(self, rproc: subprocess.Popen[bytes], fenced: list[Orphans]) -> None:
        """Wait for the resume to raise the fence and finish its wait; mark the journals.

        Whatever the orphans journal after that moment was written after the resume read
        the journals: a late fate is fine (that recipient was in doubt), but a new "in
        flight" line means the fence did not stop them.
        """
        stamp = fence_stamp(self.run_dir)
        gone: dict[int, float] = {}

        def fence_raised() -> bool:
            for orphan in fenced:  # note when Ray itself ended the orphaned servers
                if orphan.sid not in gone and not actor_pids(orphan.sid):
                    gone[orphan.sid] = time.monotonic() - orphan.killed_at
            return fence_stamp(self.run_dir) != stamp or rproc.poll() is not None

        wait_until(fence_raised, KILL_WAIT_S, poll_s=0.05)
        raised = time.monotonic()
        for orphan in fenced:
            orphan.record["orphan_actors_at_fence"] = len(actor_pids(orphan.sid))
            orphan.record["fence_raised_after_s"] = round(raised - orphan.killed_at, 2)
            orphan.record["orphan_actors_gone_after_s"] = (
                round(gone[orphan.sid], 2) if orphan.sid in gone else None
            )
        time.sleep(FENCE_WAIT_S)
        for orphan in fenced:
            # What the resume found in flight in the orphans' journals (they are usually
            # gone by now; if not, a snapshot).
            orphan.record["in_flight_at_kill"] = in_flight_rows(
                self.run_dir, of_epoch(orphan.prefix)
            )
            for name in orphan.journals:
                with contextlib.suppress(OSError):
                    fd = os.open(self.run_dir / JOURNAL_DIR / name, os.O_RDONLY)
                    orphan.after_fence[name] = (fd, os.fstat(fd).st_size)

    def _end_orphans(self, fenced: list[Orphans]) -> None:
        """After the resume that fenced them: note what they journaled late, kill them."""
        for orphan in fenced:
            kill_session(orphan.sid)
            orphan.record["orphan_rows_after_fence"] = orphan.late_rows()
            self.orphans.remove(orphan)

    def run(self, kind: str, recipients: Path) -> dict[str, Any]:
        settings, rng, n = self.settings, self.rng, self.settings.recipients
        started = time.monotonic()
        share = rng.uniform(settings.kill_from, settings.kill_to)
        config = SinkConfig(seed=self.index, default={"latency_ms": settings.latency_ms})  # type: ignore[arg-type]
        target = max(1, int(n * share))
        retry = None
        if kind == "retry":  # defer some at first; kill once the others and a share of them got in
            emails = pl.read_parquet(recipients, columns=["email"])["email"].to_list()
            deferred = rng.sample(emails, max(1, int(n * settings.deferred_share)))
            config = config.model_copy(
                update={"tempfail_first": dict.fromkeys(deferred, DEFERRED_TIMES)}
            )
            retry = RETRY_SCHEDULE
            target = n - len(deferred) + max(1, int(len(deferred) * share))
        with SinkProcess(config, capture_dir=self.capture) as sink:
            spec = write_spec(
                self.folder / "campaign.yaml",
                recipients,
                sink.address,
                servers=settings.servers,
                concurrency=settings.concurrency,
                dispatch=settings.dispatch_of(self.index),
                retry=retry,
            )
            try:
                self._send_and_resume(kind, spec, target)
            finally:
                self.sessions.kill_all()
                for orphan in self.orphans:
                    orphan.late_rows()  # closes the descriptors of a trial that broke
        result = count_trial(self.run_dir, self.capture, n)
        done = [k for k in self.kills if k["kind"] != "none"]
        bound = max(1, len(done)) * settings.in_flight_per_kill
        flights = [k.get("in_flight_at_kill") for k in done]
        measured = None if None in flights else sum(int(f or 0) for f in flights)
        late = Counter[str]()
        for k in self.kills:
            late.update(k.get("orphan_rows_after_fence", {}))
        result.update(
            trial=self.index,
            kind=kind,
            dispatch=settings.dispatch_of(self.index),
            kill_share_target=round(share, 3),
            kills=self.kills,
            kill_count=len(done),
            exit_codes=self.exits,
            resumes=self.resumes,
            in_flight_bound=bound,
            in_doubt_within_bound=result["in_doubt"] <= bound,
            in_flight_at_kills=measured,
            in_doubt_within_measured=None if measured is None else result["in_doubt"] <= measured,
            orphan_rows_after_fence=dict(late),
            orphan_in_flight_after_fence=late.get("I", 0),
            elapsed_s=round(time.monotonic() - started, 1),
        )
        result["ok"] = bool(
            result["status"] == "complete"
            and result["missed"] == 0
            and result["duplicates_not_in_doubt"] == 0
            and result["unexpected"] == 0
            and result["in_doubt_within_bound"]
            and result["in_doubt_within_measured"] is not False
        )
        return result

    def _send_and_resume(self, kind: str, spec: Path, target: int) -> None:
        settings, rng, n = self.settings, self.rng, self.settings.recipients
        proc = self.spawn(["send", str(spec), "--run-dir", str(self.run_dir)], "send.log")
        reached = wait_until(sent_or_ended(self.counter, target, proc), KILL_WAIT_S)
        if reached and proc.poll() is None:
            self.kills.append(self.kill(kind, proc))
        else:
            self.kills.append({"kind": "none", "why": "the run ended before the kill moment"})
        self.exits.append(wait_exit(proc, RUN_TIMEOUT_S))
        if not any(o.sid == proc.pid for o in self.orphans):
            kill_session(proc.pid)
        rekills = 0
        while run_status(self.run_dir) != "complete" and self.resumes < settings.max_rekills + 3:
            self.resumes += 1
            fenced = list(self.orphans)
            rproc = self.spawn(["resume", str(self.run_dir)], f"resume-{self.resumes}.log")
            if fenced:
                self._watch_fence(rproc, fenced)
            if rekills < settings.max_rekills and rng.random() < settings.rekill_prob:
                rekill = rng.choice(settings.kinds)
                base = self.counter.poll()
                more = rng.randint(1, max(1, (n - base) // 2))
                hit = wait_until(sent_or_ended(self.counter, base + more, rproc), KILL_WAIT_S)
                if hit and rproc.poll() is None:
                    record = self.kill(rekill, rproc)
                    record["during_resume"] = self.resumes
                    self.kills.append(record)
                    rekills += 1
            self.exits.append(wait_exit(rproc, RUN_TIMEOUT_S))
            self._end_orphans(fenced)
            if not any(o.sid == rproc.pid for o in self.orphans):
                kill_session(rproc.pid)


def failed_trial(index: int, kind: str, exc: Exception) -> dict[str, Any]:
    """The record of a trial the tool itself could not finish (counted as not ok)."""
    log(f"trial {index} {kind}: {type(exc).__name__}: {exc}")
    return {
        "trial": index,
        "kind": kind,
        "status": "error",
        "error": f"{type(exc).__name__}: {exc}",
        "kills": [],
        "kill_count": 0,
        "resumes": 0,
        "missed": 0,
        "duplicates": 0,
        "duplicates_not_in_doubt": 0,
        "unexpected": 0,
        "in_doubt": 0,
        "in_flight_bound": 0,
        "in_doubt_within_bound": False,
        "elapsed_s": None,
        "ok": False,
    }


def count_trial(run_dir: Path, capture: Path, n: int) -> dict[str, Any]:
    """Deliveries per (recipient, Message-ID) at the sink against the run's ledger."""
    expected = pl.read_parquet(run_dir / "recipients.parquet", columns=["email"])["email"]
    captured = read_capture(capture).select(["rcpt_to", "message_id"])
    report = build_report(run_dir)
    doubted = set(report.in_doubt_recipients)
    if report.in_doubt_ever > len(doubted):  # the report names the first 1000 only
        outcomes = read_outcomes(run_dir).filter(pl.col("status") == "in_doubt")
        doubted = set(outcomes["email"].unique().to_list())
    result = tally_deliveries(set(expected.to_list()), captured, doubted)
    result["status"] = report.status
    result["report"] = {
        key: report.as_json()[key]
        for key in (
            "accepted", "deferred", "failed", "expired", "in_doubt", "in_doubt_ever", "resumes"
        )
    }  # fmt: skip
    deferred = read_outcomes(run_dir).filter(pl.col("status") == "deferred")
    result["deferred_ever"] = deferred["row"].n_unique()  # recipients retried (kind retry)
    return result


def tally_deliveries(want: set[str], captured: pl.DataFrame, doubted: set[str]) -> dict[str, Any]:
    """Compare what the sink captured (``rcpt_to``, ``message_id``) with who should get mail.

    ``doubted``: every recipient the run ever called in doubt; a duplicate outside it is a
    recipient sent twice although the run believed it knew its fate.
    """
    per_pair = captured.group_by(["rcpt_to", "message_id"]).len()
    per_rcpt = captured.group_by("rcpt_to").agg(
        pl.len().alias("n"), pl.col("message_id").n_unique().alias("ids")
    )
    got = set(per_rcpt["rcpt_to"].to_list())
    missed = sorted(want - got)
    unexpected = sorted(got - want)
    duplicates = set(per_rcpt.filter(pl.col("n") > 1)["rcpt_to"].to_list())
    not_in_doubt = sorted(duplicates - doubted)
    return {
        "expected": len(want),
        "captured_deliveries": captured.height,
        "distinct_recipients": len(got),
        "missed": len(missed),
        "unexpected": len(unexpected),
        "duplicates": len(duplicates),
        "duplicate_pairs": int((per_pair["len"] > 1).sum()),
        "extra_deliveries": captured.height - len(got),
        "message_ids_per_recipient_max": int(per_rcpt["ids"].max() or 0),
        "duplicates_not_in_doubt": len(not_in_doubt),
        "in_doubt": len(doubted),
        "duplicates_in_doubt": len(duplicates & doubted),
        "examples": {"missed": missed[:10], "duplicates_not_in_doubt": not_in_doubt[:10]},
    }


# -- the whole run ---------------------------------------------------------------------------


def kind_order(trials: int, allowed: list[str], rng: random.Random) -> list[str]:
    """Each block of len(allowed) trials holds each kind once, in a random order."""
    kinds: list[str] = []
    while len(kinds) < trials:
        block = list(allowed)
        rng.shuffle(block)
        kinds += block
    return kinds[:trials]


@contextlib.contextmanager
def work_folder(path: Path | None, keep: bool) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path.resolve()
        return
    folder = Path(tempfile.mkdtemp(prefix="raymail-chaos-"))
    try:
        yield folder
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)


def summarise(trials: list[dict[str, Any]], settings: Settings, elapsed: float) -> dict[str, Any]:
    kinds = Counter(t["kind"] for t in trials)
    kill_kinds = Counter(k["kind"] for t in trials for k in t["kills"])
    per_kind: dict[str, dict[str, int]] = {}
    for t in trials:
        entry = per_kind.setdefault(
            t["kind"], {"trials": 0, "missed": 0, "duplicates": 0, "duplicates_not_in_doubt": 0}
        )
        entry["trials"] += 1
        for key in ("missed", "duplicates", "duplicates_not_in_doubt"):
            entry[key] += t[key]
    return {
        "benchmark": "chaos",
        "trials": len(trials),
        "recipients": settings.recipients,
        "delivery_servers": settings.servers,
        "concurrency": settings.concurrency,
        "sink_latency_ms": settings.latency_ms,
        "dispatch": settings.dispatch,
        "missed": sum(t["missed"] for t in trials),
        "duplicates": sum(t["duplicates"] for t in trials),
        "duplicates_not_in_doubt": sum(t["duplicates_not_in_doubt"] for t in trials),
        "unexpected": sum(t["unexpected"] for t in trials),
        "in_doubt": sum(t["in_doubt"] for t in trials),
        "max_in_doubt_per_trial": max((t["in_doubt"] for t in trials), default=0),
        "in_flight_bound": settings.in_flight_per_kill,
        "in_flight_bound_is": "per kill: delivery servers x concurrency (a trial's own "
        "bound multiplies it by that trial's kills)",
        "in_doubt_within_bound": all(t["in_doubt_within_bound"] for t in trials),
        "in_flight_at_kills": sum(t.get("in_flight_at_kills") or 0 for t in trials),
        "in_doubt_within_measured_in_flight": all(
            t.get("in_doubt_within_measured") is not False for t in trials
        ),
        "incomplete": sum(t["status"] != "complete" for t in trials),
        "kills": sum(t["kill_count"] for t in trials),
        "trials_with_kill": sum(t["kill_count"] > 0 for t in trials),
        "resume_kills": sum(1 for t in trials for k in t["kills"] if "during_resume" in k),
        "resumes": sum(t["resumes"] for t in trials),
        "orphans_left_to_fence": sum(
            1 for t in trials for k in t["kills"] if k.get("orphans", "").startswith("left")
        ),
        "orphan_in_flight_after_fence": sum(
            t.get("orphan_in_flight_after_fence", 0) for t in trials
        ),
        "trials_by_kind": dict(sorted(kinds.items())),
        "kills_by_kind": dict(sorted(kill_kinds.items())),
        "by_kind": per_kind,
        "all_ok": all(t["ok"] for t in trials),
        "elapsed_s": round(elapsed, 1),
        "per_trial": trials,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM ends the run through the ``finally`` blocks that kill what it started."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--recipients", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--servers", type=int, default=2, help="delivery servers")
    parser.add_argument("--concurrency", type=int, default=25, help="connections per server")
    parser.add_argument("--latency-ms", type=float, default=3.0, help="sink latency per message")
    parser.add_argument("--kill-from", type=float, default=0.05, help="earliest kill (share)")
    parser.add_argument("--kill-to", type=float, default=0.90, help="latest kill (share)")
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        help=f"kill kinds to draw from, of {', '.join(ALL_KINDS)}",
    )
    parser.add_argument("--rekill-prob", type=float, default=0.25)
    parser.add_argument("--max-rekills", type=int, default=1, help="resume kills per trial")
    parser.add_argument("--orphan-grace-s", type=float, default=2.0)
    parser.add_argument(
        "--fence-prob",
        type=float,
        default=0.5,
        help="share of driver kills whose orphaned Ray is left running until the resume "
        "fenced it (the rest are killed after --orphan-grace-s)",
    )
    parser.add_argument(
        "--dispatch",
        choices=("push", "pull", "mixed"),
        default="push",
        help="the spec's dispatch mode; mixed: push in even trials, pull in odd ones",
    )
    parser.add_argument(
        "--deferred-share",
        type=float,
        default=0.2,
        help="kind retry: share of recipients the sink defers at their first two RCPTs",
    )
    parser.add_argument("--json-out", type=Path)
    parser.add_argument("--work-dir", type=Path, help="keep trial folders here")
    parser.add_argument("--keep", action="store_true", help="keep the folders of clean trials")
    args = parser.parse_args(argv)
    kinds_allowed = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if not kinds_allowed or set(kinds_allowed) - set(ALL_KINDS):
        parser.error(f"--kinds: choose from {', '.join(ALL_KINDS)}")
    if not 0 < args.kill_from <= args.kill_to < 1:
        parser.error("need 0 < --kill-from <= --kill-to < 1")
    settings = Settings(
        recipients=args.recipients,
        servers=args.servers,
        concurrency=args.concurrency,
        latency_ms=args.latency_ms,
        kill_from=args.kill_from,
        kill_to=args.kill_to,
        rekill_prob=args.rekill_prob,
        max_rekills=args.max_rekills,
        orphan_grace_s=args.orphan_grace_s,
        fence_prob=args.fence_prob,
        dispatch=args.dispatch,
        kinds=kinds_allowed,
        deferred_share=args.deferred_share,
    )
    rng = random.Random(args.seed)
    order = kind_order(args.trials, kinds_allowed, rng)
    started = time.monotonic()
    trials: list[dict[str, Any]] = []
    keep_root = args.keep or args.work_dir is not None
    with work_folder(args.work_dir, keep_root) as work:
        # Ray's sockets live under RAY_TMPDIR: keep the path short (AF_UNIX limit).
        ray_tmp = Path(tempfile.mkdtemp(prefix="rmchaos-", dir="/tmp"))
        try:
            recipients = write_recipients(work / "recipients.parquet", args.recipients)
            env = raymail_env(ray_tmp)
            for i, kind in enumerate(order):
                folder = work / f"trial-{i:02d}"
                try:
                    if kind in SCHEDULER_KINDS:
                        from chaos_scheduler import SchedulerTrial  # needs this module

                        trial = SchedulerTrial(i, rng, settings, folder, env).run(kind, recipients)
                    else:
                        trial = Trial(i, rng, settings, folder, env).run(kind, recipients)
                except Exception as exc:  # a broken trial is a finding, not a crash
                    trial = failed_trial(i, kind, exc)
                trial["folder"] = str(folder)
                trials.append(trial)
                log(
                    f"trial {i} {kind}: kills {[k['kind'] for k in trial['kills']]}, "
                    f"resumes {trial['resumes']}, missed {trial['missed']}, duplicates "
                    f"{trial['duplicates']} (not in doubt {trial['duplicates_not_in_doubt']}), "
                    f"in doubt {trial['in_doubt']}/{trial['in_flight_bound']}, "
                    f"{trial['status']}, {trial['elapsed_s']} s"
                )
                if trial["ok"] and not args.keep:
                    shutil.rmtree(folder, ignore_errors=True)
                    trial["folder"] = None
        finally:
            shutil.rmtree(ray_tmp, ignore_errors=True)
        if not keep_root and not all(t["ok"] for t in trials):
            kept = Path(tempfile.mkdtemp(prefix="raymail-chaos-kept-"))
            for t in trials:
                if t["folder"]:
                    target = kept / Path(t["folder"]).name
                    shutil.move(t["folder"], target)
                    t["folder"] = str(target)
    result = summarise(trials, settings, time.monotonic() - started)
    text = json.dumps(result, indent=2, default=str)
    if args.json_out:
        args.json_out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0 if result["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
