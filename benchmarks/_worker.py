"""One measurement in a fresh process: `python -m benchmarks._worker KIND [options]`.

A fresh interpreter per measurement keeps variants from sharing warm caches, the global
registry or allocator state. The result is one JSON line on stdout, prefixed with
`RESULT ` so that anything a library prints cannot be mistaken for it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
from time import perf_counter_ns
from typing import Any

from starlette.types import ASGIApp, Message

RESULT_PREFIX = "RESULT "
_DISTINCT_PATHS = 64  # requests cycle over /items/0 .. /items/63, one route template


def _scope(item: int) -> dict[str, Any]:
    """What uvicorn hands an application for `GET /items/{item}` on a keep-alive connection."""
    path = f"/items/{item}"
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 51000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"gatewayz-metrics-benchmark"),
            (b"accept", b"*/*"),
        ],
    }


_REQUEST: Message = {"type": "http.request", "body": b"", "more_body": False}


async def _receive() -> Message:
    return _REQUEST


async def _discard(message: Message) -> None:
    return None


async def _check(app: ASGIApp, scope: dict[str, Any]) -> None:
    """One request whose answer is checked: a variant that broke the app must not be timed."""
    sent: list[Message] = []

    async def record(message: Message) -> None:
        sent.append(message)

    await app(dict(scope), _receive, record)
    status = sent[0].get("status") if sent else None
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    expected = f"item {scope['path'].rsplit('/', 1)[1]}".encode()
    if status != 200 or body != expected:
        raise RuntimeError(f"the app answered {status} {body!r}, expected 200 {expected!r}")


async def _batch(app: ASGIApp, scopes: list[dict[str, Any]], requests: int) -> float:
    mask = len(scopes) - 1
    start = perf_counter_ns()
    for i in range(requests):
        # A fresh scope per request: Starlette writes the route and app into it.
        await app(dict(scopes[i & mask]), _receive, _discard)
    return (perf_counter_ns() - start) / requests


async def _drive(
    subject: ASGIApp, reference: ASGIApp, requests: int, batches: int, warmup: int
) -> tuple[list[float], list[float]]:
    """ns/request of `subject` and of the bare `reference`, in alternating batches.

    The machine drifts on a scale of seconds (frequency, neighbours); batches of a few
    tens of milliseconds, alternated ABBA, put both sides under the same drift, so their
    per-batch difference is the overhead with the drift cancelled.
    """
    scopes = [_scope(i) for i in range(_DISTINCT_PATHS)]
    for app in (subject, reference):
        await _check(app, scopes[7])
        await _batch(app, scopes, warmup)
    per_batch = max(requests // batches, 1)
    subject_ns: list[float] = []
    reference_ns: list[float] = []
    gc.collect()
    for index in range(batches):
        if index % 2:
            reference_ns.append(await _batch(reference, scopes, per_batch))
            subject_ns.append(await _batch(subject, scopes, per_batch))
        else:
            subject_ns.append(await _batch(subject, scopes, per_batch))
            reference_ns.append(await _batch(reference, scopes, per_batch))
    return subject_ns, reference_ns


def middleware(variant_name: str, requests: int, batches: int, warmup: int) -> dict[str, Any]:
    """ns per in-process request through the app instrumented by `variant_name`, and its
    overhead over a bare app timed in the same process in alternating batches."""
    from benchmarks._variants import BY_NAME, NOT_INSTALLED, make_app

    variant = BY_NAME[variant_name]
    app = make_app()
    try:
        recorded = variant.install(app)
    except ImportError as exc:
        return {"variant": variant_name, "status": NOT_INSTALLED, "error": str(exc)}
    subject_ns, reference_ns = asyncio.run(_drive(app, make_app(), requests, batches, warmup))
    expected = 1 + warmup + max(requests // batches, 1) * batches
    got = recorded()
    return {
        "variant": variant_name,
        "status": "ok",
        "ns_per_request": statistics.median(subject_ns),
        "bare_ns_per_request": statistics.median(reference_ns),
        "overhead_ns": statistics.median(
            s - r for s, r in zip(subject_ns, reference_ns, strict=True)
        ),
        "batches_ns": subject_ns,
        "bare_batches_ns": reference_ns,
        "requests": expected,
        "recorded": got,
        # The bare app records nothing by design.
        "recorded_ok": variant_name == "bare" or got == expected,
    }


def parse_result(stdout: str) -> dict[str, Any]:
    """The result a worker printed, from its whole stdout."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    raise RuntimeError(f"the worker printed no result line:\n{stdout[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._worker")
    jobs = parser.add_subparsers(dest="job", required=True)
    mw = jobs.add_parser("middleware")
    mw.add_argument("variant")
    mw.add_argument("--requests", type=int, required=True)
    mw.add_argument("--batches", type=int, default=20)
    mw.add_argument("--warmup", type=int, default=2000)
    dom = jobs.add_parser("domain")
    dom.add_argument("--calls", type=int, required=True)
    dom.add_argument("--batches", type=int, default=10)
    expo = jobs.add_parser("exposition")
    expo.add_argument("--series", type=int, required=True)
    expo.add_argument("--repeats", type=int, required=True)
    om = jobs.add_parser("openmetrics")
    om.add_argument("--series", type=int, required=True)
    om.add_argument("--repeats", type=int, required=True)
    srv = jobs.add_parser("server")
    srv.add_argument("exposer", choices=("gatewayz", "make_asgi_app"))
    srv.add_argument("--series", type=int, required=True)
    srv.add_argument("--port", type=int, required=True)
    pinger = jobs.add_parser("ping")
    pinger.add_argument("--port", type=int, required=True)
    pinger.add_argument("--rate", type=float, required=True)
    pinger.add_argument("--seconds", type=float, required=True)
    scraper = jobs.add_parser("scrape")
    scraper.add_argument("--port", type=int, required=True)
    scraper.add_argument("--path", required=True)
    scraper.add_argument("--seconds", type=float, required=True)
    scraper.add_argument("--accept", default="", help="the Accept header ('': none)")
    args = parser.parse_args(argv)

    result: dict[str, Any]
    if args.job == "middleware":
        result = middleware(args.variant, args.requests, args.batches, args.warmup)
    elif args.job == "domain":
        from benchmarks._domain_helpers import measure

        result = measure(args.calls, args.batches)
    elif args.job == "exposition":
        from benchmarks._exposition import measure_exposition

        result = measure_exposition(args.series, args.repeats)
    elif args.job == "openmetrics":
        from benchmarks._exposition import measure_openmetrics

        result = measure_openmetrics(args.series, args.repeats)
    elif args.job == "server":
        from benchmarks._scrape import serve

        serve(args.exposer, args.series, args.port)
        return 0
    elif args.job == "ping":
        from benchmarks._scrape import ping

        result = ping(args.port, args.rate, args.seconds)
    else:
        from benchmarks._scrape import scrape_loop

        result = scrape_loop(args.port, args.path, args.seconds, args.accept)
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
