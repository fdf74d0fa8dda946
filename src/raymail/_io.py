"""Durable files: write-then-rename with fsync of the file and its folder, and flock'd turns.

A reader (or a crash) never sees half a file: the content goes to a temporary name in the
same folder, is fsync'd, renamed over the target, and the folder is fsync'd so the new name
survives a power cut too. Processes that must not interleave (a compaction, a merge, a
driver) take turns through an ``flock`` on a lock file, which the kernel releases when the
holder dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "flocked",
    "fsync_path",
    "replace_atomic",
    "temporary_name",
    "write_atomic",
    "write_bytes_atomic",
    "write_json_atomic",
]


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder: so a new or renamed entry survives a crash)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path``, unique to this process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def replace_atomic(tmp: Path, path: Path) -> None:
    """Make the finished file ``tmp`` durable and rename it to ``path``, durably."""
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_path(path.parent)


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` fills a temporary file; it then replaces ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        write(tmp)
        replace_atomic(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(path: Path, data: Any) -> None:
    """JSON as raymail writes it (indented, sorted keys), atomically."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def flocked(lock_path: Path, *, wait: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on ``lock_path`` (created if missing) inside the block.

    With ``wait=False`` the block runs at once and gets False when another process holds
    the lock (the caller skips its turn); otherwise it waits and gets True.
    """
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def read_yaml(path: Path, what: str, error: type[Exception]) -> Any:
    """The parsed YAML (or JSON) of a config file; ``error`` says which file and why it
    cannot be read: "PATH: WHAT not found", "cannot read WHAT: ...", "not valid YAML: ..."."""
    import yaml  # here: most users of this module never read YAML

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
