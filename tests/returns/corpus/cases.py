"""A corpus case: one bounce message and its written-down label."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from raymail.returns.reasons import category_of

_TEMPORARY_CATEGORIES = {"hard_bounce_address", "hard_bounce_domain"}


@dataclass(frozen=True)
class Label:
    """What a bounce means: who failed, why (Sisimai's reason names), and its category."""

    file: str
    format: str  # the MTA / provider that wrote it
    recipients: list[str]
    reason: str
    category: str
    split: str  # "tuned" or "heldout"
    reply: str  # the reply-bank key (or the local condition) behind it
    source: str  # "postfix", "exim" (real MTAs) or "written"


def category_for(reason: str, delayed: bool = False) -> str:
    """The category raymail should give; a delay warning never condemns an address."""
    category = category_of(reason)
    if delayed and category in _TEMPORARY_CATEGORIES:
        return "transient"
    return category


def write_labels(folder: Path, labels: list[Label]) -> None:
    with (folder / "labels.jsonl").open("w") as out:
        for label in labels:
            out.write(json.dumps(asdict(label), sort_keys=True) + "\n")


def read_labels(folder: Path) -> list[Label]:
    path = folder / "labels.jsonl"
    return [Label(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
