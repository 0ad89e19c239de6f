"""Several worker processes, one set of metrics: the helpers a multi-worker server needs.

prometheus_client's multiprocess mode, made safe to run (see docs/scaling.md)::

    # gunicorn.conf.py
    from gatewayz_metrics.multiprocess import gunicorn_child_exit, gunicorn_on_starting

    on_starting = gunicorn_on_starting  # the directory exists, is writable, is emptied
    child_exit = gunicorn_child_exit  # a dead worker's counts are kept, its files retired

For `uvicorn --workers N`, which runs no hook, check and empty the directory first::

    python -m gatewayz_metrics.multiprocess --clean-stale && uvicorn app:app --workers 4

`MetricsApp` (and the middleware's `/metrics`) serves the sum of all workers by itself and
retires the workers that are gone on each scrape.
"""

from __future__ import annotations

import argparse
import sys

from gatewayz_metrics._multiprocess import (
    check_multiproc_dir,
    gunicorn_child_exit,
    gunicorn_on_starting,
    mark_dead_workers,
    multiprocess_registry,
    retire_worker,
)

__all__ = [
    "check_multiproc_dir",
    "gunicorn_child_exit",
    "gunicorn_on_starting",
    "mark_dead_workers",
    "multiprocess_registry",
    "retire_worker",
]


def main(argv: list[str] | None = None) -> int:
    """`python -m gatewayz_metrics.multiprocess`: check the directory; 0 if usable, else 1."""
    parser = argparse.ArgumentParser(
        prog="python -m gatewayz_metrics.multiprocess",
        description="Check PROMETHEUS_MULTIPROC_DIR before the workers start.",
    )
    parser.add_argument("path", nargs="?", help="the directory (default: PROMETHEUS_MULTIPROC_DIR)")
    parser.add_argument(
        "--clean-stale", action="store_true", help="delete the metric files of an earlier run"
    )
    args = parser.parse_args(argv)
    try:
        directory = check_multiproc_dir(args.path, clean_stale=args.clean_stale)
    except ValueError as exc:
        print(f"gatewayz-metrics: {exc}", file=sys.stderr)
        return 1
    print(f"gatewayz-metrics: {directory} is ready for the workers' metrics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
