"""Demotion of (server, domain) pairs within a run, on an injected clock."""

from __future__ import annotations

from raymail.routing.demotion import COOLDOWN_S, DEMOTE_AT, Demotions

PAIR = ("10.0.0.1", "a.test")


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _demotions() -> tuple[Demotions, _Clock, list[tuple[str, str, str]]]:
    clock = _Clock()
    events: list[tuple[str, str, str]] = []
    demotions = Demotions(
        clock, lambda event, server, domain, _: events.append((event, server, domain))
    )
    return demotions, clock, events


def test_a_pair_turning_bad_is_demoted_only_after_enough_bad_transactions() -> None:
    demotions, _, events = _demotions()
    assert demotions.judge(PAIR, [True, True]) is False  # 51% bad, but only 2 in the run
    assert PAIR not in demotions.demoted
    assert demotions.judge(PAIR, [True]) is True
    assert demotions.demoted == {PAIR}
    assert events == [("demoted", *PAIR)]
    assert demotions.judge(PAIR, [True]) is False  # already demoted: no second start


def test_good_transactions_never_demote_and_no_transactions_change_nothing() -> None:
    demotions, _, events = _demotions()
    assert demotions.judge(PAIR, [False] * 20) is False
    assert demotions.judge(PAIR, []) is False
    assert not demotions.demoted and events == []


def test_cooldown_then_probation_then_a_doubled_cooldown_on_one_more_bad_reply() -> None:
    demotions, clock, events = _demotions()
    demotions.judge(PAIR, [True, True, True])
    clock.now += COOLDOWN_S - 1
    assert demotions.expire() is False
    clock.now += 1
    assert demotions.expire() is True
    assert not demotions.demoted and demotions.probation == {PAIR}
    assert events[-1][0] == "probation"
    assert demotions.judge(PAIR, [True]) is True  # on probation one bad reply is enough
    assert demotions.probation == set()
    clock.now += 2 * COOLDOWN_S - 1
    assert demotions.expire() is False  # twice the cooldown this time
    clock.now += 1
    assert demotions.expire() is True


def test_a_pair_recovering_on_probation_is_restored_and_its_cooldown_forgotten() -> None:
    demotions, clock, events = _demotions()
    demotions.judge(PAIR, [True, True, True])
    clock.now += COOLDOWN_S
    demotions.expire()
    assert demotions.judge(PAIR, [False] * 10) is False  # from DEMOTE_AT down below 0.2
    assert events[-1][0] == "restored"
    assert DEMOTE_AT > 0.2
    demotions.judge(PAIR, [True] * 8)
    clock.now += COOLDOWN_S  # the first cooldown again, not the doubled one
    assert demotions.expire() is True
