"""Acknowledged means kept: kill -9 of a replica, of the applier, or of the whole service.

Every request answered 2xx must reach the change log and, once the applier catches up
(restarted by Serve, or ``raymail lists apply`` after the whole service died), its effect:
open hits carry a unique User-Agent so each acknowledged one can be found in the events.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import polars as pl
import pytest
import yaml
from typer.testing import CliRunner
from webhelpers import PEOPLE, Service, free_port, web_service_fixture  # noqa: F401 (the fixture)

from helpers import wait_for
from helpers.sessions import kill_session, session_pids
from raymail.cli import _register
from raymail.cli import app as cli_app
from raymail.returns.suppression import SuppressionList

pytestmark = [pytest.mark.slow, pytest.mark.timeout(500)]
_register()


def _pids(title: str) -> list[int]:
    """Processes whose command line contains ``title`` (Ray names actors' processes)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if title in cmdline:
            found.append(int(entry.name))
    return found


async def _load(
    url: str, paths: list[str], tag: str, seconds: float, concurrency: int = 16
) -> tuple[set[str], int]:
    """GET the paths round-robin with unique agents for ``seconds``; (acked agents, failures)."""
    acked: set[str] = set()
    failures = 0
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal failures
        while time.monotonic() < deadline:  # bounded by time
            n = next(counter)
            agent = f"{tag}-{n}"
            try:
                reply = await client.get(paths[n % len(paths)], headers={"User-Agent": agent})
            except httpx.HTTPError:
                failures += 1
                await asyncio.sleep(0.05)
                continue
            if reply.status_code == 200:
                acked.add(agent)
            else:
                failures += 1

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=10.0, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return acked, failures


def _agents(events_dir: Path, tag: str) -> set[str]:
    if not any(events_dir.glob("campaign=*/date=*/*.parquet")):
        return set()
    frame = pl.read_parquet(events_dir / "campaign=*/date=*/*.parquet", hive_partitioning=False)
    agents = frame.filter(pl.col("user_agent").str.starts_with(f"{tag}-"))["user_agent"]
    return set(agents.to_list())


def _kill_later(delay_s: float, title: str, killed: list[int]) -> threading.Thread:
    def kill() -> None:
        time.sleep(delay_s)
        for pid in _pids(title):
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def _pixel_paths(service: Service) -> list[str]:
    return [service.links(p)["pixel"].split("://", 1)[1].split("/", 1)[1] for p in PEOPLE[8:]]


def test_kill_replica_and_applier_under_load_loses_no_acknowledged_hit(
    web_service: Service,
) -> None:
    paths = ["/" + p for p in _pixel_paths(web_service)]
    killed: list[int] = []
    killer = _kill_later(1.5, "ServeReplica:raymail-web:WebIngress", killed)
    acked, _ = asyncio.run(_load(web_service.url, paths, "replica-kill", 5.0))
    killer.join()
    assert killed, "no ingress replica process was found to kill"
    assert acked
    # The applier dies too; Serve restarts both, and the restarted applier catches up.
    applier_killed: list[int] = []
    _kill_later(0.0, "ServeReplica:raymail-web:ApplierDeployment", applier_killed).join()
    assert applier_killed
    more, _ = asyncio.run(_load(web_service.url, paths, "replica-kill", 3.0))
    acked |= more

    def all_acked() -> set[str]:
        seen = _agents(web_service.config.events_dir, "replica-kill")
        return seen if acked <= seen else set()

    found = wait_for("every acknowledged hit in the events", all_acked, timeout_s=120)
    assert acked <= found


def _service_spec(service: Service, tmp: Path, port: int) -> Path:
    data = service.spec.model_dump(mode="json", exclude_none=True)
    home = tmp / "home"
    data["web"] = {**data["web"], "base_url": f"http://127.0.0.1:{port}", "home": str(home)}
    data["returns"] = {**data["returns"], "suppression_path": str(home / "suppression.parquet")}
    path = tmp / "spec.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_kill_whole_service_then_apply_from_the_log(web_service: Service, tmp_path: Path) -> None:
    """kill -9 of `raymail web serve` and its whole Ray; the log alone completes the work."""
    port = free_port()
    spec = _service_spec(web_service, tmp_path, port)
    runs = web_service.config.runs[0]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAYMAIL_HOME": str(tmp_path / "rm")}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "raymail.cli",
            "web",
            "serve",
            "--spec",
            str(spec),
            "--runs",
            runs,
            "--port",
            str(port),
        ],
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for("the service", lambda: _healthy(url), timeout_s=180)
        paths = ["/" + p for p in _pixel_paths(web_service)]
        unsubscribe = web_service.links(PEOPLE[7])["unsubscribe"].split(str(web_service.url))[1]
        with httpx.Client(base_url=url) as client:
            one_click = client.post(
                unsubscribe,
                content=b"List-Unsubscribe=One-Click",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        assert one_click.status_code == 200
        session = os.getsid(proc.pid)

        def kill() -> None:
            time.sleep(1.5)
            kill_session(session)

        killer = threading.Thread(target=kill, daemon=True)
        killer.start()
        acked, failures = asyncio.run(_load(url, paths, "service-kill", 4.0))
        killer.join()
        proc.wait(timeout=30)
        assert acked and failures  # load was running when everything died
    finally:
        if proc.poll() is None:
            kill_session(os.getsid(proc.pid))
        proc.wait(timeout=30)
    wait_for("the killed service gone", lambda: not session_pids(session), timeout_s=30)
    home = tmp_path / "home"
    result = CliRunner().invoke(
        cli_app, ["lists", "apply", "--spec", str(spec), "--runs", runs, "--json"]
    )
    assert result.exit_code == 0, result.output
    assert acked <= _agents(home / "events", "service-kill")
    suppressed = SuppressionList(home / "suppression.parquet").active()["email"].to_list()
    assert PEOPLE[7] in suppressed
    # Applying again finds nothing more to do.
    again = CliRunner().invoke(cli_app, ["lists", "apply", "--spec", str(spec), "--json"])
    assert '"changes": 0' in again.output


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
