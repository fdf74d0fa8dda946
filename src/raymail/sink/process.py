"""A sink in a child process, so its event loop and GIL are not the driver's.

``SinkProcess`` spawns ``python -m raymail.sink --parent-pipe``, hands it the config on
stdin, and waits (bounded) for the line that names its port. The child stops when stdin
closes, so even a parent killed with SIGKILL leaves no sink behind; a finalizer kills it
if the object is collected or the interpreter exits without ``stop()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import smtplib
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO

from raymail.errors import SinkError
from raymail.sink.config import SinkConfig
from raymail.sink.server import loopback_host
from raymail.sink.stats import SinkStats

READY_PREFIX = "RAYMAIL-SINK READY"
_SRC_DIR = Path(__file__).resolve().parents[2]  # the directory holding the raymail package
_MAX_READY_BYTES = 64 * 1024


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Last resort: the sink must never outlive its owner."""
    if proc.poll() is None:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5.0)


class SinkProcess:
    """``with SinkProcess(config, capture_dir=...) as sink:`` then use ``sink.port``."""

    def __init__(
        self,
        config: SinkConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        capture_dir: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        stats_path: Path | None = None,
        start_timeout_s: float = 30.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.config = config or SinkConfig()
        self.host = loopback_host(host)
        self.port = port
        self._options: list[str] = []
        for flag, path in (
            ("--capture", capture_dir),
            ("--tls-cert", tls_cert),
            ("--tls-key", tls_key),
            ("--stats", stats_path),
        ):
            if path is not None:
                self._options += [flag, str(Path(path).resolve())]
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], SinkProcess] | None = None
        self.returncode: int | None = None

    @property
    def address(self) -> str:
        """'host:port', as a spec's ``mx_override`` wants it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> SinkProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> SinkProcess:
        """Spawn the sink and wait until it listens; raise SinkError if it does not."""
        if self._proc is not None:
            raise SinkError("sink process already started")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_SRC_DIR), env.get("PYTHONPATH", "")) if p
        )
        cmd = [sys.executable, "-m", "raymail.sink", "--parent-pipe"]
        cmd += ["--host", self.host, "--port", str(self.port), *self._options]
        # Lives until stop(): the child's stderr, kept for error messages.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env
            )
        except OSError as exc:
            self._stderr.close()
            self._stderr = None
            raise SinkError(f"cannot start the sink process: {exc}") from None
        self._proc = proc
        self._finalizer = weakref.finalize(self, _kill, proc)
        try:
            assert proc.stdin is not None
            # exclude_unset: a domain rule must still inherit the keys it never set
            config_json = self.config.model_dump_json(exclude_unset=True)
            proc.stdin.write(config_json.encode("utf-8") + b"\n")
            proc.stdin.flush()
            host, port = self._wait_ready(proc)
        except BaseException:
            self.stop()
            raise
        self.host, self.port = host, port
        return self

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> tuple[str, int]:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + self.start_timeout_s
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SinkError(
                        f"sink process did not report its port within {self.start_timeout_s} s"
                        + self._stderr_tail()
                    )
                if not selector.select(remaining):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    proc.wait(5.0)
                    raise SinkError(
                        f"sink process exited with code {proc.returncode} before listening"
                        + self._stderr_tail()
                    )
                buffer += chunk
                if len(buffer) > _MAX_READY_BYTES:
                    raise SinkError("sink process printed no ready line" + self._stderr_tail())
        line = buffer.split(b"\n", 1)[0].decode("utf-8", "replace").strip()
        parts = line.split()
        if not line.startswith(READY_PREFIX) or len(parts) != 4 or not parts[3].isdigit():
            raise SinkError(f"unexpected first line from sink process: {line!r}")
        return parts[2], int(parts[3])

    def _stderr_tail(self, limit: int = 4000) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - limit))
        text = self._stderr.read().decode("utf-8", "replace").strip()
        return f"\n--- sink stderr ---\n{text}" if text else ""

    def stderr_text(self) -> str:
        """What the sink wrote to stderr so far (its tail), for diagnosing a failure."""
        return self._stderr_tail()

    def stop(self) -> int | None:
        """Stop the sink (stdin EOF + SIGTERM, then SIGKILL); return its exit code."""
        proc = self._proc
        if proc is None:
            return self.returncode
        try:
            if proc.stdin is not None and not proc.stdin.closed:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                _kill(proc)
            self.returncode = proc.returncode
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
            if self._finalizer is not None:
                self._finalizer.detach()
            if self._stderr is not None:
                self._stderr.close()
                self._stderr = None
            self._proc = None
        return self.returncode

    def stats(self, timeout_s: float = 5.0) -> SinkStats:
        """The running sink's counters, asked over SMTP (``XSTATS``; counts as a connection)."""
        if self._proc is None:
            raise SinkError("sink process is not running")
        try:
            with smtplib.SMTP(self.host, self.port, timeout=timeout_s) as client:
                client.ehlo("raymail-stats")
                code, reply = client.docmd("XSTATS")
        except (OSError, smtplib.SMTPException) as exc:
            raise SinkError(f"cannot read sink stats from {self.address}: {exc}") from None
        if code != 250:
            raise SinkError(f"sink at {self.address} answered XSTATS with {code} {reply!r}")
        return SinkStats.from_dict(json.loads(reply))
