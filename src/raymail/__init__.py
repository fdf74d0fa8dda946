"""raymail: very large email campaigns from a Ray cluster, never twice, never skipped.

The public API, loaded on first use so that ``import raymail.sink`` (a separate process in
the demo) does not pay for importing Ray::

    from raymail import load_spec, run_campaign, build_report
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "CampaignSpec": "raymail.spec",
    "load_spec": "raymail.spec",
    "parse_spec": "raymail.spec",
    "run_campaign": "raymail.driver.campaign",
    "build_report": "raymail.run.report",
    "read_outcomes": "raymail.run.ledger",
    "read_observations": "raymail.run.ledger",
    "load_recipients": "raymail.intake.recipients",
    "RaymailError": "raymail.errors",
    "SpecError": "raymail.errors",
    "RecipientError": "raymail.errors",
    "TemplateError": "raymail.errors",
    "DeliveryError": "raymail.errors",
    "RunDirError": "raymail.errors",
    "RunLockedError": "raymail.errors",
}

__all__ = [
    "CampaignSpec",
    "DeliveryError",
    "RaymailError",
    "RecipientError",
    "RunDirError",
    "RunLockedError",
    "SpecError",
    "TemplateError",
    "build_report",
    "load_recipients",
    "load_spec",
    "parse_spec",
    "read_observations",
    "read_outcomes",
    "run_campaign",
]

if TYPE_CHECKING:
    from raymail.driver.campaign import run_campaign
    from raymail.errors import (
        DeliveryError,
        RaymailError,
        RecipientError,
        RunDirError,
        RunLockedError,
        SpecError,
        TemplateError,
    )
    from raymail.intake.recipients import load_recipients
    from raymail.run.ledger import read_observations, read_outcomes
    from raymail.run.report import build_report
    from raymail.spec import CampaignSpec, load_spec, parse_spec


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'raymail' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
