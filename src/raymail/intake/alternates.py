"""The ``alternates`` column: other addresses of the same recipient, in the order to try.

A list may give them as one cell separated by ``;``, ``,`` or white space. Each is checked
like the ``email`` column; a bad one is rejected (row, field ``alternates``, the value, why)
and left out, while the recipient and its good alternates go on. The validated table keeps
them normalised and joined by ``;`` (a plain string column, like every other field), so the
N-th hop of a recipient is ``alternates.split(";")[N - 1]`` wherever the row is read again
(the driver, a resume's recovery).
"""

from __future__ import annotations

import re
from typing import Final

import polars as pl
import pyarrow as pa

from raymail.intake.checks import validate
from raymail.schema import ALTERNATES, EMAIL, HOP_STRIDE

SEPARATOR: Final = ";"
_SPLIT: Final = re.compile(r"[;,\s]+")
MAX_ALTERNATES: Final = HOP_STRIDE // 10  # far more than any person has; bounds a run


def normalise_alternates(
    cells: list[str | None], emails: list[str]
) -> tuple[list[str], list[tuple[int, str, str]]]:
    """(each cell's good alternates joined by ``;``, (position, value, reason) of bad ones).

    An alternate equal to the recipient's own address or to an earlier alternate is
    dropped without a reject (it adds no destination); more than MAX_ALTERNATES is one.
    """
    pieces = [[p for p in _SPLIT.split(cell or "") if p] for cell in cells]
    flat = [p for cell in pieces for p in cell]
    checked = validate(pa.array(flat, pa.string()))
    bad = dict(zip(checked.bad_index, checked.bad_reason, strict=True))
    normal = checked.email.to_pylist()
    out: list[str] = []
    problems: list[tuple[int, str, str]] = []
    index = 0
    for position, (cell, own) in enumerate(zip(pieces, emails, strict=True)):
        kept: list[str] = []
        seen = {own.lower()}
        for raw in cell:
            reason = bad.get(index)
            address = normal[index]
            index += 1
            if reason is not None:
                problems.append((position, raw, f"alternate address: {reason}"))
            elif address.lower() in seen:
                continue
            elif len(kept) >= MAX_ALTERNATES:
                problems.append((position, raw, f"more than {MAX_ALTERNATES} alternates"))
            else:
                seen.add(address.lower())
                kept.append(address)
        out.append(SEPARATOR.join(kept))
    return out, problems


def with_hop_addresses(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` (with ``row``, ``email``, ``domain``, ``attempt``) with ``hop`` and
    ``alternate_of`` added, and ``email``/``domain`` of hop rows set to their alternate.

    ``email`` is the recipient's own address unless an ``alternate_of`` column says so
    (a hop's rows already carry the alternate as ``email``).
    """
    if ALTERNATES not in frame.columns:
        frame = frame.with_columns(pl.lit(None, pl.String).alias(ALTERNATES))
    own = pl.col("alternate_of") if "alternate_of" in frame.columns else pl.col(EMAIL)
    hop = (pl.col("attempt").cast(pl.Int64) // HOP_STRIDE).cast(pl.Int32)
    frame = frame.with_columns(hop.alias("hop"), own.fill_null(pl.col(EMAIL)).alias("_own"))
    alternate = (
        pl.col(ALTERNATES).str.split(SEPARATOR).list.get(pl.col("hop") - 1, null_on_oob=True)
    )
    is_hop = pl.col("hop") > 0
    frame = frame.with_columns(
        pl.when(is_hop).then(alternate).otherwise(pl.col("_own")).alias(EMAIL),
        pl.when(is_hop).then(pl.col("_own")).otherwise(None).alias("alternate_of"),
    )
    return frame.with_columns(pl.col(EMAIL).str.split("@").list.last().alias("domain")).drop("_own")
