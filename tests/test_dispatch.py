"""The work queue: domains in turn, and trial pieces cut off a portion under new ids."""

from __future__ import annotations

import itertools

import pyarrow as pa

from raymail.driver.dispatch import Work, WorkQueue
from raymail.driver.plan import PortionTask


def _work(portion: int, domain: str, rows: list[int], attempt: int = 1) -> Work:
    table = pa.table({"row": rows, "domain": [domain] * len(rows)})
    return Work(PortionTask(portion, domain, attempt, len(rows)), table)


def test_pop_at_most_cuts_a_piece_under_a_new_id_and_keeps_the_rest_first() -> None:
    ids = itertools.count(100)
    queue = WorkQueue(new_id=lambda: next(ids))
    queue.push(_work(1, "a.test", list(range(10)), attempt=2))
    queue.push(_work(2, "a.test", [10, 11]))
    queue.push(_work(3, "b.test", [20, 21, 22]))

    piece = queue.pop("a.test", at_most=4)
    assert piece is not None
    assert (piece.task.portion, piece.task.attempt, piece.task.size) == (100, 2, 4)
    assert piece.rows.column("row").to_pylist() == [0, 1, 2, 3]
    assert len(queue) == 3  # the rest of portion 1 still waits, first in its domain
    assert queue.waiting("a.test") == 8

    rest = queue.pop("a.test", at_most=10)  # not larger than asked: handed out whole
    assert rest is not None
    assert (rest.task.portion, rest.task.attempt, rest.task.size) == (1, 2, 6)
    assert rest.rows.column("row").to_pylist() == [4, 5, 6, 7, 8, 9]
    others = [queue.pop() for _ in range(2)]
    assert sorted(w.task.portion for w in others if w) == [2, 3]
    assert not queue and queue.pop() is None


def test_without_an_id_source_portions_are_never_cut() -> None:
    queue = WorkQueue()
    queue.push(_work(7, "a.test", list(range(10))))
    whole = queue.pop("a.test", at_most=3)
    assert whole is not None and whole.task.size == 10 and whole.task.portion == 7
    assert not queue
