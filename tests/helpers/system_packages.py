"""Find, or install with apt-get, the system binaries some tests need (dnsmasq, ...).

CI runs as root on a fresh Debian machine, so a missing binary is installed there instead of
silently skipping the tests that need it. A developer without root gets a skip that names
the package to install. ``apt-get update`` runs at most once per session (and once across
pytest-xdist workers, which share the lock and stamp files below).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
_LOCK = Path(tempfile.gettempdir()) / "raymail-tests-apt.lock"
_STAMP = Path(tempfile.gettempdir()) / "raymail-tests-apt-updated"
_UPDATE_FRESH_S = 3600.0  # a stamp younger than this means another worker/session updated
_UPDATE_TIMEOUT_S = 300.0
_INSTALL_TIMEOUT_S = 600.0
_updated = False
# debconf answers for packages whose installation would otherwise ask (or configure a
# system-wide service): Postfix with "No configuration" sets up no MTA on port 25; tests
# run private instances with their own config.
_PRESEED = {
    "postfix": "postfix postfix/main_mailer_type select No configuration\n"
    "postfix postfix/mailname string raymail.test\n",
}


def find_binary(binary: str) -> str | None:
    """``shutil.which`` that also looks in the sbin folders a non-root PATH often lacks."""
    path = os.environ.get("PATH", os.defpath)
    return shutil.which(binary, path=os.pathsep.join([path, *_SBIN]))


def require_binary(binary: str, debian_package: str) -> str:
    """Path of ``binary``; installs ``debian_package`` when missing and root, else skips."""
    found = find_binary(binary)
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip(
            f"{binary!r} not found and not running as root to install it; "
            f"install the Debian package {debian_package!r} (apt-get install {debian_package})"
        )
    if shutil.which("apt-get") is None:
        pytest.skip(f"{binary!r} not found and there is no apt-get to install {debian_package!r}")
    with _apt_lock():
        found = find_binary(binary)  # another worker may have installed it meanwhile
        if found:
            return found
        _apt_update_once()
        _preseed(debian_package)
        _apt("install", "-y", "--no-install-recommends", debian_package, timeout=_INSTALL_TIMEOUT_S)
    found = find_binary(binary)
    if not found:
        pytest.fail(f"apt-get installed {debian_package!r} but {binary!r} is still not on PATH")
    return found


@contextmanager
def _apt_lock() -> Iterator[None]:
    with _LOCK.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _apt_update_once() -> None:
    global _updated
    if _updated:
        return
    try:
        fresh = time.time() - _STAMP.stat().st_mtime < _UPDATE_FRESH_S
    except OSError:
        fresh = False
    if not fresh:
        _apt("update", timeout=_UPDATE_TIMEOUT_S)
        _STAMP.touch()
    _updated = True


def _preseed(debian_package: str) -> None:
    answers = _PRESEED.get(debian_package)
    if answers is None or shutil.which("debconf-set-selections") is None:
        return
    done = subprocess.run(
        ["debconf-set-selections"], input=answers, capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        pytest.fail(f"debconf-set-selections for {debian_package!r} failed: {done.stderr}")


def _apt(*args: str, timeout: float) -> None:
    command = ["apt-get", "-o", "DPkg::Lock::Timeout=120", "-q", *args]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(command)} did not finish within {timeout:.0f} s")
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        pytest.fail(f"{' '.join(command)} failed with exit code {done.returncode}:\n{tail}")
