"""Where returned messages are read from: single files, directories, Maildirs and mbox files.

Each message comes out as ``(label, raw bytes)``; the label names the file, and for a
mailbox also the message inside it (``box.mbox#3``, ``Maildir::key``), so a verdict can be
traced back. Unreadable entries are yielded with empty bytes rather than raised, so one bad
file never stops a run (the classifier reports it as ``unknown``, "empty message").
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

_MBOX_FROM_RE: Final = re.compile(
    rb"^From \S+ +(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov"
    rb"|Dec) +\d{1,2} \d{1,2}:\d{2}",
    re.MULTILINE,
)
_SNIFF_BYTES: Final = 1 << 20


def _is_maildir(path: Path) -> bool:
    """A Maildir has cur/, new/ and tmp/."""
    return all((path / sub).is_dir() for sub in ("cur", "new", "tmp"))


def _is_mbox(path: Path) -> bool:
    """An mbox holds two or more messages behind 'From ' separator lines with a date."""
    try:
        with path.open("rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return False
    if not head.startswith(b"From "):
        return False
    return len(_MBOX_FROM_RE.findall(head, 0)) >= 2


def _read(path: Path) -> bytes:
    """File bytes, or b'' when unreadable (reported as an empty message)."""
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _maildir(path: Path) -> Iterator[tuple[str, bytes]]:
    """Messages of a Maildir in key order."""
    import mailbox  # only for mailboxes: it pulls in socket, selectors, ...

    box = mailbox.Maildir(str(path), factory=None, create=False)
    for key in sorted(box.iterkeys()):
        try:
            raw = box.get_bytes(key)
        except Exception:
            raw = b""
        yield f"{path}::{key}", raw


def _mbox(path: Path) -> Iterator[tuple[str, bytes]]:
    """Messages of an mbox file; the whole file as one message if unreadable."""
    import mailbox

    try:
        box = mailbox.mbox(str(path), factory=None, create=False)
        keys = list(box.iterkeys())
    except Exception:
        yield str(path), _read(path)
        return
    try:
        for index, key in enumerate(keys):
            try:
                raw = box.get_bytes(key)
            except Exception:
                raw = b""
            yield f"{path}#{index}", raw
    finally:
        box.close()


def _directory(root: Path) -> Iterator[tuple[str, bytes]]:
    """Files under ``root`` (sorted, hidden ones skipped); Maildirs read as mailboxes."""
    if _is_maildir(root):
        yield from _maildir(root)
        return
    try:
        children = sorted(root.iterdir())
    except OSError:
        return
    for child in children:
        if child.name.startswith("."):
            continue
        if child.is_dir():
            yield from _directory(child)
        elif child.is_file():
            yield from _file(child)


def iter_messages(paths: Iterable[str | Path]) -> Iterator[tuple[str, bytes]]:
    """Every message under ``paths``, in a stable order, as ``(label, raw)``."""
    for item in paths:
        path = Path(item)
        if path.is_dir():
            yield from _directory(path)
        else:
            yield from _file(path)


def _file(path: Path) -> Iterator[tuple[str, bytes]]:
    """One file: an mbox of several messages, or a single message."""
    if _is_mbox(path):
        yield from _mbox(path)
    else:
        yield str(path), _read(path)
