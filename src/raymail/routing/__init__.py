"""Learned routing (issue 7, seed 002's hop and delay database): which delivery server
should send which domain's portions.

- ``make_router(spec, ...)``: the router the driver asks for each server's next portions
  (``learned``, ``round_robin`` or ``equal_shares``; see ``policy.py``, ``baselines.py``).
- ``RoutingTable``: the Parquet table kept across runs (``table.py``).
- Probes of RTT and hop count (``probes.py``), scheduled off the send path
  (``scheduler.py``).
- Library functions returning polars frames: ``show``, ``explain`` (``views.py``),
  ``probe`` (``probe_now.py``) and the notebook's helpers (``analysis.py``).

Names are imported on first use: delivery servers import ``raymail.routing.probes`` and
must not pay for the policy's numpy/scipy/polars imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raymail.routing.analysis import (
        compare_makespans,
        latency_by_server_domain,
        makespan,
        preferred_map,
    )
    from raymail.routing.base import BaseRouter
    from raymail.routing.baselines import (
        EqualSharesRouter,
        RoundRobinRouter,
        StaticOracleRouter,
        StaticRouter,
    )
    from raymail.routing.factory import POLICIES, make_router
    from raymail.routing.oracle import OracleRouter
    from raymail.routing.policy import LearnedRouter
    from raymail.routing.probe_now import probe
    from raymail.routing.table import RoutingTable, default_table_dir
    from raymail.routing.views import explain, show
    from raymail.spec import raymail_home

_WHERE = {
    "compare_makespans": "analysis",
    "latency_by_server_domain": "analysis",
    "makespan": "analysis",
    "preferred_map": "analysis",
    "explain": "views",
    "show": "views",
    "probe": "probe_now",
    "BaseRouter": "base",
    "EqualSharesRouter": "baselines",
    "OracleRouter": "oracle",
    "StaticOracleRouter": "baselines",
    "RoundRobinRouter": "baselines",
    "StaticRouter": "baselines",
    "POLICIES": "factory",
    "make_router": "factory",
    "LearnedRouter": "policy",
    "RoutingTable": "table",
    "default_table_dir": "table",
    "raymail_home": "table",  # imported there from raymail.spec
}

__all__ = [
    "POLICIES",
    "BaseRouter",
    "EqualSharesRouter",
    "LearnedRouter",
    "OracleRouter",
    "RoundRobinRouter",
    "RoutingTable",
    "StaticOracleRouter",
    "StaticRouter",
    "compare_makespans",
    "default_table_dir",
    "explain",
    "latency_by_server_domain",
    "make_router",
    "makespan",
    "preferred_map",
    "probe",
    "raymail_home",
    "show",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'raymail.routing' has no attribute {name!r}")
    return getattr(importlib.import_module(f"raymail.routing.{module}"), name)
