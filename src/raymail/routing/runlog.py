"""What a router writes into the run directory, so ``raymail routing explain`` can say why
each server got what it got: the policy, the estimates at the start and at the end, the
first plan, and events such as demotions.

Layout: ``RUN_DIR/routing/{policy.json, summary.json, servers.parquet,
estimates_start.parquet, estimates_end.parquet, plan_start.parquet, events.parquet,
probes.parquet}``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

ROUTING_DIR = "routing"
POLICY = "policy.json"
SERVERS = "servers.parquet"
ESTIMATES_START = "estimates_start.parquet"
ESTIMATES_END = "estimates_end.parquet"
PLAN_START = "plan_start.parquet"
EVENTS = "events.parquet"
PROBES = "probes.parquet"
SUMMARY = "summary.json"
EVENT_SCHEMA: dict[str, Any] = {
    "at": pl.Datetime("us", "UTC"),
    "elapsed_s": pl.Float64,
    "event": pl.String,
    "server": pl.String,
    "domain": pl.String,
    "detail": pl.String,
}


class RunRecords:
    """Writes the routing files of one run (each atomically; rewritten as it goes)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / ROUTING_DIR
        self.events: list[dict[str, Any]] = []
        self._probes: list[pl.DataFrame] = []

    def write_policy(self, policy: str, settings: dict[str, Any], table: Path) -> None:
        data = {"policy": policy, "settings": settings, "table": str(table)}
        self._write_text(POLICY, json.dumps(data, indent=2, default=str) + "\n")

    def event(self, elapsed_s: float, event: str, server: str, domain: str, detail: str) -> None:
        self.events.append(
            {
                "at": datetime.now(UTC),
                "elapsed_s": round(elapsed_s, 3),
                "event": event,
                "server": server,
                "domain": domain,
                "detail": detail,
            }
        )

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Counters of the policy (plans made, trial portions given, ...)."""
        self._write_text(SUMMARY, json.dumps(summary, indent=2, default=str) + "\n")

    def add_probes(self, probes: pl.DataFrame) -> None:
        self._probes.append(probes)

    def write(self, name: str, frame: pl.DataFrame) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{name}.tmp"
        frame.write_parquet(tmp)
        tmp.replace(self.path / name)

    def flush(self) -> None:
        """Rewrite the growing files: events and probes."""
        self.write(EVENTS, pl.DataFrame(self.events, schema=EVENT_SCHEMA))
        if self._probes:
            self.write(PROBES, pl.concat(self._probes, how="diagonal_relaxed"))

    def _write_text(self, name: str, text: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(self.path / name)


def read_records(run_dir: str | Path) -> dict[str, Any]:
    """The routing files of a run: frames by name, plus 'policy' and 'summary' (dicts);
    missing ones are absent."""
    folder = Path(run_dir) / ROUTING_DIR
    found: dict[str, Any] = {}
    for name in (POLICY, SUMMARY):
        if (folder / name).exists():
            found[name.removesuffix(".json")] = json.loads((folder / name).read_text("utf-8"))
    for name in (SERVERS, ESTIMATES_START, ESTIMATES_END, PLAN_START, EVENTS, PROBES):
        if (folder / name).exists():
            found[name.removesuffix(".parquet")] = pl.read_parquet(folder / name)
    return found
