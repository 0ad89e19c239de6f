"""`uvicorn --workers N` for the multiprocess app, with the directory checked first.

    export PROMETHEUS_MULTIPROC_DIR=/run/gatewayz-metrics
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    python -m examples.multiprocess.run_uvicorn --workers 3 --port 8000

The same as `python -m gatewayz_metrics.multiprocess --clean-stale && uvicorn
examples.multiprocess.app:app --workers 3`: uvicorn's supervisor runs no application code, so
the launcher is where emptying the directory goes. (A missing or unwritable directory stops
plain `uvicorn --workers` too: the middleware fails the workers' start-up, naming it.)
uvicorn has no hook for a worker's exit either; `MetricsApp` (the middleware's `/metrics`)
retires workers that are gone on each scrape instead (see docs/scaling.md).
"""

from __future__ import annotations

import argparse

import uvicorn

from gatewayz_metrics.multiprocess import check_multiproc_dir


def main() -> None:
    """Check (and empty) the multiprocess directory, then start uvicorn's workers."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    check_multiproc_dir(clean_stale=True)
    uvicorn.run(
        "examples.multiprocess.app:app", host=args.host, port=args.port, workers=args.workers
    )


if __name__ == "__main__":
    main()
