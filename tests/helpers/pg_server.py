"""A real PostgreSQL for tests: initdb + pg_ctl in a temporary folder, on a loopback port.

Debian's ``postgresql`` package provides the server binaries (installed through
tests/helpers/system_packages.py when missing). PostgreSQL refuses to run as root, so under root
the cluster is created and started as the ``postgres`` system user the package creates;
otherwise as the current user. The cluster trusts local connections (loopback only) and is
stopped and deleted when the test session ends.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from helpers.system_packages import require_binary

_START_TIMEOUT_S = 60


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        require_binary("pg_ctlcluster", "postgresql")  # installs the server, then look again
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("postgresql is installed but no /usr/lib/postgresql/*/bin/initdb")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a throwaway PostgreSQL; yields its URL (``postgresql://raymail@127.0.0.1:P/raymail``)."""
    bin_dir = _bin_dir()
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    base = Path(tempfile.mkdtemp(prefix="raymail-pg-"))
    data, sock_dir = base / "data", base / "sock"
    sock_dir.mkdir()
    if as_root:
        shutil.chown(base, "postgres")
        shutil.chown(sock_dir, "postgres")
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    subprocess.run(
        [
            *prefix,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "raymail",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=_START_TIMEOUT_S,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sock_dir} -c fsync=off"
    subprocess.run(
        [
            *prefix,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-w",
            "-t",
            str(_START_TIMEOUT_S),
            "-l",
            str(base / "log"),
            "start",
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=_START_TIMEOUT_S + 10,
    )
    try:
        subprocess.run(
            [
                *prefix,
                str(bin_dir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "raymail",
                "raymail",
            ],
            check=True,
            capture_output=True,
            env=env,
            timeout=_START_TIMEOUT_S,
        )
        yield f"postgresql://raymail@127.0.0.1:{port}/raymail"
    finally:
        subprocess.run(
            [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            env=env,
            timeout=_START_TIMEOUT_S,
        )
        time.sleep(0.1)
        shutil.rmtree(base, ignore_errors=True)
