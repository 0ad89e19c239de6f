"""`PrometheusMiddleware` in Starlette, FastAPI and Quart applications: adoption, the metric
families, route templates, bounded labels, timing, exclusions, self-protection, registries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from _apps import FRAMEWORKS, STREAM_CHUNKS, build_app
from _asgi import RecordingSend, ScriptedReceive, client_for, http_scope
from fastapi import APIRouter, FastAPI
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.utils import floatToGoString
from quart import Blueprint, Quart
from quart import websocket as quart_websocket
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, Router, WebSocketRoute
from starlette.websockets import WebSocket

from gatewayz_metrics import (
    DEFAULT_DURATION_BUCKETS,
    OTHER_METHOD,
    UNMATCHED_ENDPOINT,
    PrometheusMiddleware,
    _internal,
)
from gatewayz_metrics._http import HTTPMetrics
from gatewayz_metrics._types import Message

frameworks = pytest.mark.parametrize("framework", FRAMEWORKS, ids=FRAMEWORKS)


def requests_total(
    registry: CollectorRegistry, endpoint: str, status: str = "200", method: str = "GET"
) -> float | None:
    """`http_requests_total` of one (method, endpoint, status_code)."""
    labels = {"method": method, "endpoint": endpoint, "status_code": status}
    return registry.get_sample_value("http_requests_total", labels)


def duration(registry: CollectorRegistry, endpoint: str, suffix: str, method: str = "GET") -> float:
    """`http_request_duration_seconds_<suffix>` of (method, endpoint), 0 when absent."""
    labels = {"method": method, "endpoint": endpoint}
    return registry.get_sample_value(f"http_request_duration_seconds_{suffix}", labels) or 0.0


def endpoints(registry: CollectorRegistry) -> set[str]:
    """Every `endpoint` label value of `http_requests_total`."""
    return {
        sample.labels["endpoint"]
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "http_requests_total"
    }


def series_count(registry: CollectorRegistry) -> int:
    """How many samples the registry exposes, all families together."""
    return sum(len(family.samples) for family in registry.collect())


async def ping(request: Request) -> PlainTextResponse:
    """A Starlette endpoint answering `pong`."""
    return PlainTextResponse("pong")


async def noop_app(scope: Any, receive: Any, send: Any) -> None:
    """An ASGI app for tests that only construct middlewares."""


async def chunked_body() -> AsyncIterator[bytes]:
    """A request body sent in three chunks, without Content-Length."""
    for _ in range(3):
        yield b"x" * 10


# --- adoption ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["starlette", "fastapi"], ids=["starlette", "fastapi"])
async def test_add_middleware_without_arguments_records_on_the_default_registry(kind: str) -> None:
    """`app.add_middleware(PrometheusMiddleware)` alone counts on prometheus_client's registry."""
    path = f"/adoption-{uuid.uuid4().hex}"
    app: Starlette
    if kind == "starlette":
        app = Starlette(routes=[Route(path, ping)])
    else:
        app = FastAPI()
        app.add_api_route(path, ping)
    app.add_middleware(PrometheusMiddleware)
    before = requests_total(REGISTRY, path) or 0.0
    async with client_for(app) as client:
        assert (await client.get(path)).status_code == 200
    assert requests_total(REGISTRY, path) == before + 1


async def test_quart_one_liner_records_on_the_default_registry() -> None:
    """`app.asgi_app = PrometheusMiddleware(app.asgi_app)` instruments a Quart app."""
    path = f"/adoption-{uuid.uuid4().hex}"
    app = Quart(__name__)
    app.add_url_rule(path, "adoption", lambda: "pong")
    app.asgi_app = PrometheusMiddleware(app.asgi_app)  # type: ignore[assignment, arg-type]
    before = requests_total(REGISTRY, path) or 0.0
    async with client_for(app) as client:
        assert (await client.get(path)).status_code == 200
    assert requests_total(REGISTRY, path) == before + 1


async def test_any_asgi_app_is_instrumented_by_wrapping_it(registry: CollectorRegistry) -> None:
    """`PrometheusMiddleware(app)` measures any ASGI app; `route_resolver=` names its routes."""

    async def bare(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with client_for(PrometheusMiddleware(bare, registry=registry)) as client:
        assert (await client.get("/anything/123")).status_code == 204
    assert requests_total(registry, UNMATCHED_ENDPOINT, "204") == 1

    named = PrometheusMiddleware(
        bare, registry=registry, route_resolver=lambda scope: "/anything/{id}"
    )
    async with client_for(named) as client:
        await client.get("/anything/456")
    assert requests_total(registry, "/anything/{id}", "204") == 1


# --- the metric families -----------------------------------------------------------


@frameworks
async def test_requests_total_is_labelled_by_method_endpoint_and_status(
    framework: str, registry: CollectorRegistry
) -> None:
    """`http_requests_total{method, endpoint, status_code}` counts each request once."""
    async with client_for(build_app(framework, registry)) as client:
        await client.get("/ping")
        await client.get("/ping")
        await client.post("/echo", content=b"hello")
    assert requests_total(registry, "/ping") == 2
    assert requests_total(registry, "/echo", method="POST") == 1


@frameworks
async def test_duration_histogram_has_the_documented_buckets(
    framework: str, registry: CollectorRegistry
) -> None:
    """`http_request_duration_seconds{method, endpoint}` uses DEFAULT_DURATION_BUCKETS."""
    async with client_for(build_app(framework, registry)) as client:
        await client.get("/ping")
    bounds = {
        sample.labels["le"]
        for family in registry.collect()
        for sample in family.samples
        if sample.name == "http_request_duration_seconds_bucket"
    }
    documented = {floatToGoString(b) for b in DEFAULT_DURATION_BUCKETS}  # type: ignore[no-untyped-call]
    assert bounds == documented | {"+Inf"}
    assert duration(registry, "/ping", "count") == 1
    labels = {"method": "GET", "endpoint": "/ping", "le": "+Inf"}
    assert registry.get_sample_value("http_request_duration_seconds_bucket", labels) == 1


@frameworks
async def test_duration_buckets_are_configurable(
    framework: str, registry: CollectorRegistry
) -> None:
    """`duration_buckets=` replaces the default bucket bounds."""
    app = build_app(framework, registry, duration_buckets=[0.1, 0.2, 5.0])
    async with client_for(app) as client:
        await client.get("/ping")
    for le, expected in (("0.1", 1.0), ("0.2", 1.0), ("5.0", 1.0), ("+Inf", 1.0), ("0.5", None)):
        labels = {"method": "GET", "endpoint": "/ping", "le": le}
        assert registry.get_sample_value("http_request_duration_seconds_bucket", labels) == expected


@frameworks
async def test_in_progress_gauge_counts_requests_being_served(
    framework: str, registry: CollectorRegistry
) -> None:
    """`http_requests_in_progress{method}` is 1 while a request runs and 0 after it."""
    labels = {"method": "GET"}
    async with client_for(build_app(framework, registry, stream_delay=0.1)) as client:
        request = asyncio.ensure_future(client.get("/stream"))
        deadline = time.monotonic() + 2
        while registry.get_sample_value("http_requests_in_progress", labels) != 1:
            assert time.monotonic() < deadline, "the gauge never went up"
            await asyncio.sleep(0.005)
        await request
    assert registry.get_sample_value("http_requests_in_progress", labels) == 0


@frameworks
async def test_sizes_are_the_bytes_actually_received_and_streamed(
    framework: str, registry: CollectorRegistry
) -> None:
    """Request and response sizes count body bytes transferred, chunked bodies included."""
    async with client_for(build_app(framework, registry)) as client:
        echoed = await client.post("/echo", content=chunked_body())
        streamed = await client.get("/stream")
    assert echoed.text == "30"
    assert "content-length" not in streamed.headers
    echo = {"method": "POST", "endpoint": "/echo"}
    stream = {"method": "GET", "endpoint": "/stream"}
    assert registry.get_sample_value("http_request_size_bytes_total", echo) == 30
    assert registry.get_sample_value("http_response_size_bytes_total", echo) == 2  # "30"
    assert registry.get_sample_value("http_request_size_bytes_total", stream) == 0
    assert registry.get_sample_value("http_response_size_bytes_total", stream) == sum(
        len(chunk) for chunk in STREAM_CHUNKS
    )


@frameworks
async def test_head_responses_count_no_body_bytes(
    framework: str, registry: CollectorRegistry
) -> None:
    """A body the application hands over for HEAD is never transmitted, so it counts 0 bytes."""
    async with client_for(build_app(framework, registry)) as client:
        response = await client.head("/ping")
    assert response.content == b""
    labels = {"method": "HEAD", "endpoint": "/ping"}
    assert registry.get_sample_value("http_response_size_bytes_total", labels) == 0
    assert registry.get_sample_value("http_request_duration_seconds_count", labels) == 1


@frameworks
async def test_time_to_first_byte_is_the_time_to_the_response_headers(
    framework: str, registry: CollectorRegistry
) -> None:
    """`http_time_to_first_byte_seconds` stops at the headers, before a slow body."""
    async with client_for(build_app(framework, registry, stream_delay=0.1)) as client:
        await client.get("/stream")
    labels = {"method": "GET", "endpoint": "/stream"}
    assert registry.get_sample_value("http_time_to_first_byte_seconds_count", labels) == 1
    assert (registry.get_sample_value("http_time_to_first_byte_seconds_sum", labels) or 0) < 0.09
    assert duration(registry, "/stream", "sum") >= 0.3


# --- 1. the endpoint label is the route template -------------------------------------


@frameworks
async def test_path_parameters_are_reported_as_the_route_template(
    framework: str, registry: CollectorRegistry
) -> None:
    """`/items/42` and `/items/43` are one `/items/{item_id}` series (Quart: `<int:item_id>`)."""
    async with client_for(build_app(framework, registry)) as client:
        assert (await client.get("/items/42")).status_code == 200
        assert (await client.get("/items/43")).status_code == 200
    assert requests_total(registry, "/items/{item_id}") == 2
    assert endpoints(registry) == {"/items/{item_id}"}


def starlette_tree(registry: CollectorRegistry) -> Starlette:
    """A Starlette app with a Mount of routes, a Mount of a Router and a parameterised Mount."""
    app = Starlette(
        routes=[
            Route("/users/{user_id}", ping),
            Mount("/api", routes=[Route("/orders/{order_id}", ping)]),
            Mount("/admin", app=Router(routes=[Route("/audit/{entry}", ping)])),
            Mount("/t/{tenant}", routes=[Route("/items/{item_id}", ping)]),
        ]
    )
    app.add_middleware(PrometheusMiddleware, registry=registry)
    return app


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/users/7", "/users/{user_id}"),
        ("/api/orders/9", "/api/orders/{order_id}"),
        ("/admin/audit/abc", "/admin/audit/{entry}"),
        ("/t/acme/items/42", "/t/{tenant}/items/{item_id}"),
    ],
    ids=["route", "mount-with-routes", "mount-of-router", "mount-with-path-parameter"],
)
async def test_starlette_templates_include_mount_prefixes(
    registry: CollectorRegistry, path: str, template: str
) -> None:
    """Starlette routes under mounts are reported with the full template, never the path."""
    async with client_for(starlette_tree(registry)) as client:
        assert (await client.get(path)).status_code == 200
    assert endpoints(registry) == {template}


def fastapi_tree(registry: CollectorRegistry) -> FastAPI:
    """A FastAPI app with prefixed, nested, self-prefixed and twice-included routers."""
    app = FastAPI()
    models = APIRouter()
    models.add_api_route("/models/{model_id}", ping)
    app.include_router(models, prefix="/v1")
    app.include_router(models, prefix="/v2")
    inner = APIRouter(prefix="/keys")
    inner.add_api_route("/{key_id}", ping)
    outer = APIRouter()
    outer.include_router(inner, prefix="/accounts/{account_id}")
    app.include_router(outer, prefix="/admin")
    prefixed = APIRouter(prefix="/billing")
    prefixed.add_api_route("/invoices/{invoice_id}", ping)
    app.include_router(prefixed)
    app.add_middleware(PrometheusMiddleware, registry=registry)
    return app


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/v1/models/gpt-4", "/v1/models/{model_id}"),
        ("/v2/models/gpt-4", "/v2/models/{model_id}"),
        ("/admin/accounts/42/keys/k1", "/admin/accounts/{account_id}/keys/{key_id}"),
        ("/billing/invoices/7", "/billing/invoices/{invoice_id}"),
    ],
    ids=["include-router-prefix", "same-router-second-prefix", "nested-routers", "router-prefix"],
)
async def test_fastapi_templates_include_router_prefixes(
    registry: CollectorRegistry, path: str, template: str
) -> None:
    """FastAPI routes are reported with the prefixes of every router that includes them."""
    async with client_for(fastapi_tree(registry)) as client:
        assert (await client.get(path)).status_code == 200
    assert endpoints(registry) == {template}


async def test_a_router_included_twice_keeps_its_prefixes_apart(
    registry: CollectorRegistry,
) -> None:
    """The same APIRouter under /v1 and /v2 gives two series, in any order of requests."""
    async with client_for(fastapi_tree(registry)) as client:
        for path in ("/v2/models/a", "/v1/models/b", "/v1/models/c", "/v2/models/d"):
            assert (await client.get(path)).status_code == 200
    assert requests_total(registry, "/v1/models/{model_id}") == 2
    assert requests_total(registry, "/v2/models/{model_id}") == 2


async def test_quart_blueprint_rules_are_reported_as_templates(
    registry: CollectorRegistry,
) -> None:
    """Quart rules under a blueprint prefix read `/api/users/{user_id}/files/{name}`."""
    app = Quart(__name__)
    api = Blueprint("api", __name__, url_prefix="/api")

    @api.get("/users/<int:user_id>/files/<path:name>")
    async def files(user_id: int, name: str) -> str:
        return name

    app.register_blueprint(api)
    app.asgi_app = PrometheusMiddleware(app.asgi_app, registry=registry)  # type: ignore[assignment, arg-type]
    async with client_for(app) as client:
        assert (await client.get("/api/users/5/files/a/b.txt")).status_code == 200
    assert endpoints(registry) == {"/api/users/{user_id}/files/{name}"}


@frameworks
async def test_method_not_allowed_keeps_the_route_template(
    framework: str, registry: CollectorRegistry
) -> None:
    """A 405 on a known route is recorded under that route's template."""
    async with client_for(build_app(framework, registry)) as client:
        assert (await client.delete("/items/42")).status_code == 405
    assert requests_total(registry, "/items/{item_id}", "405", method="DELETE") == 1
    assert endpoints(registry) == {"/items/{item_id}"}


# --- 2. bounded labels: unmatched paths and unknown methods ---------------------------


@frameworks
async def test_unmatched_requests_share_one_endpoint(
    framework: str, registry: CollectorRegistry
) -> None:
    """Every 404 is recorded as `endpoint="__unmatched__"`, whatever its path."""
    async with client_for(build_app(framework, registry)) as client:
        assert (await client.get("/no/such/page")).status_code == 404
        assert (await client.get("/wp-admin.php")).status_code == 404
    assert requests_total(registry, UNMATCHED_ENDPOINT, "404") == 2
    assert endpoints(registry) == {UNMATCHED_ENDPOINT}


@frameworks
@pytest.mark.slow
async def test_ten_thousand_random_paths_add_no_series(
    framework: str, registry: CollectorRegistry
) -> None:
    """After the first 404, 10,000 more random paths add no series to the registry."""
    app = build_app(framework, registry)

    async def get(path: str) -> int:
        send = RecordingSend()
        await app(http_scope(path), ScriptedReceive(), send)
        return send.status

    assert await get("/first-random-path") == 404
    first = series_count(registry)
    for _ in range(10_000):
        assert await get(f"/{uuid.uuid4().hex}/{uuid.uuid4().hex[:8]}") == 404
    assert series_count(registry) == first
    assert requests_total(registry, UNMATCHED_ENDPOINT, "404") == 10_001


async def test_a_404_inside_a_mount_is_unmatched(registry: CollectorRegistry) -> None:
    """A path under a mount that no inner route matches is `__unmatched__`, not the mount."""
    async with client_for(starlette_tree(registry)) as client:
        assert (await client.get("/api/nothing-here")).status_code == 404
        assert (await client.get("/admin/nothing-here")).status_code == 404
        assert (await client.get("/t/acme/nothing-here")).status_code == 404
    assert endpoints(registry) == {UNMATCHED_ENDPOINT}
    assert requests_total(registry, UNMATCHED_ENDPOINT, "404") == 3


async def test_fastapi_mounts_are_reported_by_their_template(registry: CollectorRegistry) -> None:
    """FastAPI leaves no route in the scope for a mount: its template is found all the same."""

    async def item(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def raw_app(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("raw")(scope, receive, send)

    app = FastAPI()
    app.mount("/raw", raw_app)
    app.mount("/sub", Starlette(routes=[Route("/items/{item_id}", item)]))
    app.add_middleware(PrometheusMiddleware, registry=registry)
    async with client_for(app) as client:
        assert (await client.get("/raw/anything/at/all")).status_code == 200
        assert (await client.get("/sub/items/7")).status_code == 200
        assert (await client.get("/sub/nothing-here")).status_code == 404
    assert requests_total(registry, "/raw/{path}", "200") == 1
    assert requests_total(registry, "/sub/items/{item_id}", "200") == 1
    assert requests_total(registry, UNMATCHED_ENDPOINT, "404") == 1


@frameworks
async def test_nonstandard_methods_share_method_other(
    framework: str, registry: CollectorRegistry
) -> None:
    """`BREW` and `PROPFIND` are both recorded as `method="OTHER"`."""
    async with client_for(build_app(framework, registry)) as client:
        for method in ("BREW", "PROPFIND", "BREW"):
            assert (await client.request(method, "/ping")).status_code == 405
    assert requests_total(registry, "/ping", "405", method=OTHER_METHOD) == 3
    methods = {
        sample.labels["method"]
        for family in registry.collect()
        for sample in family.samples
        if "method" in sample.labels
    }
    assert methods == {OTHER_METHOD}


# --- 3. duration ends with the last body chunk --------------------------------------


@frameworks
async def test_streaming_duration_covers_the_whole_stream(
    framework: str, registry: CollectorRegistry
) -> None:
    """A ~0.5 s stream records ~0.5 s of duration and a small time to first byte."""
    app = build_app(framework, registry, stream_delay=0.5 / len(STREAM_CHUNKS))
    async with client_for(app) as client:
        assert (await client.get("/stream")).status_code == 200
    assert duration(registry, "/stream", "count") == 1
    assert 0.45 <= duration(registry, "/stream", "sum") < 1.5
    labels = {"method": "GET", "endpoint": "/stream"}
    assert (registry.get_sample_value("http_time_to_first_byte_seconds_sum", labels) or 0) < 0.15


@pytest.mark.parametrize("kind", ["starlette", "fastapi"], ids=["starlette", "fastapi"])
async def test_a_background_task_is_not_counted(kind: str, registry: CollectorRegistry) -> None:
    """A 0.5 s BackgroundTask after the response does not count in the duration."""
    done = asyncio.Event()

    async def after_response() -> None:
        await asyncio.sleep(0.5)
        done.set()

    async def endpoint(request: Request) -> PlainTextResponse:
        return PlainTextResponse("accepted", background=BackgroundTask(after_response))

    app: Starlette
    if kind == "starlette":
        app = Starlette(routes=[Route("/jobs", endpoint)])
    else:
        app = FastAPI()
        app.add_api_route("/jobs", endpoint)
    app.add_middleware(PrometheusMiddleware, registry=registry)
    async with client_for(app) as client:
        assert (await client.get("/jobs")).status_code == 200
    assert done.is_set()
    assert duration(registry, "/jobs", "count") == 1
    assert duration(registry, "/jobs", "sum") < 0.3


# --- 4. application errors ------------------------------------------------------------


@frameworks
async def test_an_application_error_is_recorded_as_500(
    framework: str, registry: CollectorRegistry
) -> None:
    """A handler that raises is counted as a 500 (Quart answers it; the others re-raise)."""
    async with client_for(build_app(framework, registry)) as client:
        assert (await client.get("/boom")).status_code == 500
    assert requests_total(registry, "/boom", "500") == 1
    assert duration(registry, "/boom", "count") == 1


async def test_an_application_error_reaches_the_server_unchanged(
    registry: CollectorRegistry,
) -> None:
    """Through Starlette, the very exception object the handler raised reaches the server."""
    error = LookupError("the application's own error")

    async def fail(request: Request) -> PlainTextResponse:
        raise error

    app = Starlette(routes=[Route("/fail", fail)])
    app.add_middleware(PrometheusMiddleware, registry=registry)
    async with client_for(app, raise_app_exceptions=True) as client:
        with pytest.raises(LookupError) as exc_info:
            await client.get("/fail")
    assert exc_info.value is error
    assert requests_total(registry, "/fail", "500") == 1


# --- 6. websocket and lifespan scopes pass through ------------------------------------


def lifespan_app(framework: str, registry: CollectorRegistry, events: list[str]) -> Any:
    """An app whose startup and shutdown handlers append to `events`."""
    if framework == "quart":
        quart = Quart(__name__)

        @quart.before_serving
        async def startup() -> None:
            events.append("startup")

        @quart.after_serving
        async def shutdown() -> None:
            events.append("shutdown")

        quart.asgi_app = PrometheusMiddleware(quart.asgi_app, registry=registry)  # type: ignore[assignment, arg-type]
        return quart

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app: Starlette = (
        Starlette(lifespan=lifespan) if framework == "starlette" else FastAPI(lifespan=lifespan)
    )
    app.add_middleware(PrometheusMiddleware, registry=registry)
    return app


@frameworks
async def test_lifespan_passes_through_to_the_application(
    framework: str, registry: CollectorRegistry
) -> None:
    """Startup and shutdown handlers run, and the server gets both `.complete` messages."""
    events: list[str] = []
    app = lifespan_app(framework, registry, events)
    receive = ScriptedReceive([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    send = RecordingSend()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    assert events == ["startup", "shutdown"]
    assert [m["type"] for m in send.messages] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert endpoints(registry) == set()


def websocket_app(framework: str, registry: CollectorRegistry) -> Any:
    """An app with a `/ws` websocket that echoes one message."""
    if framework == "quart":
        quart = Quart(__name__)

        @quart.websocket("/ws")
        async def ws() -> None:
            await quart_websocket.send(await quart_websocket.receive())

        quart.asgi_app = PrometheusMiddleware(quart.asgi_app, registry=registry)  # type: ignore[assignment, arg-type]
        return quart

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text(await websocket.receive_text())
        await websocket.close()

    app: Starlette
    if framework == "starlette":
        app = Starlette(routes=[WebSocketRoute("/ws", echo)])
    else:
        app = FastAPI()
        app.add_api_websocket_route("/ws", echo)
    app.add_middleware(PrometheusMiddleware, registry=registry)
    return app


class EchoingClient:
    """A websocket client that connects, says hello and hangs up once it got an answer.

    Hanging up only after the answer, as a real client would: a disconnect queued at once
    races the handler (Quart on Python 3.13 cancels it before it echoes).
    """

    def __init__(self) -> None:
        self.sent = RecordingSend()
        self._script: list[Message] = [
            {"type": "websocket.connect"},
            {"type": "websocket.receive", "text": "hello"},
        ]
        self._answered = asyncio.Event()

    async def receive(self) -> Message:
        if self._script:
            return self._script.pop(0)
        await self._answered.wait()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(self, message: Message) -> None:
        await self.sent(message)
        if message["type"] == "websocket.send":
            self._answered.set()


@frameworks
async def test_websocket_passes_through_unmeasured(
    framework: str, registry: CollectorRegistry
) -> None:
    """A websocket session works through the middleware and records no HTTP metric."""
    app = websocket_app(framework, registry)
    scope = {**http_scope("/ws"), "type": "websocket", "scheme": "ws", "subprotocols": []}
    del scope["method"]
    client = EchoingClient()
    send = client.sent
    await asyncio.wait_for(app(scope, client.receive, client.send), timeout=5)
    assert send.messages[0]["type"] == "websocket.accept"
    assert {"type": "websocket.send", "text": "hello"} in [
        {k: v for k, v in m.items() if k in ("type", "text")} for m in send.messages
    ]
    assert endpoints(registry) == set()
    assert registry.get_sample_value("http_requests_in_progress", {"method": "GET"}) is None


# --- 7. exclusions ------------------------------------------------------------------


@frameworks
async def test_excluded_paths_are_not_recorded(framework: str, registry: CollectorRegistry) -> None:
    """`exclude_paths=` skips exact paths and compiled patterns (full match), nothing else."""
    app = build_app(framework, registry, exclude_paths=["/ping", re.compile(r"/items/\d{3}")])
    async with client_for(app) as client:
        assert (await client.get("/ping")).status_code == 200
        assert (await client.get("/items/123")).status_code == 200
        assert (await client.get("/items/12")).status_code == 200
        assert (await client.get("/items/1234")).status_code == 200
    assert requests_total(registry, "/ping") is None
    assert requests_total(registry, "/items/{item_id}") == 2


@frameworks
async def test_paths_are_matched_below_the_root_path(
    framework: str, registry: CollectorRegistry
) -> None:
    """Behind a prefix (`--root-path /api`), `/api/metrics` is served and `/api/ping` excluded."""
    app = build_app(framework, registry, exclude_paths=["/ping"])
    async with client_for(app, root_path="/api") as client:
        assert (await client.get("/api/ping")).status_code == 200
        assert (await client.get("/api/items/3")).status_code == 200
        scrape = await client.get("/api/metrics")
    assert scrape.status_code == 200
    assert "http_requests_total" in scrape.text
    assert endpoints(registry) == {"/items/{item_id}"}


@frameworks
async def test_the_metrics_path_is_not_recorded(
    framework: str, registry: CollectorRegistry
) -> None:
    """Scraping `/metrics` adds nothing to the HTTP metrics."""
    async with client_for(build_app(framework, registry)) as client:
        for _ in range(3):
            assert (await client.get("/metrics")).status_code == 200
    assert endpoints(registry) == set()
    assert registry.get_sample_value("http_requests_in_progress", {"method": "GET"}) is None


def test_exclude_paths_rejects_what_is_neither_a_string_nor_a_pattern() -> None:
    """A bad `exclude_paths` entry is a TypeError naming it."""
    with pytest.raises(TypeError, match="42"):
        PrometheusMiddleware(noop_app, registry=CollectorRegistry(), exclude_paths=["/ok", 42])  # type: ignore[list-item]


# --- 8. our own faults never fail the request ---------------------------------------


@pytest.fixture
def fresh_log_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which internal faults were already logged, so this test sees its first log."""
    monkeypatch.setattr(_internal, "_logged", set())


def internal_errors(registry: CollectorRegistry, component: str) -> float | None:
    """`gatewayz_metrics_internal_errors_total` of one component."""
    labels = {"component": component}
    return registry.get_sample_value("gatewayz_metrics_internal_errors_total", labels)


def fault_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The internal-error records logged by gatewayz_metrics."""
    return [
        r
        for r in caplog.records
        if r.name == "gatewayz_metrics" and "internal error" in r.getMessage()
    ]


@pytest.mark.usefixtures("fresh_log_once")
@frameworks
async def test_a_failing_observation_never_fails_the_request(
    framework: str,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A metric child whose `.observe` raises: still 200, logged once, counted each time."""

    def broken(amount: float) -> None:
        raise RuntimeError("observe is broken")

    app = build_app(framework, registry)
    children = HTTPMetrics.for_registry(registry).bound("GET", "/ping")
    monkeypatch.setattr(children.duration, "observe", broken)
    with caplog.at_level(logging.ERROR, logger="gatewayz_metrics"):
        async with client_for(app, raise_app_exceptions=True) as client:
            first = await client.get("/ping")
            second = await client.get("/ping")
    assert (first.status_code, first.text, second.status_code) == (200, "pong", 200)
    assert len(fault_logs(caplog)) == 1
    assert internal_errors(registry, "middleware.record") == 2


@pytest.mark.usefixtures("fresh_log_once")
@frameworks
async def test_a_failing_route_resolver_never_fails_the_request(
    framework: str, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """A `route_resolver` that raises: still 200, logged once, counted each time."""

    def resolver(scope: Any) -> str:
        raise KeyError("no such route")

    app = build_app(framework, registry, route_resolver=resolver)
    with caplog.at_level(logging.ERROR, logger="gatewayz_metrics"):
        async with client_for(app, raise_app_exceptions=True) as client:
            responses = [await client.get("/items/1") for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert len(fault_logs(caplog)) == 1
    assert internal_errors(registry, "middleware.record") == 3


# --- 9. registries ------------------------------------------------------------------


async def test_the_registry_argument_keeps_metrics_off_the_default_registry(
    registry: CollectorRegistry,
) -> None:
    """With `registry=`, the request is counted there and not on the default registry."""
    path = f"/own-registry-{uuid.uuid4().hex}"
    app = Starlette(routes=[Route(path, ping)])
    app.add_middleware(PrometheusMiddleware, registry=registry)
    async with client_for(app) as client:
        await client.get(path)
    assert requests_total(registry, path) == 1
    assert requests_total(REGISTRY, path) is None


async def test_rebuilding_the_middleware_stack_is_harmless(registry: CollectorRegistry) -> None:
    """Starlette building its middleware stack again reuses the registry's metrics."""
    app = Starlette(routes=[Route("/ping", ping)])
    app.add_middleware(PrometheusMiddleware, registry=registry)
    async with client_for(app) as client:
        await client.get("/ping")
        app.middleware_stack = app.build_middleware_stack()
        app.middleware_stack = app.build_middleware_stack()
        await client.get("/ping")
    assert requests_total(registry, "/ping") == 2


@frameworks
async def test_two_apps_share_one_registry(framework: str, registry: CollectorRegistry) -> None:
    """Two instrumented apps on one registry count into the same series, no duplicate error."""
    first, second = build_app(framework, registry), build_app(framework, registry)
    async with client_for(first) as one, client_for(second) as two:
        assert (await one.get("/ping")).status_code == 200
        assert (await two.get("/ping")).status_code == 200
    assert requests_total(registry, "/ping") == 2


def test_two_middlewares_on_one_registry_do_not_collide(registry: CollectorRegistry) -> None:
    """Constructing many middlewares on one registry never raises 'Duplicated timeseries'."""
    for _ in range(3):
        PrometheusMiddleware(noop_app, registry=registry)
        PrometheusMiddleware(noop_app, registry=registry, duration_buckets=DEFAULT_DURATION_BUCKETS)
    assert HTTPMetrics.for_registry(registry).duration_buckets == DEFAULT_DURATION_BUCKETS


def test_conflicting_duration_buckets_on_one_registry_are_refused(
    registry: CollectorRegistry,
) -> None:
    """Other buckets on a registry that has the HTTP metrics: a ValueError naming the value."""
    PrometheusMiddleware(noop_app, registry=registry, duration_buckets=[0.1, 1.0])
    with pytest.raises(ValueError, match=re.escape("duration_buckets=(0.5, 2.0)")):
        PrometheusMiddleware(noop_app, registry=registry, duration_buckets=[0.5, 2.0])


def test_invalid_duration_buckets_are_refused(registry: CollectorRegistry) -> None:
    """Buckets that are not increasing numbers are a ValueError naming them."""
    with pytest.raises(ValueError, match=re.escape("(1.0, 0.5)")):
        PrometheusMiddleware(noop_app, registry=registry, duration_buckets=[1.0, 0.5])


async def test_endpoints_past_the_cap_fold_into_other_and_are_counted(
    registry: CollectorRegistry,
) -> None:
    """Past `max_endpoints`, templates fold into `__other__`; every folded request is counted."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("ok")(scope, receive, send)

    wrapped = PrometheusMiddleware(
        app,
        registry=registry,
        max_endpoints=3,
        route_resolver=lambda scope: scope["path"],
    )
    async with client_for(wrapped) as client:
        for round_ in range(2):
            for n in range(10):
                assert (await client.get(f"/t{n}")).status_code == 200, round_
    assert endpoints(registry) == {"/t0", "/t1", "/t2", "__other__"}
    assert requests_total(registry, "/t0", "200") == 2
    assert requests_total(registry, "__other__", "200") == 14
    overflow = registry.get_sample_value(
        "gatewayz_metrics_label_overflow_total",
        {"metric": "http_requests_total", "label": "endpoint"},
    )
    assert overflow == 14


async def test_a_middleware_added_twice_counts_each_request_once(
    registry: CollectorRegistry,
) -> None:
    """Two middlewares on one registry record a request once; on two registries, once each."""
    other = CollectorRegistry()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await PlainTextResponse("ok")(scope, receive, send)

    def resolver(scope: Any) -> str:
        return "/ping"

    same = PrometheusMiddleware(
        PrometheusMiddleware(app, registry=registry, route_resolver=resolver),
        registry=registry,
        route_resolver=resolver,
    )
    separate = PrometheusMiddleware(
        PrometheusMiddleware(app, registry=other, route_resolver=resolver),
        registry=registry,
        route_resolver=resolver,
    )
    async with client_for(same) as client:
        assert (await client.get("/ping")).status_code == 200
    assert requests_total(registry, "/ping") == 1
    async with client_for(separate) as client:
        assert (await client.get("/ping")).status_code == 200
    assert requests_total(registry, "/ping") == 2
    assert requests_total(other, "/ping") == 1
