"""Which unknown pairs get a trial piece: the value of finding out (routing/exploration.py)."""

from __future__ import annotations

import numpy as np

from raymail.routing.estimates import Estimates
from raymail.routing.exploration import PROBATION_VALUE, offers

TRIAL = 4.0


def _estimates(tau: list[list[float]], pools: dict[tuple[int, int], list[float]]) -> Estimates:
    t = np.array(tau, dtype=np.float64)
    zeros = np.zeros_like(t)
    return Estimates(
        tau=t,
        transactions=zeros,
        recipients=zeros,
        bad_rate=zeros,
        fates=zeros,
        source=np.zeros(t.shape, dtype=np.int64),
        confident=zeros.astype(bool),
        excluded=zeros.astype(bool),
        busy=zeros,
        pools={pair: np.array(values) for pair, values in pools.items()},
    )


def _offers(
    est: Estimates,
    known: list[list[bool]],
    work: list[float],
    *,
    probation: list[list[bool]] | None = None,
    reach: list[float] | None = None,
) -> list[tuple[int, int, float]]:
    k = np.array(known)
    prob = np.array(probation) if probation is not None else np.zeros_like(k)
    w = np.array(work, dtype=np.float64)
    found = offers(
        est,
        est.tau,
        k,
        ~k,
        prob,
        w,
        np.ones(len(work), dtype=np.int64),  # one portion each: trials of 4,
        np.array(reach, dtype=np.float64) if reach is not None else w,
        TRIAL,
    )
    return [(o.server, o.domain, o.value) for o in found]


def test_an_unknown_server_that_may_be_faster_is_offered_a_trial() -> None:
    est = _estimates([[0.2], [0.2]], {(1, 0): [0.05, 0.5]})
    [(server, domain, value)] = _offers(est, [[True], [False]], work=[100.0])
    assert (server, domain) == (1, 0)
    # gain (100 - 4) x mean(0.15, 0) = 7.2; cost 4 x mean(0, 0.3) = 0.6
    assert abs(value - 6.6) < 1e-9


def test_a_server_whose_group_is_always_slower_is_not_tried() -> None:
    est = _estimates([[0.2], [0.2]], {(1, 0): [0.5, 0.6]})
    assert _offers(est, [[True], [False]], work=[100.0]) == []


def test_little_work_left_is_not_worth_a_trial() -> None:
    est = _estimates([[0.2], [0.2]], {(1, 0): [0.1, 0.9]})
    assert _offers(est, [[True], [False]], work=[100.0]) != []
    assert _offers(est, [[True], [False]], work=[5.0]) == []  # gain 1 x 0.05 < cost 4 x 0.35


def test_work_on_the_same_mx_host_makes_a_trial_worth_it() -> None:
    est = _estimates([[0.2], [0.2]], {(1, 0): [0.1, 0.9]})
    assert _offers(est, [[True], [False]], work=[5.0], reach=[500.0]) != []


def test_no_trial_where_no_server_is_known_and_probation_always_gets_one() -> None:
    est = _estimates([[0.2, 0.2], [0.2, 0.2]], {(1, 0): [0.9], (1, 1): [0.9]})
    found = _offers(
        est,
        [[True, False], [False, False]],  # domain 1: nobody known, nothing to compare with
        work=[100.0, 100.0],
        probation=[[False, False], [True, False]],
    )
    assert found == [(1, 0, PROBATION_VALUE)]


def test_offers_come_best_first() -> None:
    est = _estimates(
        [[0.2, 0.2], [0.2, 0.2], [0.2, 0.2]],
        {(1, 0): [0.15, 0.9], (2, 0): [0.01, 0.9], (1, 1): [0.05, 0.9]},
    )
    found = _offers(est, [[True, True], [False, False], [False, True]], work=[100.0, 100.0])
    # values 96 x 0.095 - 1.4, 96 x 0.075 - 1.4, 96 x 0.025 - 1.4
    assert [(s, d, round(v, 6)) for s, d, v in found] == [(2, 0, 7.72), (1, 1, 5.8), (1, 0, 1.0)]
