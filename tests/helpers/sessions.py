"""kill -9 of a whole process session: a raymail command and all of its local Ray.

Ray makes each worker process (delivery servers, Serve's proxy and replicas) the leader of a
process group of its own, so ``killpg`` of the command's group leaves them running until they
notice their raylet is gone; they keep the command's session, so the session is what to kill.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def session_pids(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``."""
    pids: list[int] = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # field 6 of /proc/PID/stat
            pids.append(int(entry.name))
    return pids


def kill_session(sid: int, rounds: int = 5) -> None:
    """kill -9 every process of the session at once; a few rounds, for workers forked meanwhile."""
    for _ in range(rounds):
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
