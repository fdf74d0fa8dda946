"""``python -m raymail.sink``: a sink in the foreground, as SinkProcess and humans start it.

It prints one line ``RAYMAIL-SINK READY <host> <port>`` on stdout once it listens. With
``--parent-pipe`` it reads its config as one JSON line from stdin and stops when stdin
closes, so it dies with the process that spawned it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from raymail.errors import SinkConfigError, SinkError
from raymail.sink.config import SinkConfig, load_config, parse_config
from raymail.sink.runner import serve
from raymail.sink.server import SinkServer
from raymail.sink.topology import load_topology

READY_PREFIX = "RAYMAIL-SINK READY"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m raymail.sink", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=2525, help="port; 0 picks a free one")
    parser.add_argument("--config", type=Path, help="sink config YAML")
    parser.add_argument("--topology", type=Path, help="topology YAML (per client and domain)")
    parser.add_argument("--capture", type=Path, help="directory for capture JSON Lines")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate for STARTTLS")
    parser.add_argument("--tls-key", type=Path, help="PEM key for STARTTLS")
    parser.add_argument("--stats", type=Path, help="write counters as JSON here on shutdown")
    parser.add_argument(
        "--parent-pipe",
        action="store_true",
        help="read config as one JSON line from stdin; stop when stdin closes",
    )
    return parser


def _read_stdin_line(limit: int = 64 * 1024 * 1024) -> bytes:
    """One line from the raw stdin descriptor (never through sys.stdin's buffer, see runner)."""
    fd = sys.stdin.fileno()
    data = b""
    while b"\n" not in data and len(data) < limit:  # bounded by size; EOF ends it too
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0]


def _config(args: argparse.Namespace) -> SinkConfig:
    if args.parent_pipe:
        line = _read_stdin_line()
        try:
            data = json.loads(line) if line.strip() else {}
        except ValueError as exc:
            raise SinkConfigError(f"<stdin>: sink config is not JSON: {exc}") from None
        return parse_config(data, "<stdin>")
    config = load_config(args.config) if args.config else SinkConfig()
    return load_topology(args.topology).apply(config) if args.topology else config


def _announce(parent_pipe: bool) -> Callable[[SinkServer], None]:
    def on_ready(server: SinkServer) -> None:
        sys.stdout.write(f"{READY_PREFIX} {server.host} {server.port}\n")
        sys.stdout.flush()
        if parent_pipe:  # nobody reads stdout any more: never block on a full pipe
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)

    return on_ready


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _config(args)
        serve(
            config,
            host=args.host,
            port=args.port,
            capture_dir=args.capture,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            stats_path=args.stats,
            on_ready=_announce(args.parent_pipe),
            stop_on_stdin_eof=args.parent_pipe,
        )
    except SinkConfigError as exc:
        print(f"raymail sink: {exc}", file=sys.stderr)
        return 2
    except SinkError as exc:
        print(f"raymail sink: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
