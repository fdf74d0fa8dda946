"""Returns processing ("ResponseMaster"): classify bounces, complaints and replies.

Use :func:`classify_message` for one raw message and :func:`classify_paths` for files,
directories, Maildirs and mbox files (a polars DataFrame, one row per message).
"""

from __future__ import annotations

from raymail.returns.addressing import VerpDecoder
from raymail.returns.batch import classify_paths, iter_classified
from raymail.returns.classify import classify_message
from raymail.returns.reasons import CATEGORIES, REASON_CATEGORY, REASONS, category_of
from raymail.returns.verdict import Classification, RecipientVerdict

__all__ = [
    "CATEGORIES",
    "REASONS",
    "REASON_CATEGORY",
    "Classification",
    "RecipientVerdict",
    "VerpDecoder",
    "category_of",
    "classify_message",
    "classify_paths",
    "iter_classified",
]
