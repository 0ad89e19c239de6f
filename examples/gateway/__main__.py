"""`python -m examples.gateway`: the demo gateway under uvicorn, with built-in traffic.

    python -m examples.gateway                      # http://127.0.0.1:8000, /metrics
    python -m examples.gateway --port 8080 --no-traffic

The `GATEWAYZ_DEMO_*` environment variables (see `Settings.from_env`) tune the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

import uvicorn

from examples.gateway.app import Settings, create_app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.gateway",
        description="The demo AI gateway (simulated providers, works offline) with /metrics.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument(
        "--no-traffic",
        action="store_true",
        help="do not drive built-in demo traffic (it is on by default, so /metrics fills)",
    )
    parser.add_argument("--log-level", default="info", help="uvicorn's log level")
    args = parser.parse_args(argv)
    try:
        settings = dataclasses.replace(Settings.from_env(), traffic=not args.no_traffic)
    except ValueError as exc:
        parser.error(str(exc))
    app = create_app(settings=settings)
    print(
        f"gatewayz demo: http://{args.host}:{args.port}/v1/chat/completions, metrics at "
        f"http://{args.host}:{args.port}/metrics"
        + ("" if settings.traffic else " (no built-in traffic)"),
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
