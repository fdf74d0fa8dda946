"""Classifying many returned messages: files, directories, Maildirs and mbox files.

Lazily one by one (:func:`iter_classified`, what ``raymail returns classify`` prints) or as
one polars table (:func:`classify_paths`; polars is imported only then).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final

from raymail.returns.addressing import VerpDecoder
from raymail.returns.classify import classify_message
from raymail.returns.sources import iter_messages
from raymail.returns.verdict import Classification

if TYPE_CHECKING:
    import polars as pl


_TABLE_SCHEMA: Final = {
    "path": "str",
    "category": "str",
    "reason": "str",
    "recipients": "list[str]",
    "status": "str",
    "smtp_code": "int",
    "diagnostic": "str",
    "action": "str",
    "remote_mta": "str",
    "campaign": "str",
    "feedback_type": "str",
    "source": "str",
    "why": "str",
}


def iter_classified(
    paths: Iterable[str | Path], *, verp_decoder: VerpDecoder | None = None
) -> Iterator[Classification]:
    """Classify every message in files, directories, Maildirs and mbox files, lazily."""
    for label, raw in iter_messages(paths):
        yield classify_message(raw, path=label, verp_decoder=verp_decoder)


def classify_paths(
    paths: Iterable[str | Path], *, verp_decoder: VerpDecoder | None = None
) -> pl.DataFrame:
    """One row per message under ``paths`` (columns as in ``_TABLE_SCHEMA``)."""
    import polars as pl

    dtypes: dict[str, pl.DataType] = {
        "str": pl.String(),
        "int": pl.Int64(),
        "list[str]": pl.List(pl.String()),
    }
    schema = {name: dtypes[kind] for name, kind in _TABLE_SCHEMA.items()}
    rows = [
        {name: getattr(c, name) for name in _TABLE_SCHEMA}
        for c in iter_classified(paths, verp_decoder=verp_decoder)
    ]
    return pl.DataFrame(rows, schema=schema)
