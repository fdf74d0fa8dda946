"""The web service on a running cluster (see README, "The web service").

Two ways:

- ``serve run jobs.web_service:app_builder spec=/path/spec.yaml runs=/data/runs``
  (Serve's own CLI; ``runs`` may hold several paths separated by commas);
- ``ray job submit --working-dir . -- python jobs/web_service.py --spec spec.yaml
  [--runs /data/runs]...`` deploys the application and exits; Serve keeps it running
  (``serve status`` shows it, ``serve delete raymail-web`` removes it).

Serve's proxy listens on port ``--port`` (default 8000) of every node; put the load
balancer in front of them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

try:
    import raymail  # noqa: F401
except ImportError:  # running from a source checkout uploaded as the job's working dir
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from raymail.errors import RaymailError
from raymail.web.serve import APP_NAME, QUIET_PROXY, build_app, config_from_paths


def app_builder(args: dict[str, str]) -> Any:
    """For ``serve run``: ``spec=PATH`` and optional ``runs=PATH[,PATH...]``."""
    runs = [Path(p) for p in args.get("runs", "").split(",") if p] or None
    return build_app(config_from_paths(Path(args["spec"]), runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", required=True, help="campaign spec with a web section")
    parser.add_argument("--runs", action="append", help="run directories, or folders of them")
    parser.add_argument("--host", default="0.0.0.0", help="address Serve's proxies listen on")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    import ray
    from ray import serve

    try:
        config = config_from_paths(
            Path(args.spec), [Path(p) for p in args.runs] if args.runs else None
        )
    except RaymailError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ray.init(address="auto")
    serve.start(
        http_options={"host": args.host, "port": args.port, "location": "EveryNode"},
        logging_config=QUIET_PROXY,
    )
    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    print(f"{APP_NAME} deployed: port {args.port} on every node", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
