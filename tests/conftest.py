"""Shared fixtures: one local Ray per session, sinks on loopback, spec factories."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(autouse=True)
def raymail_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own RAYMAIL_HOME: the routing table learned in one test (or on this
    machine) never steers another."""
    home = tmp_path_factory.mktemp("raymail-home")
    monkeypatch.setenv("RAYMAIL_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One real local Ray for the whole session (starting Ray costs seconds)."""
    import ray

    from raymail.runtime import start_local_ray

    if not ray.is_initialized():
        start_local_ray(num_cpus=2, delivery_slots=64, log_to_driver=False)
    yield
    ray.shutdown()


def make_spec(recipients: Path, port: int, **overrides: Any) -> Any:
    """A small campaign spec aimed at a sink on 127.0.0.1:port."""
    from raymail.spec import parse_spec

    data: dict[str, Any] = {
        "campaign": "test",
        "sender": "Raymail Test <news@sender.test>",
        "subject": "Hello {{ name }}",
        "text": "Hi {{ name }},\nthis is a test.\n",
        "recipients": str(recipients),
        "mx_override": {"*": f"127.0.0.1:{port}"},
        "delivery_servers": 2,
        "concurrency": 4,
        "verp_secret": "test-secret",
        "checkpoint_interval_s": 0.5,
        # In-run retries only (schedule: []), fast: most tests are about one run's outcomes;
        # the deferral queue (the default schedule, 2m first) has tests of its own.
        "retry": {
            "schedule": [],
            "max_attempts": 3,
            "initial_backoff_s": 0.2,
            "max_backoff_s": 1.0,
        },
    }
    data.update(overrides)
    return parse_spec(data, "test-spec")


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path
