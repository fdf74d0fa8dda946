"""The journal holds fates back to ride with the next in-flight mark, never that mark itself.

Real files, read back with the recovery parser: what matters is what a crash would leave.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from raymail.delivery.journal import (
    MAX_HELD_FATES,
    Journal,
    JournalState,
    journal_states,
)


def _lines(journal: Journal) -> list[str]:
    return journal.path.read_text().splitlines()


def test_in_flight_mark_is_in_the_file_at_once_with_held_fates_before_it(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "s1")
    journal.mark(JournalState.IN_FLIGHT, 3, 1, [10])
    assert _lines(journal) == ["I\t3\t1\t10"]
    journal.hold(JournalState.ACCEPTED, 3, 1, [10])
    assert _lines(journal) == ["I\t3\t1\t10"]  # held: a crash now leaves row 10 in doubt
    states = journal_states([journal.path])
    assert states.row(0, named=True)["state"] == "I"
    journal.mark(JournalState.IN_FLIGHT, 3, 1, [11, 12])
    assert _lines(journal) == ["I\t3\t1\t10", "A\t3\t1\t10", "I\t3\t1\t11,12"]
    journal.hold(JournalState.FAILED, 3, 1, [11])
    journal.hold(JournalState.DEFERRED, 3, 1, [12])
    journal.flush()
    final = {r["row"]: r["state"] for r in journal_states([journal.path]).iter_rows(named=True)}
    assert final == {10: "A", 11: "F", 12: "D"}
    journal.close()


def test_in_flight_cannot_be_held(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "s1")
    with pytest.raises(ValueError, match="in-flight"):
        journal.hold(JournalState.IN_FLIGHT, 1, 1, [1])
    journal.close()
    assert _lines(journal) == []


def test_held_fates_are_bounded_and_written_on_close(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "s1")
    for row in range(MAX_HELD_FATES - 1):
        journal.hold(JournalState.ACCEPTED, 1, 1, [row])
    assert _lines(journal) == []
    journal.hold(JournalState.ACCEPTED, 1, 1, [MAX_HELD_FATES - 1])  # the bound: written
    assert len(_lines(journal)) == MAX_HELD_FATES
    journal.hold(JournalState.ACCEPTED, 1, 1, [999])
    journal.hold(JournalState.ACCEPTED, 1, 1, [])  # no rows: nothing to write
    journal.close()
    assert _lines(journal)[-1] == "A\t1\t1\t999"
    assert len(_lines(journal)) == MAX_HELD_FATES + 1
