"""The web service under load: one-click POSTs and open-pixel hits per second, side by side
with a bare FastAPI app on uvicorn that does nothing but answer 200, and kill trials.

``bare_fastapi``
    ``uvicorn`` with ``--workers`` = ``--replicas`` (the same worker count as raymail)
    serving a FastAPI app whose two routes return 200 at once: the floor of any Python web
    service on this machine.
``raymail_web``
    ``raymail web serve`` (its own local Ray, Serve's proxy, ``--replicas`` ingress
    replicas, the applier), durability on: every 200 comes after its change record is
    fdatasync'd (group commit).

Both get the same load in the same run, from this process: ``--concurrency`` keep-alive
HTTP/1.1 connections (a small raw asyncio client, lighter than any HTTP library) for
``--seconds`` per endpoint, after a warm-up; rounds alternate ``--rounds`` times and the
ratio ``vs_bare_fastapi`` is raymail's rate over the bare app's of the same round (median
over rounds). Latency p50/p99 is per request, client side. ``cpu_ms_per_request`` is the
CPU time every process of the server's session (Ray's included) used during the measured
load, per 200: on a machine shared with other work it moves much less than the rates.

Kill trials: the service is started, loaded, and ``kill -9``'d with its whole process group
(Ray included) in the middle; every request that got its 200 must be in the change log
afterwards (each carries a unique User-Agent). ``lost_acknowledged`` counts those missing
over all trials (must be 0).

    python benchmarks/web.py [--seconds 8] [--concurrency 32] [--rounds 2] [--replicas 1]
                             [--kill-trials 3] [--haproxy] [--json-out PATH]
                             [--warmup-s 2] [--kill-last-round]

``--kill-last-round`` makes the first kill trial load and kill the last round's raymail
service instead of a fresh one: one Ray start less, for smoke runs (the test suite).

Prints one JSON object on stdout; progress on stderr. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import yaml

from raymail.compose.verp import TokenKind, TokenSigner
from raymail.lists.changelog import ChangeLog, changes_dir

SECRET = "bench-web-secret"
CAMPAIGN = "bench"
ONE_CLICK = b"List-Unsubscribe=One-Click"
BARE_APP = """
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse, Response
app = FastAPI()
@app.post("/u/{token}")
async def one_click(token: str):
    return PlainTextResponse("ok")
@app.get("/o/{token}.gif")
async def pixel(token: str):
    return Response(b"GIF89a", media_type="image/gif")
@app.get("/healthz")
async def health():
    return PlainTextResponse("ok")
"""


def log(message: str) -> None:
    print(f"[web bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- load ----------------------------------------------------------------------------


async def _connection(
    port: int,
    requests: list[tuple[str, str]],
    method: str,
    tag: str,
    deadline: float,
    out: dict[str, Any],
) -> None:
    """Keep-alive requests until the deadline (bounded by time); a connection that fails
    (the server closed it, or died) counts one error and is opened again after 50 ms."""
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            out["errors"] += 1
            await asyncio.sleep(0.05)
            continue
        try:
            while time.monotonic() < deadline:
                path, _ = requests[out["next"] % len(requests)]
                out["next"] += 1
                agent = f"{tag}-{out['next']}"
                body = ONE_CLICK if method == "POST" else b""
                head = (
                    f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: {agent}\r\n"
                    + ("Content-Type: application/x-www-form-urlencoded\r\n" if body else "")
                    + f"Content-Length: {len(body)}\r\n\r\n"
                )
                started = time.perf_counter()
                writer.write(head.encode() + body)
                status = await asyncio.wait_for(_response(reader), 30)
                out["latency"].append(time.perf_counter() - started)
                if status == 200:
                    out["acked"].append(agent)
                else:
                    out["errors"] += 1
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            out["errors"] += 1
            await asyncio.sleep(0.05)
        finally:
            writer.close()


async def _response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


def run_load(
    port: int,
    requests: list[tuple[str, str]],
    method: str,
    seconds: float,
    concurrency: int,
    tag: str,
) -> dict[str, Any]:
    out: dict[str, Any] = {"latency": [], "acked": [], "errors": 0, "next": 0}

    async def main() -> None:
        deadline = time.monotonic() + seconds
        await asyncio.gather(
            *(_connection(port, requests, method, tag, deadline, out) for _ in range(concurrency))
        )

    started = time.perf_counter()
    asyncio.run(main())
    elapsed = time.perf_counter() - started
    latency = sorted(out["latency"])
    ok = len(out["acked"])
    return {
        "requests_per_s": round(ok / elapsed, 1),
        "ok": ok,
        "errors": out["errors"],
        "p50_ms": round(latency[len(latency) // 2] * 1000, 2) if latency else None,
        "p99_ms": round(latency[int(len(latency) * 0.99)] * 1000, 2) if latency else None,
        "acked": out["acked"],
    }


# -- servers -------------------------------------------------------------------------


def wait_healthy(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # bounded
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not become healthy")


def start_bare(tmp: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    """The bare app with as many uvicorn worker processes as raymail has replicas."""
    (tmp / "bare_app.py").write_text(BARE_APP)
    cmd = [
        sys.executable,
        "-m",
        "uvicorn",
        "bare_app:app",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-access-log",
        "--workers",
        str(workers),
    ]
    proc = subprocess.Popen(cmd, cwd=tmp, start_new_session=True)
    wait_healthy(port, proc)
    return proc


def write_spec(tmp: Path, port: int, replicas: int) -> Path:
    home = tmp / f"home-{port}"
    spec = {
        "campaign": CAMPAIGN,
        "sender": "news@bench.test",
        "subject": "s",
        "text": "t",
        "recipients": str(tmp / "none.csv"),
        "verp_secret": SECRET,
        "mx_override": {"*": "127.0.0.1:9"},
        "returns": {"home": str(home), "suppression_path": str(home / "suppression.parquet")},
        "web": {
            "base_url": f"http://127.0.0.1:{port}",
            "home": str(home),
            "replicas": replicas,
            "apply_interval_s": 1.0,
            "apply_batch": 5000,
        },
    }
    path = tmp / f"spec-{port}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def start_service(
    tmp: Path, port: int, replicas: int, haproxy: bool
) -> tuple[subprocess.Popen[bytes], Path]:
    spec = write_spec(tmp, port, replicas)
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAYMAIL_HOME": str(tmp / "rm"),
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src"),
    }
    env.pop("RAY_ADDRESS", None)
    if haproxy:  # its metrics and stats ports are fixed by default: take free ones
        env["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(free_port())
        env["RAY_SERVE_HAPROXY_STATS_PORT"] = str(free_port())
    cmd = [
        sys.executable,
        "-m",
        "raymail.cli",
        "web",
        "serve",
        "--spec",
        str(spec),
        "--runs",
        str(tmp / "no-runs"),
        "--port",
        str(port),
        *(["--haproxy"] if haproxy else []),
    ]
    log_path = tmp / f"service-{port}.log"
    with log_path.open("wb") as logs:
        proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=logs, stderr=logs)
    try:
        wait_healthy(port, proc)
    except RuntimeError as exc:
        stop(proc, signal.SIGKILL)
        tail = log_path.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"{exc}; its output ends with:\n{tail}") from None
    return proc, tmp / f"home-{port}"


def start_service_retrying(
    tmp: Path, replicas: int, haproxy: bool, attempts: int = 3
) -> tuple[subprocess.Popen[bytes], Path, int]:
    """A service on a fresh port; another try when one does not start (a port taken in the
    meantime by another process on this shared machine, a Ray start that timed out)."""
    for attempt in range(1, attempts + 1):
        port = free_port()
        try:
            proc, home = start_service(tmp, port, replicas, haproxy)
            return proc, home, port
        except RuntimeError as exc:
            log(f"service start {attempt} failed: {exc}")
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """End a server and everything in its process group (Ray's processes, HAProxy), even
    those that outlive the group's leader."""
    group = proc.pid  # start_new_session: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signal.SIGKILL)
    proc.wait(timeout=30)


def session_cpu_s(session: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a session: the
    server's whole cost per request, a steadier figure than a rate on a shared machine."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        if int(fields[3]) == session:  # field 6 of proc(5): the session id
            total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def logged_agents(home: Path) -> set[str]:
    changes, _ = ChangeLog(changes_dir(home)).read({})
    return {str(c.record.get("ua")) for c in changes}


# -- the benchmark -------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--kill-trials", type=int, default=3)
    parser.add_argument("--haproxy", action="store_true", help="Serve's HAProxy ingress")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="load before each measure")
    parser.add_argument(
        "--kill-last-round",
        action="store_true",
        help="the first kill trial kills the last round's service (no fresh start)",
    )
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    signer = TokenSigner(CAMPAIGN, SECRET)
    people = [f"r{i}@bench.test" for i in range(2000)]
    unsub = [(f"/u/{signer.token(TokenKind.UNSUBSCRIBE, p)}", p) for p in people]
    pixel = [(f"/o/{signer.token(TokenKind.OPEN, p)}.gif", p) for p in people]
    loads = {"one_click": (unsub, "POST"), "open_pixel": (pixel, "GET")}
    result: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "seconds": args.seconds,
        "concurrency": args.concurrency,
        "replicas": args.replicas,
        "ingress": "haproxy" if args.haproxy else "serve_proxy",
        "durability": "fdatasync per group commit",
        "rounds": [],
    }
    with tempfile.TemporaryDirectory(prefix="raymail-web-bench-") as name:
        tmp = Path(name)
        kept: tuple[subprocess.Popen[bytes], Path, int] | None = None
        for n in range(args.rounds):
            round_result: dict[str, Any] = {}
            for system in ("bare_fastapi", "raymail_web"):
                if system == "bare_fastapi":
                    port = free_port()
                    proc, home = start_bare(tmp, port, args.replicas), None
                else:
                    proc, home, port = start_service_retrying(tmp, args.replicas, args.haproxy)
                keep = (
                    home is not None
                    and n == args.rounds - 1
                    and args.kill_last_round
                    and args.kill_trials > 0
                )
                try:
                    for load, (requests, method) in loads.items():
                        run_load(port, requests, method, args.warmup_s, args.concurrency, "warm")
                        cpu_before = session_cpu_s(proc.pid)
                        measured = run_load(
                            port,
                            requests,
                            method,
                            args.seconds,
                            args.concurrency,
                            f"{system}-{load}",
                        )
                        acked = measured.pop("acked")
                        cpu = session_cpu_s(proc.pid) - cpu_before
                        measured["server_cpu_ms_per_request"] = round(
                            1000 * cpu / max(1, measured["ok"]), 3
                        )
                        if home is not None:
                            measured["acked_not_logged"] = len(set(acked) - logged_agents(home))
                        round_result.setdefault(load, {})[system] = measured
                        log(f"round {n + 1} {system} {load}: {measured}")
                    if keep and home is not None:
                        kept = (proc, home, port)
                finally:
                    if kept is None or kept[0] is not proc:
                        stop(proc)
            for load in loads:
                pair = round_result[load]
                pair["vs_bare_fastapi"] = round(
                    pair["raymail_web"]["requests_per_s"] / pair["bare_fastapi"]["requests_per_s"],
                    3,
                )
            result["rounds"].append(round_result)
        for load in loads:
            ratios = [r[load]["vs_bare_fastapi"] for r in result["rounds"]]
            rounds = result["rounds"]

            def median(
                system: str,
                key: str,
                load: str = load,
                rounds: list[Any] = rounds,
                digits: int = 2,
            ) -> float:
                return round(float(statistics.median(r[load][system][key] for r in rounds)), digits)

            result[load] = {
                "raymail_web_requests_per_s": median("raymail_web", "requests_per_s"),
                "bare_fastapi_requests_per_s": median("bare_fastapi", "requests_per_s"),
                "raymail_web_p50_ms": median("raymail_web", "p50_ms"),
                "raymail_web_p99_ms": median("raymail_web", "p99_ms"),
                "bare_fastapi_p50_ms": median("bare_fastapi", "p50_ms"),
                "bare_fastapi_p99_ms": median("bare_fastapi", "p99_ms"),
                "vs_bare_fastapi": round(statistics.median(ratios), 3),
                "raymail_web_cpu_ms_per_request": median(
                    "raymail_web", "server_cpu_ms_per_request", digits=3
                ),
                "bare_fastapi_cpu_ms_per_request": median(
                    "bare_fastapi", "server_cpu_ms_per_request", digits=3
                ),
            }
        result["kill_trials"] = kill_trials(tmp, args, unsub, pixel, kept)
        result["lost_acknowledged"] = sum(t["lost_acknowledged"] for t in result["kill_trials"])
    text = json.dumps(result, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0 if result["lost_acknowledged"] == 0 else 1


def kill_trials(
    tmp: Path,
    args: argparse.Namespace,
    unsub: list[tuple[str, str]],
    pixel: list[tuple[str, str]],
    kept: tuple[subprocess.Popen[bytes], Path, int] | None = None,
) -> list[dict[str, Any]]:
    """Each trial kills a service under load; the first may be one already running (kept)."""
    trials = []
    for n in range(args.kill_trials):
        if n == 0 and kept is not None:
            proc, home, port = kept
        else:
            proc, home, port = start_service_retrying(tmp, args.replicas, args.haproxy)
        requests, method = (unsub, "POST") if n % 2 == 0 else (pixel, "GET")
        group = os.getpgid(proc.pid)
        delay = 1.0 + n * 0.7
        killer = threading.Timer(delay, lambda g=group: os.killpg(g, signal.SIGKILL))
        killer.start()
        measured = run_load(port, requests, method, delay + 2.0, args.concurrency, f"kill{n}")
        killer.join()
        proc.wait(timeout=60)
        acked = set(measured["acked"])
        lost = len(acked - logged_agents(home))
        trials.append(
            {
                "trial": n + 1,
                "load": "one_click" if method == "POST" else "open_pixel",
                "killed_after_s": delay,
                "acknowledged": len(acked),
                "failed_after_kill": measured["errors"],
                "lost_acknowledged": lost,
            }
        )
        log(f"kill trial {n + 1}: {trials[-1]}")
    return trials


if __name__ == "__main__":
    raise SystemExit(main())
