"""``raymail returns classify`` without loading typer, rich or pydantic.

Classifying a folder of bounces from the shell is the one command whose start-up time is
most of its run time (a few hundred messages take less CPU than importing the full CLI), so
:func:`raymail.cli.main` hands it here first. Only the plain form is handled: paths and
``--details``. Anything else (``--help``, an unknown option, no paths) returns None and the
typer app handles it, with its usual help and error messages. The output is the same JSON
Lines the typer command prints (both call :func:`write_verdicts`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO


def write_verdicts(paths: Iterable[Path], details: bool, out: TextIO) -> None:
    """One JSON object per message under ``paths``."""
    from raymail.returns.batch import iter_classified

    for verdict in iter_classified(paths):
        row = verdict.as_dict()
        if not details:
            row.pop("per_recipient", None)
            row.pop("notes", None)
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
    out.flush()


def try_classify(argv: list[str]) -> int | None:
    """Exit code of ``returns classify ARGS`` handled here, or None to leave it to typer."""
    if argv[:2] != ["returns", "classify"]:
        return None
    args = argv[2:]
    details = "--details" in args
    paths = [a for a in args if a != "--details"]
    if not paths or any(a.startswith("-") for a in paths):
        return None
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        print(f"error: no such file or directory: {', '.join(missing)}", file=sys.stderr)
        return 2
    write_verdicts([Path(p) for p in paths], details, sys.stdout)
    return 0
