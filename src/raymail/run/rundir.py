"""The run directory: one campaign run's durable state, and the lock that guards it.

Layout::

    RUN_DIR/
      run.json            manifest: campaign, status, times, capacity (rewritten atomically)
      spec.yaml           the spec this run was started with
      run.lock            flock'd by the live driver (released by the kernel if it dies)
      rejects.parquet     input rows that were not sent, with the reason
      recipients.parquet  the validated, normalised list this run sends to
      journal/*.log       each delivery server's before/after-DATA journal
      outcomes/*.parquet  one row per recipient attempt (the ledger)
      observations/*.parquet  one row per SMTP transaction (routing's evidence)
      report.json         the final report
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import IO, Any

import yaml

from raymail._io import write_json_atomic
from raymail.errors import RunDirError, RunLockedError
from raymail.spec import CampaignSpec, parse_spec

MANIFEST = "run.json"
SPEC = "spec.yaml"
LOCK = "run.lock"
REJECTS = "rejects.parquet"
RECIPIENTS = "recipients.parquet"  # the validated list, so a resume plans the same rows
OUTCOMES = "outcomes"
OBSERVATIONS = "observations"
REPORT = "report.json"


class RunDir:
    """Paths and manifest of one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_file: IO[str] | None = None

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def create(self, spec: CampaignSpec) -> None:
        """Start a new run here; refuse a folder that holds another run."""
        if self.exists():
            old = self.manifest()
            raise RunDirError(
                f"{self.path}: already holds run of campaign '{old.get('campaign')}' "
                f"(status {old.get('status')}); use 'raymail resume' or another --run-dir"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / SPEC).write_text(
            yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), encoding="utf-8"
        )
        write_json_atomic(self.manifest_path, {"campaign": spec.campaign, "status": "created"})

    def spec(self) -> CampaignSpec:
        path = self.path / SPEC
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(f"{self.path}: not a run directory (no {SPEC})") from None
        return parse_spec(data, str(path))

    def manifest(self) -> dict[str, Any]:
        try:
            data = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(f"{self.path}: not a run directory (no {MANIFEST})") from None
        except json.JSONDecodeError as exc:
            raise RunDirError(f"{self.manifest_path}: unreadable manifest: {exc}") from None
        if not isinstance(data, dict):
            raise RunDirError(f"{self.manifest_path}: manifest is not an object")
        return data

    def update(self, **fields: Any) -> dict[str, Any]:
        """Merge fields into the manifest (atomic rewrite)."""
        data = self.manifest() if self.exists() else {}
        data.update(fields)
        write_json_atomic(self.manifest_path, data)
        return data

    def lock(self) -> None:
        """Take the driver lock; another live driver on this folder makes this fail."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = (self.path / LOCK).open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunLockedError(
                f"{self.path}: another driver is running this campaign ({holder}); "
                "wait for it or stop it first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        handle.flush()
        self._lock_file = handle

    def unlock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None
