"""Serve every worker's metrics from a small process of its own, on a port of its own.

    PROMETHEUS_MULTIPROC_DIR=/run/gatewayz-metrics python -m gatewayz_metrics.exporter --port 9464

In multiprocess mode a scrape reads and merges every worker's files. Served by the workers
(`MetricsApp`), that work runs in whichever worker the scrape lands on, beside the requests it
is serving. This exporter does it in a separate process: Prometheus scrapes it, the serving
workers never see a scrape. It reads the directory with the same fast, exact reader as
`MetricsApp` (`FastMultiProcessReader`), and answers like it: the text format or OpenMetrics
as the client's `Accept` asks (a malformed `Accept` gets the text format), gzip when
accepted, `name[]` filtering, and the same bearer token rule: `bearer_token=`, else
`GATEWAYZ_METRICS_BEARER_TOKEN`, else the file `GATEWAYZ_METRICS_BEARER_TOKEN_FILE` names,
stripped of surrounding whitespace.

From gunicorn, start it in the arbiter once it is ready (`gunicorn.conf.py`):

    from gatewayz_metrics.exporter import start_exporter

    def when_ready(server):
        start_exporter(port=9464)   # stops by itself when the arbiter exits

It only reads the directory. Dead workers are retired by gunicorn's `child_exit` hook
(`gunicorn_child_exit`), or by `MetricsApp` scrapes in the workers (uvicorn `--workers`).
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import gzip_accepted
from prometheus_client.registry import Collector

from gatewayz_metrics._exposition import (
    BEARER_TOKEN_ENV,
    BEARER_TOKEN_FILE_ENV,
    authorized,
    configured_token,
    negotiate,
)
from gatewayz_metrics._internal import log_once, logger
from gatewayz_metrics._mpread import FastMultiProcessReader, _Fixed
from gatewayz_metrics._multiprocess import restrict

__all__ = ["DEFAULT_PORT", "main", "make_server", "start_exporter"]

DEFAULT_PORT = 9464
"""The exporter's default port (OpenTelemetry's Prometheus exporter uses it too)."""
_MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Every answer depends on how the client negotiates: caches must key on it (as MetricsApp).
_VARY = ("Vary", "Accept, Accept-Encoding")


def make_server(
    port: int = DEFAULT_PORT,
    *,
    host: str = "127.0.0.1",
    directory: str | os.PathLike[str] | None = None,
    path: str = "/metrics",
    bearer_token: str | None = None,
) -> ThreadingHTTPServer:
    """An HTTP server (not yet serving) that answers `GET path` with the merged metrics.

    `directory` defaults to `PROMETHEUS_MULTIPROC_DIR`; `bearer_token` to
    `GATEWAYZ_METRICS_BEARER_TOKEN`, else to the file `GATEWAYZ_METRICS_BEARER_TOKEN_FILE`
    names (stripped, as `MetricsApp` does). Raises `ValueError` naming a bad value.
    """
    if directory is None:
        directory = os.environ.get(_MULTIPROC_DIR_ENV) or None
        if directory is None:
            raise ValueError(f"{_MULTIPROC_DIR_ENV} is not set and no directory was given")
    if not Path(directory).is_dir():
        raise ValueError(f"multiprocess directory {str(directory)!r} is not a directory")
    if not path.startswith("/"):
        raise ValueError(f"path must start with '/', got {path!r}")
    token = configured_token(bearer_token)
    registry = CollectorRegistry()  # the exporter's own faults, served with the metrics
    # Read only: should the exporter write a file of its own (a fault counted), it must still
    # never retire workers, which may live in another pid namespace (a sidecar container).
    reader = FastMultiProcessReader(directory, registry=registry, retire_dead_workers=False)
    handler = _handler(reader, path, token)
    return ThreadingHTTPServer((host, port), handler)


def start_exporter(
    port: int = DEFAULT_PORT,
    *,
    host: str = "127.0.0.1",
    directory: str | os.PathLike[str] | None = None,
    path: str = "/metrics",
    bearer_token: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start the exporter as a child process (gunicorn: in the arbiter's `when_ready` hook).

    The child exits when the process that started it does. The bearer token (`bearer_token=`,
    else the environment's, as `make_server` reads it) is checked here, so a bad one fails in
    the caller, and passed through the environment (`GATEWAYZ_METRICS_BEARER_TOKEN`), never
    the command line, where any local user could read it.
    """
    env = dict(os.environ)
    if bearer_token is not None:
        token = configured_token(bearer_token)
        assert token is not None  # a str argument is checked, never dropped
        env[BEARER_TOKEN_ENV] = token.decode()
        # The argument wins over a token file the parent's environment may name.
        env.pop(BEARER_TOKEN_FILE_ENV, None)
    else:
        configured_token(None)  # a blank or unreadable token fails here, not in the child
    if directory is not None:
        env[_MULTIPROC_DIR_ENV] = str(Path(directory).absolute())
    if not env.get(_MULTIPROC_DIR_ENV):
        raise ValueError(f"{_MULTIPROC_DIR_ENV} is not set and no directory was given")
    argv = [
        sys.executable, "-m", "gatewayz_metrics.exporter",
        "--port", str(port), "--host", host, "--path", path,
        "--parent", str(os.getpid()),
    ]  # fmt: skip
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m gatewayz_metrics.exporter`: serve until interrupted (or the parent exits)."""
    parser = argparse.ArgumentParser(
        prog="python -m gatewayz_metrics.exporter",
        description="Serve the merged metrics of all workers in PROMETHEUS_MULTIPROC_DIR.",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--path", default="/metrics", help="path served (default /metrics)")
    parser.add_argument("--directory", default=None, help="default: $PROMETHEUS_MULTIPROC_DIR")
    parser.add_argument("--parent", type=int, default=None, help="exit when this process exits")
    args = parser.parse_args(argv)
    try:
        server = make_server(args.port, host=args.host, directory=args.directory, path=args.path)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    if args.parent is not None:
        threading.Thread(target=_exit_with, args=(args.parent, server), daemon=True).start()
    host, port = server.server_address[:2]
    print(f"gatewayz-metrics exporter on http://{host!s}:{port}{args.path}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _exit_with(parent: int, server: ThreadingHTTPServer) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    server.shutdown()


def _handler(
    reader: FastMultiProcessReader, path: str, token: bytes | None
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "gatewayz-metrics-exporter"
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._serve(head=False)

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_POST(self) -> None:
            self._reply(405, b"Method Not Allowed\n", [("Allow", "GET, HEAD")], head=False)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a scrape every few seconds is not worth a log line

        def _serve(self, *, head: bool) -> None:
            url = urlsplit(self.path)
            if url.path != path:
                self._reply(404, b"Not Found\n", [], head=head)
                return
            header = self.headers.get("Authorization", "").encode("latin-1", "replace")
            if token is not None and not authorized(header, token):
                self._reply(
                    401,
                    b"Unauthorized\n",
                    [("WWW-Authenticate", 'Bearer realm="metrics"')],
                    head=head,
                )
                return
            # Never prometheus_client's choose_encoder directly: a malformed Accept makes it
            # raise, and the scraper would see a dropped connection instead of an answer.
            encoder, content_type = negotiate(self.headers.get("Accept", ""))
            names = tuple(sorted(set(parse_qs(url.query).get("name[]", ()))))
            try:
                body = reader.render(_restricted(encoder, names) if names else encoder)
            except Exception as exc:
                reason = f"metrics collection failed: {type(exc).__name__}"
                # Once per kind: a broken file fails every scrape, every few seconds.
                if log_once(("exporter", reason)):
                    logger.error(
                        "gatewayz-metrics exporter: %s (logged once per kind)", reason, exc_info=exc
                    )
                self._reply(500, reason.encode() + b"\n", [_VARY], head=head)
                return
            headers = [("Content-Type", content_type), _VARY]
            if gzip_accepted(self.headers.get("Accept-Encoding", "")):
                body = gzip.compress(body, compresslevel=6)
                headers.append(("Content-Encoding", "gzip"))
            self._reply(200, body, headers, head=head)

        def _reply(
            self, status: int, body: bytes, headers: list[tuple[str, str]], *, head: bool
        ) -> None:
            self.send_response(status)
            if not any(name == "Content-Type" for name, _ in headers):
                headers = [("Content-Type", "text/plain; charset=utf-8"), *headers]
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

    return Handler


def _restricted(
    encoder: Callable[[Collector], bytes], names: Sequence[str]
) -> Callable[[Collector], bytes]:
    """`encoder` over the samples called one of `names`, as `restricted_registry` keeps them."""
    wanted = set(names)

    def encode(source: Collector) -> bytes:
        # The one restriction rule of multiprocess mode (`_multiprocess.restrict`).
        return encoder(_Fixed(list(restrict(source.collect(), wanted))))

    return encode


if __name__ == "__main__":
    raise SystemExit(main())
