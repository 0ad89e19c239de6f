"""gunicorn settings for the multiprocess app: several workers, one set of metrics.

    export PROMETHEUS_MULTIPROC_DIR=/run/gatewayz-metrics   # before gunicorn starts
    mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
    gunicorn -c examples/multiprocess/gunicorn.conf.py examples.multiprocess.app:app

The variable must be in gunicorn's environment, not set in this file or with `raw_env`: the
`import` below loads prometheus_client into the arbiter, whose workers inherit it, and
prometheus_client picks its mode once, at import (`check_multiproc_dir` fails loudly if the
variable came too late). Command-line options (`-b`, `-w`, `-k`) override the settings below.
"""

from __future__ import annotations

from gatewayz_metrics.multiprocess import gunicorn_child_exit, gunicorn_on_starting

bind = "127.0.0.1:8000"
workers = 3
# The maintained home of uvicorn's gunicorn worker (`pip install uvicorn-worker`);
# `uvicorn.workers.UvicornWorker` is the same class, deprecated.
worker_class = "uvicorn_worker.UvicornWorker"

# Before the first worker: the directory exists, is writable, and is emptied of the files of an
# earlier run (their counts would otherwise be added to this run's). Refuses to start otherwise.
on_starting = gunicorn_on_starting

# After each worker exits, however it died: its in-progress gauges go, its counts are kept.
child_exit = gunicorn_child_exit
