"""Latency of ordinary requests while `/metrics` of a large registry is being scraped.

Three processes per exposer, all on 127.0.0.1: a uvicorn server (a `/ping` route and a
registry of N series), a ping client sending `GET /ping` on a fixed schedule, and a
scraper fetching `/metrics`, then idling as long as the scrape took. The ping client
measures each request from the moment it was *due*, not from when it was sent, so a
server that stalls is charged for every request that queued behind the stall (no
coordinated omission). "During scrape" are the pings due while a scrape was in flight;
"quiet" is a phase with no scraper at all.

Exposers: `gatewayz` (PrometheusMiddleware answering `/metrics` with its MetricsApp) and
`make_asgi_app` (prometheus_client's ASGI app mounted at `/metrics`, with our middleware
still in place but not serving metrics), so the two servers differ only in the exposition.
"""

from __future__ import annotations

import http.client
import math
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
SCRAPE_PATHS = {"gatewayz": "/metrics", "make_asgi_app": "/metrics/"}
# What Prometheus sends besides Accept; both exposers then gzip, as they do in production.
_SCRAPE_HEADERS = {"Accept-Encoding": "gzip", "User-Agent": "Prometheus/3 (benchmark)"}
_STARTUP_TIMEOUT = 120.0
_CONNECT_TIMEOUT = 60.0
_MIN_IDLE = 0.05


def serve(exposer: str, series: int, port: int) -> None:
    """Run the server until terminated (the `server` job of `benchmarks._worker`)."""
    import uvicorn
    from prometheus_client import make_asgi_app
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import BaseRoute, Mount, Route

    from benchmarks._exposition import build_registry
    from gatewayz_metrics import PrometheusMiddleware

    registry, _ = build_registry(series)

    async def pong(request: Request) -> PlainTextResponse:
        return PlainTextResponse("pong")

    routes: list[BaseRoute] = [Route("/ping", pong)]
    if exposer == "gatewayz":
        app = Starlette(routes=routes)
        app.add_middleware(PrometheusMiddleware, registry=registry)
    else:
        routes.append(Mount("/metrics", make_asgi_app(registry=registry)))
        app = Starlette(routes=routes)
        app.add_middleware(PrometheusMiddleware, registry=registry, metrics_path=None)
    uvicorn.run(app, host=HOST, port=port, log_level="warning", access_log=False, lifespan="off")


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: a value that was actually observed."""
    ordered = sorted(values)
    rank = max(math.ceil(pct / 100 * len(ordered)), 1)
    return ordered[rank - 1]


def _connect(port: int) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(HOST, port, timeout=_CONNECT_TIMEOUT)


def ping(port: int, rate: float, seconds: float) -> dict[str, Any]:
    """`GET /ping` every 1/rate seconds on one keep-alive connection (the `ping` job).

    Returns (due time, latency) of every request; times are `time.monotonic()`, one clock
    for all processes of the machine, so they line up with the scraper's windows.
    """
    count = max(int(rate * seconds), 1)
    interval = 1.0 / rate
    connection = _connect(port)
    samples: list[tuple[float, float]] = []
    errors = 0
    first_due = time.monotonic() + 0.01
    for index in range(count):
        due = first_due + index * interval
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            connection.request("GET", "/ping")
            response = connection.getresponse()
            response.read()
            errors += response.status != 200
        except (OSError, http.client.HTTPException):
            errors += 1
            connection.close()
            connection = _connect(port)
        samples.append((due, time.monotonic() - due))
    connection.close()
    return {"errors": errors, "samples": samples}


def scrape_loop(port: int, path: str, seconds: float, accept: str = "") -> dict[str, Any]:
    """Scrape `path` for `seconds` (at least once), idling after each scrape as long as the
    scrape took, so that the server gets to drain what queued up (the `scrape` job).

    `accept` is the Accept header sent ("": none, which asks for the text format)."""
    headers = {**_SCRAPE_HEADERS, **({"Accept": accept} if accept else {})}
    connection = _connect(port)
    deadline = time.monotonic() + seconds
    windows: list[tuple[float, float]] = []
    size = 0
    content_type = ""
    while not windows or time.monotonic() < deadline:
        start = time.monotonic()
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        body = response.read()
        end = time.monotonic()
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}")
        content_type = response.getheader("Content-Type", "")
        windows.append((start, end))
        size = len(body)
        time.sleep(min(max(end - start, _MIN_IDLE), max(deadline - time.monotonic(), 0.0)))
    connection.close()
    return {"windows": windows, "gzip_bytes": size, "content_type": content_type}


def summarize(
    samples: Sequence[Sequence[float]], windows: Sequence[Sequence[float]] = ()
) -> dict[str, Any]:
    """p50/p99 of the pings, only of those due while a scrape was in flight if `windows`."""
    if windows:
        latencies = [
            latency
            for due, latency in samples
            if any(start <= due <= end for start, end in windows)
        ]
    else:
        latencies = [latency for _, latency in samples]
    if not latencies:
        return {"requests": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {
        "requests": len(latencies),
        "p50_ms": percentile(latencies, 50) * 1e3,
        "p99_ms": percentile(latencies, 99) * 1e3,
        "max_ms": max(latencies) * 1e3,
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _worker(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks._worker", *args]


def _result(stdout: str) -> dict[str, Any]:
    from benchmarks._worker import parse_result

    return parse_result(stdout)


def _ping_job(port: int, rate: float, seconds: float, cwd: Path) -> dict[str, Any]:
    command = _worker("ping", "--port", str(port), "--rate", str(rate), "--seconds", str(seconds))
    done = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=seconds * 10 + 120, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"the ping client failed:\n{done.stderr[-2000:]}")
    return _result(done.stdout)


def _wait_ready(server: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited early:\n{log.read_text()[-2000:]}")
        connection = http.client.HTTPConnection(HOST, port, timeout=2)
        try:
            connection.request("GET", "/ping")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    raise RuntimeError(f"the server did not answer /ping within {_STARTUP_TIMEOUT:.0f} s")


def measure_scrape(
    exposer: str, series: int, seconds: float, rate: float, cwd: Path, accept: str = ""
) -> dict[str, Any]:
    """/ping latency with no scraper, then with one sending `accept`, for one exposer (see
    the module doc)."""
    port = _free_port()
    path = SCRAPE_PATHS[exposer]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with log.open("wb") as log_file:
            server = subprocess.Popen(
                _worker("server", exposer, "--series", str(series), "--port", str(port)),
                cwd=cwd,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_ready(server, port, log)
            # Warm: the first scrape starts the render thread and fills caches; the first
            # pings bind the label children of /ping.
            warm = scrape_loop(port, path, 0.0, accept)["windows"]
            ping(port, 200.0, 0.25)
            quiet_pings = _ping_job(port, rate, seconds, cwd)
            scraper = subprocess.Popen(
                _worker(
                    "scrape",
                    *("--port", str(port), "--path", path, "--seconds", str(seconds)),
                    *("--accept", accept),
                ),
                cwd=cwd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                # Give the scraper time to start its first scrape before the pings begin.
                time.sleep(0.3)
                busy_pings = _ping_job(port, rate, seconds, cwd)
                scraped, scrape_errors = scraper.communicate(timeout=seconds * 10 + 120)
            finally:
                if scraper.poll() is None:
                    scraper.kill()
                    scraper.wait()
            if scraper.returncode != 0:
                raise RuntimeError(f"the scraper failed:\n{scrape_errors[-2000:]}")
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    scrapes = _result(scraped)
    windows = scrapes["windows"]
    return {
        "exposer": exposer,
        "accept": accept,
        "content_type": scrapes["content_type"],
        "series": series,
        "path": path,
        "rate": rate,
        "seconds": seconds,
        "first_scrape_ms": (warm[0][1] - warm[0][0]) * 1e3,
        "scrapes": len(windows),
        "scrape_median_ms": statistics.median(end - start for start, end in windows) * 1e3,
        "gzip_bytes": scrapes["gzip_bytes"],
        "errors": quiet_pings["errors"] + busy_pings["errors"],
        "quiet": summarize(quiet_pings["samples"]),
        "during_scrape": summarize(busy_pings["samples"], windows),
    }
