"""raymail: very large email campaigns from a Ray cluster, never twice, never skipped.

What a notebook or a Ray job needs, importable from the top::

    import raymail

    spec = raymail.load_spec("campaign.yaml")
    report = raymail.run_campaign(spec, "runs/spring")       # a RunReport; or resume_campaign
    raymail.build_report("runs/spring")                       # again, from the run directory
    raymail.scan_outcomes("runs/spring").filter(...).collect()  # the ledger, lazily (polars)

Functions are loaded on first use, so that ``import raymail`` (and ``import raymail.sink``,
a separate process in the demo) does not pay for importing Ray. The exception tree
(``raymail.errors``) is imported at once: it has no dependencies.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from raymail.errors import (
    AttachmentError,
    DeliveryError,
    DkimError,
    EventRowError,
    ListStoreError,
    MXPermanentError,
    MXResolutionError,
    MXTemporaryError,
    QueryError,
    QueueError,
    RaymailError,
    RecipientError,
    ReturnsError,
    RoutingError,
    RunDirError,
    RunLockedError,
    SinkConfigError,
    SinkError,
    SmimeError,
    SmtpProtocolError,
    SpecError,
    StorageError,
    TemplateError,
    TrackingError,
    WebError,
)

try:
    __version__ = version("raymail")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "CampaignSpec": "raymail.spec",
    "load_spec": "raymail.spec",
    "parse_spec": "raymail.spec",
    "run_campaign": "raymail.driver.campaign",
    "resume_campaign": "raymail.driver.campaign",
    "build_report": "raymail.run.report",
    "RunReport": "raymail.run.report",
    "scan_outcomes": "raymail.run.ledger",
    "read_outcomes": "raymail.run.ledger",
    "read_observations": "raymail.run.ledger",
    "load_recipients": "raymail.intake.recipients",
}

__all__ = [
    "AttachmentError",
    "CampaignSpec",
    "DeliveryError",
    "DkimError",
    "EventRowError",
    "ListStoreError",
    "MXPermanentError",
    "MXResolutionError",
    "MXTemporaryError",
    "QueryError",
    "QueueError",
    "RaymailError",
    "RecipientError",
    "ReturnsError",
    "RoutingError",
    "RunDirError",
    "RunLockedError",
    "RunReport",
    "SinkConfigError",
    "SinkError",
    "SmimeError",
    "SmtpProtocolError",
    "SpecError",
    "StorageError",
    "TemplateError",
    "TrackingError",
    "WebError",
    "build_report",
    "load_recipients",
    "load_spec",
    "parse_spec",
    "read_observations",
    "read_outcomes",
    "resume_campaign",
    "run_campaign",
    "scan_outcomes",
]

if TYPE_CHECKING:
    from raymail.driver.campaign import resume_campaign, run_campaign
    from raymail.intake.recipients import load_recipients
    from raymail.run.ledger import read_observations, read_outcomes, scan_outcomes
    from raymail.run.report import RunReport, build_report
    from raymail.spec import CampaignSpec, load_spec, parse_spec


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'raymail' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found once; later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    """The public API, for completion in notebooks and shells."""
    return sorted([*__all__, "__version__"])
