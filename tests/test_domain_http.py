"""`track_http_request`: records requests handled outside the middleware, and never counts a
request the middleware already measures a second time."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from quart import Quart
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gatewayz_metrics._domain import GatewayMetrics, HTTPRequestHandle
from gatewayz_metrics._http import Measurement, request_measured
from gatewayz_metrics._middleware import PrometheusMiddleware

ENDPOINT = "/v1/chat/completions"


def requests_total(registry: CollectorRegistry, status: str, method: str = "POST") -> float | None:
    """http_requests_total of the chat endpoint for one status code."""
    labels = {"method": method, "endpoint": ENDPOINT, "status_code": status}
    return registry.get_sample_value("http_requests_total", labels)


@pytest.fixture
def metrics(registry: CollectorRegistry) -> GatewayMetrics:
    """Domain metrics on the test's own registry."""
    return GatewayMetrics(registry)


def test_outside_the_middleware_a_normal_end_is_200(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    """A block that ends normally is a 200 with its duration."""
    with metrics.track_http_request("POST", ENDPOINT) as request:
        assert not request.measured_by_middleware
    assert requests_total(registry, "200") == 1
    labels = {"method": "POST", "endpoint": ENDPOINT}
    assert registry.get_sample_value("http_request_duration_seconds_count", labels) == 1


def test_the_caller_can_set_the_status(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    """set_status() chooses the status of a block that ends normally."""
    with metrics.track_http_request("POST", ENDPOINT) as request:
        request.set_status(429)
    assert requests_total(registry, "429") == 1
    assert requests_total(registry, "200") is None


def test_an_escaping_exception_is_a_500_and_re_raised(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    """Any exception escaping the block is recorded as 500 and propagates unchanged."""
    failure = RuntimeError("handler bug")

    def handler() -> None:
        with metrics.track_http_request("POST", ENDPOINT) as request:
            request.set_status(200)
            raise failure

    with pytest.raises(RuntimeError) as raised:
        handler()
    assert raised.value is failure
    assert requests_total(registry, "500") == 1
    assert requests_total(registry, "200") is None


def test_an_http_exception_records_the_status_the_client_gets(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    """An exception carrying `status_code` (Starlette/FastAPI HTTPException) is that status."""
    with pytest.raises(HTTPException), metrics.track_http_request("POST", ENDPOINT):
        raise HTTPException(status_code=402, detail="out of credits")
    assert requests_total(registry, "402") == 1


@pytest.mark.parametrize(
    ("method", "recorded"),
    [("post", "OTHER"), ("PATCH", "PATCH"), ("BREW", "OTHER")],
    ids=["lower-case", "standard", "non-standard"],
)
def test_methods_are_normalised_like_the_middleware_does(
    registry: CollectorRegistry, metrics: GatewayMetrics, method: str, recorded: str
) -> None:
    """Methods are case-sensitive (RFC 9110, as in the middleware): non-standard ones,
    `post` included, become OTHER (bounded label)."""
    with metrics.track_http_request(method, ENDPOINT):
        pass
    assert requests_total(registry, "200", method=recorded) == 1


def test_nothing_is_recorded_while_the_middleware_measures(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    """While the middleware of the same registry measures the request (response not
    complete), the helper stays silent."""
    token = request_measured.set((Measurement(registry),))
    try:
        with metrics.track_http_request("POST", ENDPOINT) as request:
            assert request.measured_by_middleware
    finally:
        request_measured.reset(token)
    assert requests_total(registry, "200") is None


async def test_decorator_form_outside_the_middleware(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    """As a decorator on an `async def` handler outside any middleware."""

    @metrics.track_http_request("POST", ENDPOINT)
    async def handler() -> str:
        await asyncio.sleep(0)
        return "ok"

    assert await handler() == "ok"
    assert requests_total(registry, "200") == 1


def _starlette(route: Callable[[], Any]) -> Any:
    async def chat(request: Request) -> JSONResponse:
        return JSONResponse(await route())

    return Starlette(routes=[Route(ENDPOINT, chat, methods=["POST"])])


def _fastapi(route: Callable[[], Any]) -> Any:
    app = FastAPI()

    @app.post(ENDPOINT)
    async def chat() -> Any:
        return await route()

    return app


def _quart(route: Callable[[], Any]) -> Any:
    app = Quart(__name__)

    @app.post(ENDPOINT)
    async def chat() -> Any:
        return await route()

    return app


@pytest.mark.parametrize(
    "framework", [_starlette, _fastapi, _quart], ids=["starlette", "fastapi", "quart"]
)
async def test_inside_the_middleware_the_request_is_counted_once(
    registry: CollectorRegistry,
    metrics: GatewayMetrics,
    framework: Callable[[Callable[[], Any]], Any],
) -> None:
    """The source document wraps its handler in track_http_request under the middleware:
    the request is still counted exactly once."""
    handles: list[HTTPRequestHandle] = []

    async def route() -> dict[str, str]:
        with metrics.track_http_request("POST", ENDPOINT) as request:
            handles.append(request)
            return {"ok": "yes"}

    app = framework(route)
    if isinstance(app, Quart):
        app.asgi_app = PrometheusMiddleware(app.asgi_app, registry=registry)  # type: ignore[method-assign,assignment,arg-type]
        asgi: Any = app
    else:
        asgi = PrometheusMiddleware(app, registry=registry)
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.post(ENDPOINT)
    assert response.status_code == 200
    assert [h.measured_by_middleware for h in handles] == [True]
    counted = [
        sample
        for family in registry.collect()
        if family.name == "http_requests"
        for sample in family.samples
        if sample.name == "http_requests_total" and sample.value
    ]
    assert [(s.labels["status_code"], s.value) for s in counted] == [("200", 1.0)]
