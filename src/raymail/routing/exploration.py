"""Which unknown (server, domain) pairs are worth a trial piece to find out about.

One-step value of information: trying pair p for domain d costs one trial piece at p's speed
instead of the best known server's, and pays off on the rest of d's work if p turns out
faster. With p's possible speeds taken from its group (the per-domain values the server
showed for domains on the same MX host, network, or anywhere; see
``Estimates.pools``),

    gain = (rest of d) x E[max(best - tau_p, 0)]
    cost = (one trial) x E[max(tau_p - best, 0)]

and p is offered when gain > cost; the rest counts every domain on the same MX host, since
what one of them shows is shared with the others. A domain whose known server is as fast
as servers get is not explored further; one stuck on a slow server is, at once. The offers
are then bounded by the spec's exploration share of the traffic (in ``policy.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from raymail.routing.estimates import PRIOR_RECIPIENTS, Estimates

PROBATION_VALUE = float("inf")  # a pair back from demotion is always worth one trial piece


@dataclass(frozen=True, slots=True)
class Offer:
    server: int  # row in the plan's matrices
    domain: int  # column
    value: float  # expected connection-seconds saved, net of the trial's cost


def offers(
    est: Estimates,
    mean: NDArray[np.float64],
    known: NDArray[np.bool_],
    candidates: NDArray[np.bool_],
    probation: NDArray[np.bool_],
    work: NDArray[np.float64],
    portions: NDArray[np.int64],
    reach: NDArray[np.float64],
    trial: float,
) -> list[Offer]:
    """Offers for ``candidates`` (unknown, not blocked) in domains with a ``known`` pair;
    ``reach`` is the work a trial informs (the domain's, or its MX host's when shared),
    ``trial`` the recipients a trial takes at most."""
    best = np.min(np.where(known, mean, np.inf), axis=0, initial=np.inf)
    found: list[Offer] = []
    for i, j in np.argwhere(candidates & np.isfinite(best)[None, :]):
        if probation[i, j]:
            found.append(Offer(int(i), int(j), PROBATION_VALUE))
            continue
        values = _possible(est, int(i), int(j))
        size = min(work[j] / max(int(portions[j]), 1), trial)
        gain = max(reach[j] - size, 0.0) * float(np.mean(np.maximum(best[j] - values, 0.0)))
        cost = size * float(np.mean(np.maximum(values - best[j], 0.0)))
        if gain > cost:
            found.append(Offer(int(i), int(j), gain - cost))
    found.sort(key=lambda o: -o.value)
    return found


def _possible(est: Estimates, i: int, j: int) -> NDArray[np.float64]:
    """The pair's possible time per recipient: its group's values blended with whatever
    evidence of its own it has, adjusted for its deferral rate."""
    pool = est.pools.get((i, j))
    prior = pool if pool is not None else np.array([est.tau[i, j]])
    own_r, own_b = est.recipients[i, j], est.busy[i, j]
    blended = (own_b + PRIOR_RECIPIENTS * prior) / (own_r + PRIOR_RECIPIENTS)
    result: NDArray[np.float64] = blended / (1.0 - min(float(est.bad_rate[i, j]), 0.9))
    return result
