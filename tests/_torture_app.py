"""The application of the load torture test, served by uvicorn in a process of its own.

`python tests/_torture_app.py PORT` serves it on 127.0.0.1:PORT with a fresh registry.
Routes: `/ping`, `/items/{item_id}`, `/sse` (server-sent events: `?events=N&delay=SECONDS`),
`/sse-broken` (one event, then the body iterator raises), `/status/{code}` (answers `code`),
`/boom` (raises before answering), `/metrics` (a mounted `MetricsApp`) and `/_stats` (the
`MetricsApp`'s scrape and render counters as JSON, excluded from the metrics).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import uvicorn
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from gatewayz_metrics import MetricsApp, PrometheusMiddleware

STATS_PATH = "/_stats"


class BoomError(Exception):
    """What `/boom` and `/sse-broken` raise."""


async def ping(request: Request) -> PlainTextResponse:
    return PlainTextResponse("pong")


async def item(request: Request) -> PlainTextResponse:
    return PlainTextResponse(str(request.path_params["item_id"]))


async def _events(count: int, delay: float) -> AsyncIterator[bytes]:
    for number in range(count):
        if delay:
            await asyncio.sleep(delay)
        yield f"id: {number}\ndata: event {number}\n\n".encode()


async def sse(request: Request) -> StreamingResponse:
    count = int(request.query_params.get("events", "3"))
    delay = float(request.query_params.get("delay", "0"))
    return StreamingResponse(_events(count, delay), media_type="text/event-stream")


async def _broken_events() -> AsyncIterator[bytes]:
    yield b"data: first\n\n"
    raise BoomError("the stream broke after its first event")


async def sse_broken(request: Request) -> StreamingResponse:
    return StreamingResponse(_broken_events(), media_type="text/event-stream")


async def status(request: Request) -> Response:
    return Response(status_code=request.path_params["code"])


async def boom(request: Request) -> Response:
    raise BoomError("boom")


def build() -> tuple[Starlette, MetricsApp]:
    """The application on a fresh registry, and its `MetricsApp`."""
    registry = CollectorRegistry()
    metrics = MetricsApp(registry)

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse({"scrapes": metrics.scrapes, "renders": metrics.renders})

    app = Starlette(
        routes=[
            Route("/ping", ping),
            Route("/items/{item_id:int}", item),
            Route("/sse", sse),
            Route("/sse-broken", sse_broken),
            Route("/status/{code:int}", status),
            Route("/boom", boom),
            Route(STATS_PATH, stats),
            Mount("/metrics", metrics),
        ]
    )
    app.add_middleware(PrometheusMiddleware, registry=registry, exclude_paths=[STATS_PATH])
    return app, metrics


app, metrics = build()

if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        http="h11",
        loop="asyncio",
        lifespan="off",
        access_log=False,
        # uvicorn's own error log would print a traceback per /boom; our logger
        # ("gatewayz_metrics") is left alone so that an internal error reaches stderr.
        log_level="critical",
        backlog=2048,
        # Idle clients of the test keep their connection, as Prometheus does between scrapes.
        timeout_keep_alive=120,
    )
