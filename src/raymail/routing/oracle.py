"""The oracle: the learned policy's planner told the truth instead of learning it.

It plans, re-plans and ends the run exactly as the learned policy does, but every pair's
cost is the true one (e.g. a generated topology's latency per transaction), all pairs
count as known, and nothing is explored. It is the yardstick of the routing benchmark:
the makespan a policy could reach if it knew the topology from the start. (A plan fixed
up front from the same truth, ``StaticOracleRouter``, cannot follow what the machine
actually does and is usually slower.)
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from raymail.routing.base import ServerHandles
from raymail.routing.estimates import Estimates
from raymail.routing.policy import LearnedRouter
from raymail.spec import CampaignSpec

Truth = Callable[[str, str], float]  # (route key, domain) -> seconds per recipient


class OracleRouter(LearnedRouter):
    """Makespan planning from the true cost of every (server, domain) pair."""

    policy = "oracle"

    def __init__(
        self,
        spec: CampaignSpec,
        seconds_per_recipient: Truth,
        *,
        run_dir: str | Path | None = None,
        servers: ServerHandles | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(spec, run_dir=run_dir, servers=servers, clock=clock)
        self.truth = seconds_per_recipient

    def estimates(
        self, keys: list[str], domains: list[str], ks: NDArray[np.int64], ds: NDArray[np.int64]
    ) -> Estimates:
        learned = super().estimates(keys, domains, ks, ds)
        tau = np.array([[self.truth(k, d) for d in domains] for k in keys], dtype=np.float64)
        every = np.ones_like(tau, dtype=bool)
        return dataclasses.replace(
            learned,
            tau=tau,
            bad_rate=np.zeros_like(tau),
            confident=every,
            excluded=~every,
            pools={},
        )
