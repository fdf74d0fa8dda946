"""Load the generated corpus and score a classifier on it, split by split.

The real-MTA part comes from the committed archive (tests/data/returns/generated), the
written parts (formats.py, and fresh_formats.py for held-out split 2) are rendered
(deterministic for a seed), all into a cache folder.
Scores per split: failed recipients found (labelled recipients the classifier reported),
reason agreement, category agreement, and the reason confusion (label -> verdict).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import build  # noqa: E402
from cases import Label, category_for, read_labels  # noqa: E402

CACHE = Path(os.environ.get("RAYMAIL_CORPUS_CACHE", Path.home() / ".cache" / "raymail-corpus"))
SPLITS = ("tuned", "heldout", "heldout2")
_NOT_BOUNCES = {"auto_reply", "challenge_response", "complaint", "human_reply", "remove_request"}


@dataclass(frozen=True)
class Case:
    label: Label
    raw: bytes


def load(cache: Path = CACHE, seed: int = 1) -> list[Case]:
    """Every case of the generated corpus (real MTAs from the archive, written rendered)."""
    root = cache / "generated"
    stamp = root / f".ready-{seed}-{build.REAL_ARCHIVE.stat().st_mtime_ns}-{build.written_stamp()}"
    if not stamp.exists():
        root.mkdir(parents=True, exist_ok=True)
        build.unpack_real(root)
        build.build_written(root, seed)
        build.build_fresh(root)
        build.build_extra(root)
        stamp.touch()
    cases = []
    for folder in ("postfix", "exim", "written", "extra", "fresh"):
        for label in read_labels(root / folder):
            cases.append(Case(_relabel(label), (root / label.file).read_bytes()))
    return cases


# Labels corrected after the fact, by the documented definitions (the reply-bank keys and
# so the splits stay as they were): "rejected due to the sending MTA's poor reputation" is
# a reputation score of the sending IP, badreputation, not a list block.
RELABELLED = {"blocked-4": "badreputation"}


def _relabel(label: Label) -> Label:
    reason = RELABELLED.get(label.reply)
    if reason is None:
        return label
    return dataclasses.replace(label, reason=reason, category=category_for(reason))


Verdict = tuple[str, str, set[str]]  # category, reason, recipients


def score(cases: Iterable[Case], verdicts: Iterable[Verdict]) -> dict[str, Any]:
    """Figures for one split."""
    n = expected = found = reason_ok = category_ok = 0
    confusion: collections.Counter[str] = collections.Counter()
    for case, (category, reason, recipients) in zip(cases, verdicts, strict=True):
        n += 1
        label = case.label
        got = set() if category in _NOT_BOUNCES else recipients
        expected += len(label.recipients)
        found += len(set(label.recipients) & got)
        reason_ok += reason == label.reason
        category_ok += category == label.category
        if reason != label.reason:
            confusion[f"{label.reason} -> {reason}"] += 1
    return {
        "messages": n,
        "recipients_labelled": expected,
        "recipients_found": round(found / max(expected, 1), 4),
        "reason_agreement": round(reason_ok / max(n, 1), 4),
        "category_agreement": round(category_ok / max(n, 1), 4),
        "disagreements": dict(confusion.most_common(25)),
    }


def confusion_table(cases: list[Case], verdicts: list[Verdict]) -> dict[str, dict[str, int]]:
    """label reason -> {verdict reason: count} (every cell, agreements included)."""
    table: dict[str, collections.Counter[str]] = {}
    for case, (_, reason, _) in zip(cases, verdicts, strict=True):
        table.setdefault(case.label.reason, collections.Counter())[reason] += 1
    return {k: dict(v.most_common()) for k, v in sorted(table.items())}


def by_split(cases: list[Case], classify: Callable[[bytes], Verdict]) -> dict[str, Any]:
    verdicts = [classify(c.raw) for c in cases]
    out: dict[str, Any] = {}
    for split in SPLITS:
        chosen = [(c, v) for c, v in zip(cases, verdicts, strict=True) if c.label.split == split]
        out[split] = score([c for c, _ in chosen], [v for _, v in chosen])
    return out
