"""The makespan plan: how many recipients of each domain each delivery server should take.

A linear program over what is still waiting: server ``k`` has ``slots[k]`` connections and
``backlog[k]`` connection-seconds of work already handed to it; a recipient of domain ``d``
costs it ``tau[k, d]`` connection-seconds. Minimise the time ``T`` by which every server is
done (the makespan), plus a tiny cost for total connection time so that, among plans with
the same ``T``, each domain goes to its faster servers. A fast server is therefore given
only as much as it can finish by ``T``; the rest goes to slower servers, which is what
keeps it from being buried. Exploration of unknown pairs is one more row: their total
share of the work is capped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.optimize import linprog

Matrix = NDArray[np.float64]
_EFFICIENCY_WEIGHT = 1e-3  # of the total connection time, relative to T


@dataclass(frozen=True, slots=True)
class Plan:
    """Recipients per (server, domain) and the makespan it expects (seconds from now)."""

    share: Matrix  # shape (servers, domains)
    makespan: float


def solve(
    tau: Matrix,
    work: NDArray[np.float64],
    slots: NDArray[np.float64],
    backlog: NDArray[np.float64],
) -> Plan:
    """The plan minimising makespan; ``tau`` is inf where a pair must get nothing (every
    domain needs at least one finite ``tau``)."""
    servers, domains = tau.shape
    usable = np.isfinite(tau) & (work[None, :] > 0)
    ks, ds = np.nonzero(usable)
    n = len(ks)
    if n == 0:
        return Plan(np.zeros_like(tau), float(np.max(backlog / slots, initial=0.0)))
    costs = tau[ks, ds]
    scale = float(np.sum(work)) * float(np.median(costs)) / float(np.sum(slots))
    c = np.concatenate([_EFFICIENCY_WEIGHT * costs / slots[ks] / scale / servers, [1.0 / scale]])
    # sum_k x[k, d] = work[d]
    a_eq = sp.csr_matrix((np.ones(n), (ds, np.arange(n))), shape=(domains, n + 1))
    # sum_d x[k, d] tau[k, d] - slots[k] T <= -backlog[k]
    rows = np.concatenate([ks, np.arange(servers)])
    cols = np.concatenate([np.arange(n), np.full(servers, n)])
    vals = np.concatenate([costs, -slots])
    a_ub = sp.csr_matrix((vals, (rows, cols)), shape=(servers, n + 1))
    b_ub = -backlog
    result = linprog(
        c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=work, bounds=(0, None), method="highs"
    )
    if result.status != 0 or result.x is None:
        return _fallback(tau, work, slots, backlog)
    share = np.zeros_like(tau)
    share[ks, ds] = np.maximum(result.x[:n], 0.0)
    return Plan(share, float(result.x[n]))


def _fallback(
    tau: Matrix, work: NDArray[np.float64], slots: NDArray[np.float64], backlog: NDArray[np.float64]
) -> Plan:
    """Work split in proportion to each server's rate for the domain (never fails)."""
    rate = np.where(np.isfinite(tau), slots[:, None] / np.where(tau > 0, tau, 1e-9), 0.0)
    total = rate.sum(axis=0)
    share = np.where(total > 0, rate / np.where(total > 0, total, 1.0), 0.0) * work[None, :]
    load = backlog + np.nansum(np.where(np.isfinite(tau), share * tau, 0.0), axis=1)
    return Plan(share, float(np.max(load / slots, initial=0.0)))


def round_portions(share: Matrix, portions: NDArray[np.int64]) -> NDArray[np.int64]:
    """Whole portions per (server, domain) from shares, largest remainder per domain, so
    each domain's portions add up exactly."""
    totals = share.sum(axis=0)
    fractions = np.where(totals > 0, share / np.where(totals > 0, totals, 1.0), 0.0)
    exact = fractions * portions[None, :]
    counts = np.floor(exact).astype(np.int64)
    short = portions - counts.sum(axis=0)
    remainder = exact - counts
    order = np.argsort(-remainder, axis=0, kind="stable")
    for d in np.nonzero(short > 0)[0]:
        counts[order[: short[d], d], d] += 1
    return counts
