"""Which code `track_http_request` skips: only the request that the middleware of the same
registry is measuring, while its response is not complete. Work the request spawned,
other registries and requests made in-process to another wrapped app are recorded."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _asgi import RecordingSend, ScriptedReceive, client_for, http_scope
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from gatewayz_metrics._domain import GatewayMetrics
from gatewayz_metrics._http import STANDARD_METHODS
from gatewayz_metrics._middleware import PrometheusMiddleware

JOB = "/jobs/cleanup"


def samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every non-zero sample `name` of `registry`, by its sorted labels."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name and sample.value
    }


def job_count(registry: CollectorRegistry, status: str = "200") -> float | None:
    """`http_requests_total` of the background job's pseudo-request."""
    labels = {"method": "POST", "endpoint": JOB, "status_code": status}
    return registry.get_sample_value("http_requests_total", labels)


async def test_a_background_task_is_recorded_after_the_response(
    registry: CollectorRegistry,
) -> None:
    """A Starlette BackgroundTask runs after the response is complete: it is not the request
    the middleware measured, so its own track_http_request is recorded."""
    metrics = GatewayMetrics(registry)
    ran: list[bool] = []

    async def job() -> None:
        with metrics.track_http_request("POST", JOB) as request:
            ran.append(request.measured_by_middleware)

    async def home(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok", background=BackgroundTask(job))

    app = PrometheusMiddleware(Starlette(routes=[Route("/", home)]), registry=registry)
    async with client_for(app) as client:
        assert (await client.get("/")).status_code == 200
    assert ran == [False]
    assert job_count(registry) == 1
    labels = {"method": "GET", "endpoint": "/", "status_code": "200"}
    assert registry.get_sample_value("http_requests_total", labels) == 1


async def test_a_task_spawned_by_a_request_is_recorded_once_the_response_is_complete(
    registry: CollectorRegistry,
) -> None:
    """asyncio.create_task copies the request's context; once the response is sent, the
    task's own work is recorded."""
    metrics = GatewayMetrics(registry)
    response_sent = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def job() -> None:
        await response_sent.wait()
        with metrics.track_http_request("POST", JOB):
            pass

    async def home(request: Request) -> PlainTextResponse:
        tasks.append(asyncio.create_task(job()))
        return PlainTextResponse("ok")

    app = PrometheusMiddleware(Starlette(routes=[Route("/", home)]), registry=registry)
    async with client_for(app) as client:
        assert (await client.get("/")).status_code == 200
    response_sent.set()
    await asyncio.gather(*tasks)
    assert job_count(registry) == 1


async def test_another_registry_is_recorded_inside_a_measured_request(
    registry: CollectorRegistry,
) -> None:
    """The middleware measures on its registry; a GatewayMetrics on another registry is not
    measured by it and records its request."""
    other = CollectorRegistry()
    metrics = GatewayMetrics(other)

    async def home(request: Request) -> PlainTextResponse:
        with metrics.track_http_request("POST", JOB) as handle:
            assert not handle.measured_by_middleware
        return PlainTextResponse("ok")

    app = PrometheusMiddleware(Starlette(routes=[Route("/", home)]), registry=registry)
    async with client_for(app) as client:
        assert (await client.get("/")).status_code == 200
    assert job_count(other) == 1
    assert job_count(registry) is None


async def test_an_in_process_call_to_another_wrapped_app_is_recorded(
    registry: CollectorRegistry,
) -> None:
    """A gateway calling its own backend app through httpx.ASGITransport, both wrapped on one
    registry: the inner request is a different request and is recorded, once."""

    async def model(request: Request) -> JSONResponse:
        return JSONResponse({"model": request.path_params["name"]})

    backend = PrometheusMiddleware(
        Starlette(routes=[Route("/models/{name}", model)]), registry=registry
    )

    async def proxy(request: Request) -> JSONResponse:
        async with client_for(backend) as inner:
            answer = await inner.get("/models/gpt")
        return JSONResponse(answer.json(), status_code=answer.status_code)

    gateway = PrometheusMiddleware(
        Starlette(routes=[Route("/v1/models", proxy)]), registry=registry
    )
    async with client_for(gateway) as client:
        assert (await client.get("/v1/models")).json() == {"model": "gpt"}
    assert samples(registry, "http_requests_total") == {
        (("endpoint", "/v1/models"), ("method", "GET"), ("status_code", "200")): 1.0,
        (("endpoint", "/models/{name}"), ("method", "GET"), ("status_code", "200")): 1.0,
    }


async def test_a_middleware_added_twice_still_counts_a_request_once_when_a_layer_copies_the_scope(
    registry: CollectorRegistry,
) -> None:
    """A layer between the two middlewares that copies the scope (as many do) does not make
    the same request look new: it is counted once."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("ok")(scope, receive, send)

    def copying(inner: Any) -> Any:
        async def layer(scope: Any, receive: Any, send: Any) -> None:
            await inner({**scope, "copied": True}, receive, send)

        return layer

    def resolver(scope: Any) -> str:
        return "/ping"

    stacked = PrometheusMiddleware(
        copying(PrometheusMiddleware(app, registry=registry, route_resolver=resolver)),
        registry=registry,
        route_resolver=resolver,
    )
    async with client_for(stacked) as client:
        assert (await client.get("/ping")).status_code == 200
    labels = {"method": "GET", "endpoint": "/ping", "status_code": "200"}
    assert registry.get_sample_value("http_requests_total", labels) == 1


@pytest.mark.parametrize("method", ["get", "Get", "GET", "PATCH", "BREW", "post"])
async def test_the_middleware_and_track_http_request_label_a_method_alike(
    method: str,
) -> None:
    """One rule for the method label in both places (case-sensitive, as RFC 9110 and the
    OpenTelemetry HTTP conventions have it)."""
    by_middleware = CollectorRegistry()
    by_helper = CollectorRegistry()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("ok")(scope, receive, send)

    middleware = PrometheusMiddleware(app, registry=by_middleware, route_resolver=lambda scope: JOB)
    send = RecordingSend()
    await middleware(http_scope(JOB, method=method), ScriptedReceive(), send)
    assert send.status == 200
    with GatewayMetrics(by_helper).track_http_request(method, JOB):
        pass

    def labels(registry: CollectorRegistry) -> set[str]:
        return {dict(key)["method"] for key in samples(registry, "http_requests_total")}

    assert labels(by_middleware) == labels(by_helper) == {STANDARD_METHODS.get(method, "OTHER")}
