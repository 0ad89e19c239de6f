"""The same small application written for Starlette, FastAPI and Quart, instrumented the
documented way for each, so framework-independent behaviour is tested on all three."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse as FastAPIText
from fastapi.responses import StreamingResponse as FastAPIStreaming
from prometheus_client import CollectorRegistry
from quart import Quart
from quart import request as quart_request
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route

from gatewayz_metrics import PrometheusMiddleware

FRAMEWORKS = ["starlette", "fastapi", "quart"]
"""Parametrize with `pytest.mark.parametrize("framework", FRAMEWORKS, ids=FRAMEWORKS)`."""

STREAM_CHUNKS = (b"a" * 100, b"b" * 200, b"c" * 300)
"""What `/stream` sends, one chunk per body message."""


class BoomError(Exception):
    """What `/boom` raises."""


async def _chunks(delay: float) -> AsyncIterator[bytes]:
    for chunk in STREAM_CHUNKS:
        await asyncio.sleep(delay)
        yield chunk


def build_app(
    framework: str, registry: CollectorRegistry, *, stream_delay: float = 0.0, **options: Any
) -> Any:
    """The test application on `framework`, with the middleware on `registry`.

    Routes: `GET /ping`, `GET /items/{item_id}` (an int), `POST /echo` (answers the body
    length), `GET /stream` (streams STREAM_CHUNKS, `stream_delay` seconds before each) and
    `GET /boom` (raises `BoomError`).
    """
    if framework == "starlette":
        return _starlette(registry, stream_delay, options)
    if framework == "fastapi":
        return _fastapi(registry, stream_delay, options)
    if framework == "quart":
        return _quart(registry, stream_delay, options)
    raise ValueError(f"unknown framework {framework!r}")


def _starlette(registry: CollectorRegistry, delay: float, options: dict[str, Any]) -> Starlette:
    async def ping(request: StarletteRequest) -> PlainTextResponse:
        return PlainTextResponse("pong")

    async def item(request: StarletteRequest) -> PlainTextResponse:
        return PlainTextResponse(str(request.path_params["item_id"]))

    async def echo(request: StarletteRequest) -> PlainTextResponse:
        return PlainTextResponse(str(len(await request.body())))

    async def stream(request: StarletteRequest) -> StreamingResponse:
        return StreamingResponse(_chunks(delay), media_type="text/plain")

    async def boom(request: StarletteRequest) -> PlainTextResponse:
        raise BoomError("boom")

    app = Starlette(
        routes=[
            Route("/ping", ping),
            Route("/items/{item_id:int}", item),
            Route("/echo", echo, methods=["POST"]),
            Route("/stream", stream),
            Route("/boom", boom),
        ]
    )
    app.add_middleware(PrometheusMiddleware, registry=registry, **options)
    return app


def _fastapi(registry: CollectorRegistry, delay: float, options: dict[str, Any]) -> FastAPI:
    app = FastAPI()

    @app.get("/ping", response_class=FastAPIText)
    async def ping() -> str:
        return "pong"

    @app.get("/items/{item_id}", response_class=FastAPIText)
    async def item(item_id: int) -> str:
        return str(item_id)

    @app.post("/echo", response_class=FastAPIText)
    async def echo(request: Request) -> str:
        return str(len(await request.body()))

    @app.get("/stream")
    async def stream() -> FastAPIStreaming:
        return FastAPIStreaming(_chunks(delay), media_type="text/plain")

    @app.get("/boom")
    async def boom() -> str:
        raise BoomError("boom")

    app.add_middleware(PrometheusMiddleware, registry=registry, **options)
    return app


def _quart(registry: CollectorRegistry, delay: float, options: dict[str, Any]) -> Quart:
    app = Quart(__name__)

    @app.get("/ping")
    async def ping() -> str:
        return "pong"

    @app.get("/items/<int:item_id>")
    async def item(item_id: int) -> str:
        return str(item_id)

    @app.post("/echo")
    async def echo() -> str:
        return str(len(await quart_request.get_data()))

    @app.get("/stream")
    async def stream() -> tuple[AsyncIterator[bytes], int, dict[str, str]]:
        return _chunks(delay), 200, {"content-type": "text/plain"}

    @app.get("/boom")
    async def boom() -> str:
        raise BoomError("boom")

    app.asgi_app = PrometheusMiddleware(app.asgi_app, registry=registry, **options)  # type: ignore[assignment, arg-type]
    return app
