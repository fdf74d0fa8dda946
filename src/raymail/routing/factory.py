"""``make_router``: the router a campaign's spec asks for (``routing.policy``)."""

from __future__ import annotations

from pathlib import Path

from raymail.driver.dispatch import Router
from raymail.routing.base import BaseRouter, ServerHandles
from raymail.routing.baselines import EqualSharesRouter, RoundRobinRouter
from raymail.routing.policy import LearnedRouter
from raymail.spec import CampaignSpec

POLICIES: dict[str, type[BaseRouter]] = {
    "learned": LearnedRouter,
    "round_robin": RoundRobinRouter,
    "equal_shares": EqualSharesRouter,
}


def make_router(
    spec: CampaignSpec,
    *,
    run_dir: str | Path | None = None,
    servers: ServerHandles | None = None,
) -> Router:
    """The spec's routing policy. ``run_dir`` receives the routing records ``explain``
    reads; ``servers`` (actor name -> handle of the healthy servers) enables probing."""
    return POLICIES[spec.routing.policy](spec, run_dir=run_dir, servers=servers)
