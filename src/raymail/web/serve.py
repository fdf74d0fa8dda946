"""Starting the web service: the Serve application, locally or on a running cluster.

``build_app`` gives the application (ingress replicas bound to one applier) for
``serve.run``, for ``serve run jobs/web_service.py:app_builder spec=...`` and for
``ray job submit -- python jobs/web_service.py --spec ...``; ``run_local`` is what
``raymail web serve`` does: start Ray if needed, start Serve's proxy on the port, deploy.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Final

from raymail.errors import WebError
from raymail.lists.apply import Applier
from raymail.lists.mail import ListMailer
from raymail.spec import load_spec
from raymail.web.campaigns import CampaignBook
from raymail.web.config import WebConfig

__all__ = [
    "APP_NAME",
    "QUIET_PROXY",
    "applier_for",
    "build_app",
    "config_from_paths",
    "run_local",
    "shutdown",
]

APP_NAME: Final = "raymail-web"
# Serve's proxies log every request by default; the change log already records each
# accepted one, and at thousands of hits a second the access log costs more than the hit.
QUIET_PROXY: Final = {"enable_access_log": False}


def config_from_paths(spec: Path, runs: list[Path] | None = None) -> WebConfig:
    """The config of ``--spec`` plus ``--runs`` (default: ``runs/`` next to the spec)."""
    loaded = load_spec(spec)
    if runs is None:
        default = spec.resolve().parent / "runs"
        runs = [default] if default.exists() else []
    return WebConfig(loaded, tuple(str(p) for p in runs))


def applier_for(config: WebConfig) -> Applier:
    """The change-log applier of a config (the service's, or ``raymail lists apply``'s)."""
    return Applier(
        config.home,
        resolver=CampaignBook(config),
        suppression=config.suppression_file,
        events=config.events_dir,
        web=config.web,
        secret=config.secret,
        mailer=ListMailer(config.spec),
        batch=config.web.apply_batch,
    )


def build_app(config: WebConfig) -> Any:
    """The Serve application (``ray.serve.Application``)."""
    from raymail.web.app import ApplierDeployment, WebIngress

    applier = ApplierDeployment.bind(config)  # type: ignore[attr-defined]
    ingress = WebIngress.options(num_replicas=config.web.replicas)  # type: ignore[attr-defined]
    return ingress.bind(config, applier)


def run_local(config: WebConfig, *, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Deploy on the connected (or a new local) Ray; returns the base URL it listens on."""
    import ray
    from ray import serve

    from raymail.runtime import start_local_ray

    if not ray.is_initialized():
        start_local_ray(num_cpus=2, log_to_driver=False)
    try:
        serve.start(http_options={"host": host, "port": port}, logging_config=QUIET_PROXY)
        serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    except Exception as exc:
        raise WebError(f"cannot start the web service on {host}:{port}: {exc}") from exc
    return f"http://{host}:{port}"


def shutdown() -> None:
    """Remove the application (Serve's proxy and controller stay for the next one)."""
    from ray import serve

    serve.delete(APP_NAME)


def wait_forever(poll_s: float = 3600.0) -> None:
    """Block the command that started the service until it is interrupted."""
    while True:
        time.sleep(poll_s)
