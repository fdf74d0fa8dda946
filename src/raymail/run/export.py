"""Copies of a run's results in a shared place: a folder or an ``s3://`` prefix.

The run directory stays the working copy on the driver's disk: ``flock``, atomic renames
and the delivery journals need a POSIX filesystem, which object storage is not. What people
read after a run (the ledger and observations as Parquet, the validated list, the rejects,
``run.json`` and ``report.json``) is copied to ``export`` while the run goes on (when the
manifest changes, i.e. at every stage, and at least every ``export_interval_s``) and once
more at the end, keeping the run directory's layout::

    EXPORT/run.json  report.json  recipients.parquet  rejects.parquet
    EXPORT/outcomes/part-*.parquet  EXPORT/observations/part-*.parquet

Ledger parts never change once written, so each is uploaded once; Parquet goes before the
JSON, so a reader who sees a manifest finds every part it counts. A failed upload never
stops delivery: it is logged and retried at the next sync.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from raymail.errors import StorageError, first_line
from raymail.intake.staging import Location, locate
from raymail.run.rundir import MANIFEST, OBSERVATIONS, OUTCOMES, RECIPIENTS, REJECTS, REPORT
from raymail.spec import CampaignSpec, S3Settings

__all__ = ["RunExport", "start_export"]

log = logging.getLogger(__name__)

_PARTS = (OUTCOMES, OBSERVATIONS)
_TABLES = (RECIPIENTS, REJECTS)
_JSON = (MANIFEST, REPORT)  # last: they describe the Parquet above them
_POLL_S = 1.0


class RunExport:
    """Mirrors one run directory's results to ``dest``; :meth:`start` runs it in a thread."""

    def __init__(
        self,
        run_dir: Path,
        dest: str,
        s3: S3Settings | None = None,
        interval_s: float = 60.0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.dest_url = dest
        self.interval_s = interval_s
        try:
            self.dest = locate(dest, s3)
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(f"export {dest}: {first_line(exc)}") from None
        self._sent: dict[str, tuple[int, int]] = {}  # relative name -> (size, mtime_ns)
        self._listed = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    # -- one pass -----------------------------------------------------------------------

    def sync(self) -> int:
        """Upload what is new or changed; returns how many files went. Raises StorageError."""
        with self._lock:
            try:
                return self._sync()
            except (OSError, pa.ArrowException) as exc:
                self.last_error = f"export to {self.dest_url} failed: {first_line(exc)}"
                raise StorageError(self.last_error) from None

    def _sync(self) -> int:
        if not self._listed:
            self._remember_remote()
        sent = 0
        for name in self._candidates():
            local = self.run_dir / name
            try:
                stat = local.stat()
            except FileNotFoundError:  # replaced between listing and reading
                continue
            key = (stat.st_size, stat.st_mtime_ns)
            if self._sent.get(name) == key:
                continue
            self._put(local, self.dest.join(*name.split("/")))
            self._sent[name] = key
            sent += 1
        self.last_error = None
        return sent

    def _candidates(self) -> list[str]:
        names = [
            f"{folder}/{part.name}"
            for folder in _PARTS
            for part in sorted((self.run_dir / folder).glob("part-*.parquet"))
        ]
        return names + [n for n in (*_TABLES, *_JSON) if (self.run_dir / n).exists()]

    def _remember_remote(self) -> None:
        """Parts already at the destination (a resumed run) are not uploaded again."""
        selector = pafs.FileSelector(self.dest.path, recursive=True, allow_not_found=True)
        for info in self.dest.fs.get_file_info(selector):
            name = info.path[len(self.dest.path) :].lstrip("/")
            if info.type == pafs.FileType.File and name.split("/")[0] in _PARTS:
                local = self.run_dir / name
                if local.exists() and local.stat().st_size == info.size:
                    stat = local.stat()
                    self._sent[name] = (stat.st_size, stat.st_mtime_ns)
        self._listed = True

    def _put(self, local: Path, target: Location) -> None:
        fs = target.fs
        if isinstance(fs, pafs.LocalFileSystem):  # a shared folder: never half a file
            parent = target.path.rsplit("/", 1)[0]
            fs.create_dir(parent, recursive=True)
            tmp = f"{parent}/.{target.name}.tmp"
            pafs.copy_files(str(local), tmp, destination_filesystem=fs)
            fs.move(tmp, target.path)
        else:  # one PUT (multipart for large files): readers see all of it or nothing
            pafs.copy_files(
                str(local),
                target.path,
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=fs,
            )

    # -- in the background ----------------------------------------------------------------

    def check(self) -> None:
        """Fail now, before anything is sent, when the destination cannot exist."""
        fs, path = self.dest.fs, self.dest.path
        try:
            if isinstance(fs, pafs.LocalFileSystem):
                fs.create_dir(path, recursive=True)
            elif fs.get_file_info(path.split("/", 1)[0]).type != pafs.FileType.Directory:
                raise StorageError(f"export {self.dest_url}: bucket not found")
        except (OSError, pa.ArrowException) as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"export {self.dest_url}: {first_line(exc)}") from None

    def start(self) -> RunExport:
        """Check the destination now (a bad bucket fails before anything is sent), then
        keep syncing in a daemon thread until :meth:`close`."""
        self.check()
        self.sync()
        self._thread = threading.Thread(target=self._loop, name="raymail-export", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        manifest = self.run_dir / MANIFEST
        seen: int | None = None
        last = time.monotonic()
        while not self._stop.wait(_POLL_S):
            try:
                mtime = manifest.stat().st_mtime_ns
            except FileNotFoundError:
                mtime = None
            if mtime == seen and time.monotonic() - last < self.interval_s:
                continue
            seen, last = mtime, time.monotonic()
            try:
                self.sync()
            except StorageError as exc:
                log.warning("%s; retrying in %.0f s", exc, self.interval_s)

    def close(self) -> str | None:
        """Stop the thread and export everything once more; the error, if that failed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        try:
            self.sync()
        except StorageError as exc:
            log.warning("%s; run 'raymail export %s' to try again", exc, self.run_dir)
            return str(exc)
        return None


def start_export(spec: CampaignSpec, run_dir: Path) -> RunExport | None:
    """The spec's export, started (None when the spec has no ``export``)."""
    if not spec.export:
        return None
    return RunExport(run_dir, spec.export, spec.s3, spec.export_interval_s).start()
