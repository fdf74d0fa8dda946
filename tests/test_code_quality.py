"""The project's own standards, checked in CI: ruff clean, mypy strict on src/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def mypy_cache_dir() -> Path:
    """mypy's incremental cache outside the checkout, so a fresh clone (as CI makes) starts
    warm: a cold strict check of src costs ~25 s, a warm one a few. mypy checks each cached
    module against its source's size and hash (paths here are relative to the checkout),
    and drops the cache when its own version changes, so the result is the same."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "raymail-tests" / "mypy"


def test_ruff_is_clean() -> None:
    result = _run("ruff", "check", "src", "tests", "benchmarks", "jobs")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_strict_on_src() -> None:
    result = _run("mypy", "--cache-dir", str(mypy_cache_dir()), "src/raymail")
    assert result.returncode == 0, result.stdout + result.stderr
