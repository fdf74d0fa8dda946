"""Learned routing (issue 7, seed 002's hop and delay database): which delivery server
should send which domain's portions.

- ``make_router(spec, ...)``: the router the driver asks for each server's next portions
  (``learned``, ``round_robin`` or ``equal_shares``; see ``policy.py``, ``baselines.py``).
- ``RoutingTable``: the Parquet table kept across runs (``table.py``).
- Probes of RTT and hop count (``probes.py``), scheduled off the send path
  (``scheduler.py``).
- Library functions returning polars frames: ``show``, ``explain``, ``probe`` and the
  analysis helpers (``explain.py``, ``analysis.py``).

Names are imported on first use: delivery servers import ``raymail.routing.probes`` and
must not pay for the policy's numpy/scipy/polars imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raymail.routing.base import BaseRouter
    from raymail.routing.baselines import (
        EqualSharesRouter,
        OracleRouter,
        RoundRobinRouter,
        StaticRouter,
    )
    from raymail.routing.factory import POLICIES, make_router
    from raymail.routing.policy import LearnedRouter
    from raymail.routing.table import RoutingTable, default_table_dir, raymail_home

_WHERE = {
    "BaseRouter": "base",
    "EqualSharesRouter": "baselines",
    "OracleRouter": "baselines",
    "RoundRobinRouter": "baselines",
    "StaticRouter": "baselines",
    "POLICIES": "factory",
    "make_router": "factory",
    "LearnedRouter": "policy",
    "RoutingTable": "table",
    "default_table_dir": "table",
    "raymail_home": "table",
}

__all__ = [
    "POLICIES",
    "BaseRouter",
    "EqualSharesRouter",
    "LearnedRouter",
    "OracleRouter",
    "RoundRobinRouter",
    "RoutingTable",
    "StaticRouter",
    "default_table_dir",
    "make_router",
    "raymail_home",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'raymail.routing' has no attribute {name!r}")
    return getattr(importlib.import_module(f"raymail.routing.{module}"), name)
