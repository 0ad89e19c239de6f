"""Route labels inside composed applications: mounts behind middleware, sub-applications with
their own middleware, a middleware on a mounted sub-application, Host routing, Quart host and
subdomain rules, and routing decided once (user convertors never run a second time)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from _asgi import client_for
from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry
from quart import Quart
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Host, Mount, Route, Router, WebSocketRoute
from starlette.websockets import WebSocket
from werkzeug.routing import BaseConverter

from gatewayz_metrics import UNMATCHED_ENDPOINT, PrometheusMiddleware

Counts = dict[tuple[str, str, str], float]
"""(method, endpoint, status_code) -> `http_requests_total`."""


def recorded(registry: CollectorRegistry) -> Counts:
    """Every `http_requests_total` sample, keyed by (method, endpoint, status_code)."""
    return {
        (s.labels["method"], s.labels["endpoint"], s.labels["status_code"]): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == "http_requests_total"
    }


async def item(request: Request) -> PlainTextResponse:
    """A Starlette endpoint echoing its `id` path parameter."""
    return PlainTextResponse(str(request.path_params.get("id")))


def items_app() -> Starlette:
    """A Starlette sub-application with one route, `/items/{id}` (GET only)."""
    return Starlette(routes=[Route("/items/{id}", item)])


class Auth(BaseHTTPMiddleware):
    """A pass-through `BaseHTTPMiddleware`, as an auth middleware of a sub-application."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        return await call_next(request)


def outer(routes: list[Any], registry: CollectorRegistry) -> Starlette:
    """A Starlette application over `routes`, instrumented the documented way."""
    app = Starlette(routes=routes)
    app.add_middleware(PrometheusMiddleware, registry=registry)
    return app


# --- issue 10 point 8: mounts whose application is wrapped ---------------------------


def gzip_mounts(registry: CollectorRegistry) -> Starlette:
    """Two sub-applications behind `GZipMiddleware`, mounted at /a and /b."""
    return outer(
        [
            Mount("/a", app=GZipMiddleware(items_app())),
            Mount("/b", app=GZipMiddleware(items_app())),
        ],
        registry,
    )


def one_sub_app_twice(registry: CollectorRegistry) -> Starlette:
    """The same wrapped sub-application mounted at /a and at /b."""
    sub = GZipMiddleware(items_app())
    return outer([Mount("/a", app=sub), Mount("/b", app=sub)], registry)


def mount_middleware(registry: CollectorRegistry) -> Starlette:
    """`Mount(..., middleware=[...])` around a Router, twice with the same routes."""
    routes = [Route("/items/{id}", item)]
    return outer(
        [
            Mount("/a", routes=routes, middleware=[Middleware(Auth)]),
            Mount("/b", app=Router(routes=routes), middleware=[Middleware(GZipMiddleware)]),
        ],
        registry,
    )


def sub_apps_with_middleware(registry: CollectorRegistry) -> Starlette:
    """A Starlette and a FastAPI sub-application, each with its own middleware stack."""
    starlette_sub = Starlette(routes=[Route("/items/{id}", item)], middleware=[Middleware(Auth)])
    fastapi_sub = FastAPI()
    fastapi_sub.add_api_route("/items/{id}", item)
    fastapi_sub.add_middleware(GZipMiddleware)
    return outer([Mount("/a", app=starlette_sub), Mount("/b", app=fastapi_sub)], registry)


def fastapi_outer(registry: CollectorRegistry) -> FastAPI:
    """FastAPI mounting one wrapped Starlette sub-application at /a and at /b."""
    app = FastAPI()
    sub = Auth(items_app())
    app.mount("/a", sub)
    app.mount("/b", sub)
    app.add_middleware(PrometheusMiddleware, registry=registry)
    return app


def api_router_in_starlette(registry: CollectorRegistry) -> Starlette:
    """One FastAPI `APIRouter` included by two FastAPI sub-applications mounted at /a and /b."""
    router = APIRouter()
    router.add_api_route("/items/{id}", item)
    first, second = FastAPI(), FastAPI()
    first.include_router(router)
    second.include_router(router)
    return outer([Mount("/a", app=first), Mount("/b", app=GZipMiddleware(second))], registry)


def host_mounts(registry: CollectorRegistry) -> Starlette:
    """One wrapped sub-application under two Hosts, at a different mount on each."""
    sub = GZipMiddleware(items_app())
    return outer(
        [
            Host("api.local", app=Router(routes=[Mount("/a", app=sub)])),
            Host("admin.local", app=Router(routes=[Mount("/b", app=sub)])),
        ],
        registry,
    )


COMPOSED = {
    "gzip-mounts": gzip_mounts,
    "one-sub-app-mounted-twice": one_sub_app_twice,
    "mount-middleware": mount_middleware,
    "sub-apps-with-own-middleware": sub_apps_with_middleware,
    "fastapi-mounting-one-sub-app-twice": fastapi_outer,
    "api-router-in-starlette": api_router_in_starlette,
}


@pytest.mark.parametrize("build", COMPOSED.values(), ids=COMPOSED.keys())
async def test_mounts_are_labelled_through_their_wrappers(
    build: Callable[[CollectorRegistry], Any], registry: CollectorRegistry
) -> None:
    """`/a/items/1`, `/b/items/2`: two series; a 404 inside a mount is not `/a/{path}`."""
    async with client_for(build(registry)) as client:
        assert (await client.get("/a/items/1")).status_code == 200
        assert (await client.get("/b/items/2")).status_code == 200
        assert (await client.get("/b/items/3")).status_code == 200
        assert (await client.get("/a/nothing-here")).status_code == 404
        assert (await client.delete("/a/items/1")).status_code == 405
    assert recorded(registry) == {
        ("GET", "/a/items/{id}", "200"): 1,
        ("GET", "/b/items/{id}", "200"): 2,
        ("GET", UNMATCHED_ENDPOINT, "404"): 1,
        ("DELETE", "/a/items/{id}", "405"): 1,
    }


async def test_hosts_sharing_a_sub_application_keep_their_mounts_apart(
    registry: CollectorRegistry,
) -> None:
    """Under Host routing, the Host header decides which mount's template is recorded."""
    async with client_for(host_mounts(registry)) as client:
        assert (await client.get("/a/items/1", headers={"host": "api.local"})).status_code == 200
        assert (await client.get("/b/items/1", headers={"host": "admin.local"})).status_code == 200
        assert (await client.get("/b/items/1", headers={"host": "api.local"})).status_code == 404
    assert recorded(registry) == {
        ("GET", "/a/items/{id}", "200"): 1,
        ("GET", "/b/items/{id}", "200"): 1,
        ("GET", UNMATCHED_ENDPOINT, "404"): 1,
    }


async def test_mount_templates_hold_behind_a_proxy_root_path(registry: CollectorRegistry) -> None:
    """Behind `--root-path /api`, a wrapped mount is still `/a/items/{id}` (no prefix)."""
    async with client_for(one_sub_app_twice(registry), root_path="/api") as client:
        assert (await client.get("/api/a/items/1")).status_code == 200
        assert (await client.get("/api/b/items/1")).status_code == 200
    assert recorded(registry) == {
        ("GET", "/a/items/{id}", "200"): 1,
        ("GET", "/b/items/{id}", "200"): 1,
    }


# --- issue 10 point 9: a middleware on a mounted sub-application ----------------------


def quart_items() -> Quart:
    """A Quart application with `/items/<int:id>`."""
    app = Quart(__name__)

    @app.get("/items/<int:id>")
    async def quart_item(id: int) -> str:
        return str(id)

    return app


async def test_a_middleware_on_mounted_quart_labels_quart_routes(
    registry: CollectorRegistry,
) -> None:
    """Quart wrapped at `asgi_app` and mounted at /q in Starlette labels its own rules."""
    quart = quart_items()
    quart.asgi_app = PrometheusMiddleware(quart.asgi_app, registry=registry)  # type: ignore[assignment, arg-type]
    app = Starlette(routes=[Mount("/q", app=quart)])  # type: ignore[arg-type]
    async with client_for(app) as client:
        assert (await client.get("/q/items/1")).status_code == 200
        assert (await client.get("/q/nothing-here")).status_code == 404
    assert recorded(registry) == {
        ("GET", "/items/{id}", "200"): 1,
        ("GET", UNMATCHED_ENDPOINT, "404"): 1,
    }


async def test_a_middleware_on_a_mounted_starlette_app_labels_its_routes(
    registry: CollectorRegistry,
) -> None:
    """A Starlette sub-application with its own middleware, mounted at /w, labels its routes."""
    sub = items_app()
    sub.add_middleware(PrometheusMiddleware, registry=registry)
    app = Starlette(routes=[Mount("/w", app=sub)])
    async with client_for(app) as client:
        assert (await client.get("/w/items/1")).status_code == 200
        assert (await client.get("/w/nothing-here")).status_code == 404
    assert recorded(registry) == {
        ("GET", "/items/{id}", "200"): 1,
        ("GET", UNMATCHED_ENDPOINT, "404"): 1,
    }


async def test_a_quart_app_mounted_in_instrumented_starlette_is_labelled_by_its_rules(
    registry: CollectorRegistry,
) -> None:
    """The middleware on Starlette records a mounted Quart app's rule under the mount prefix."""
    app = outer([Mount("/q", app=quart_items())], registry)  # type: ignore[arg-type]
    async with client_for(app) as client:
        assert (await client.get("/q/items/1")).status_code == 200
        assert (await client.get("/q/items/2")).status_code == 200
        assert (await client.get("/q/nothing-here")).status_code == 404
    assert recorded(registry) == {
        ("GET", "/q/items/{id}", "200"): 2,
        ("GET", UNMATCHED_ENDPOINT, "404"): 1,
    }


# --- issue 10 point 10: Quart host and subdomain rules --------------------------------


async def test_quart_host_matching_rules_match_the_request_host(
    registry: CollectorRegistry,
) -> None:
    """With `host_matching=True`, a rule of host `api.local` is labelled by its template."""
    app = Quart(__name__, host_matching=True, static_host="static.local")

    @app.get("/items/<int:id>", host="api.local")
    async def api_item(id: int) -> str:
        return str(id)

    app.asgi_app = PrometheusMiddleware(app.asgi_app, registry=registry)  # type: ignore[assignment, arg-type]
    async with client_for(app) as client:
        assert (await client.get("/items/1", headers={"host": "api.local"})).status_code == 200
        assert (await client.delete("/items/1", headers={"host": "api.local"})).status_code == 405
        assert (await client.get("/items/1", headers={"host": "other.local"})).status_code == 404
    assert recorded(registry) == {
        ("GET", "/items/{id}", "200"): 1,
        ("DELETE", "/items/{id}", "405"): 1,
        ("GET", UNMATCHED_ENDPOINT, "404"): 1,
    }


async def test_quart_subdomain_rules_match_the_request_host(registry: CollectorRegistry) -> None:
    """With `subdomain_matching=True`, a rule of subdomain `api` is labelled by its template."""
    app = Quart(__name__, subdomain_matching=True)
    app.config["SERVER_NAME"] = "example.local"

    @app.get("/items/<int:id>", subdomain="api")
    async def api_item(id: int) -> str:
        return str(id)

    app.asgi_app = PrometheusMiddleware(app.asgi_app, registry=registry)  # type: ignore[assignment, arg-type]
    async with client_for(app) as client:
        host = {"host": "api.example.local"}
        assert (await client.get("/items/1", headers=host)).status_code == 200
        assert (await client.delete("/items/1", headers=host)).status_code == 405
    assert recorded(registry) == {
        ("GET", "/items/{id}", "200"): 1,
        ("DELETE", "/items/{id}", "405"): 1,
    }


# --- issue 10 point 11: routing runs once --------------------------------------------


class CountingConvertor(Convertor[str]):
    """A Starlette path convertor that counts its `convert` calls."""

    regex = "[a-z]+"
    calls = 0

    def convert(self, value: str) -> str:
        CountingConvertor.calls += 1
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("gm_counted", CountingConvertor())


async def test_starlette_convertors_run_once_per_request(registry: CollectorRegistry) -> None:
    """A route reachable under two mounts is labelled without converting its path again."""
    route = Route("/items/{name:gm_counted}", item)
    app = outer([Mount("/a", routes=[route]), Mount("/b", routes=[route])], registry)
    CountingConvertor.calls = 0
    async with client_for(app) as client:
        assert (await client.get("/b/items/abc")).status_code == 200
        assert (await client.get("/a/items/abc")).status_code == 200
    assert CountingConvertor.calls == 2
    assert recorded(registry) == {
        ("GET", "/a/items/{name}", "200"): 1,
        ("GET", "/b/items/{name}", "200"): 1,
    }


async def test_a_404_does_not_rematch_the_route_tree(registry: CollectorRegistry) -> None:
    """A path no route matched is `__unmatched__`; `matches()` runs only as often as bare."""
    calls: list[str] = []

    class Watched(Route):
        def matches(self, scope: Any) -> Any:
            calls.append(scope["path"])
            return super().matches(scope)

    routes = [Mount("/m", routes=[Watched("/items/{id}", item)]), Watched("/items/{id}", item)]
    async with client_for(Starlette(routes=routes)) as client:
        assert (await client.get("/m/nothing-here")).status_code == 404
        assert (await client.get("/nothing-here")).status_code == 404
    bare = list(calls)
    calls.clear()
    async with client_for(outer(routes, registry)) as client:
        assert (await client.get("/m/nothing-here")).status_code == 404
        assert (await client.get("/nothing-here")).status_code == 404
    assert calls == bare
    assert recorded(registry) == {("GET", UNMATCHED_ENDPOINT, "404"): 2}


class CountingConverter(BaseConverter):
    """A werkzeug converter that counts its `to_python` calls."""

    calls = 0

    def to_python(self, value: str) -> str:
        CountingConverter.calls += 1
        return value


async def test_quart_converters_run_once_per_request(registry: CollectorRegistry) -> None:
    """Quart's own match names the rule: its converter is not run a second time."""
    app = Quart(__name__)
    app.url_map.converters["gm_counted"] = CountingConverter

    @app.get("/items/<gm_counted:name>")
    async def quart_item(name: str) -> str:
        return name

    app.asgi_app = PrometheusMiddleware(app.asgi_app, registry=registry)  # type: ignore[assignment, arg-type]
    CountingConverter.calls = 0
    async with client_for(app) as client:
        assert (await client.get("/items/abc")).status_code == 200
        assert (await client.get("/items/def")).status_code == 200
    assert CountingConverter.calls == 2
    assert recorded(registry) == {("GET", "/items/{name}", "200"): 2}


class RequireToken:
    """A pure ASGI auth middleware answering 401 before routing when `x-token` is missing."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (b"x-token", b"t") not in scope["headers"]:
            await PlainTextResponse("no token", status_code=401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def test_a_request_refused_before_routing_keeps_its_template(
    registry: CollectorRegistry,
) -> None:
    """An auth middleware's 401 is labelled by the template the path would reach, found
    without running a convertor; a path no route has stays `__unmatched__`."""
    route = Route("/items/{name:gm_counted}", item)
    app = Starlette(routes=[Mount("/a", app=GZipMiddleware(Router(routes=[route])))])
    app.add_middleware(RequireToken)
    app.add_middleware(PrometheusMiddleware, registry=registry)
    CountingConvertor.calls = 0
    async with client_for(app) as client:
        assert (await client.get("/a/items/abc")).status_code == 401
        assert (await client.post("/a/items/abc")).status_code == 401
        assert (await client.get("/a/nothing-here")).status_code == 401
        ok = await client.get("/a/items/abc", headers={"x-token": "t"})
        assert ok.status_code == 200
    assert CountingConvertor.calls == 1
    assert recorded(registry) == {
        ("GET", "/a/items/{name}", "401"): 1,
        ("POST", "/a/items/{name}", "401"): 1,
        ("GET", UNMATCHED_ENDPOINT, "401"): 1,
        ("GET", "/a/items/{name}", "200"): 1,
    }


async def test_an_http_request_to_a_websocket_path_is_unmatched(
    registry: CollectorRegistry,
) -> None:
    """A plain GET on a WebSocket route's path is the router's 404: `__unmatched__`."""

    async def chat(websocket: WebSocket) -> None:
        await websocket.close()

    room = WebSocketRoute("/chat/{room}", chat)
    app = outer([room, Mount("/a", routes=[room])], registry)
    async with client_for(app) as client:
        assert (await client.get("/chat/lobby")).status_code == 404
        assert (await client.get("/a/chat/lobby")).status_code == 404
    assert recorded(registry) == {("GET", UNMATCHED_ENDPOINT, "404"): 2}


async def test_a_quart_app_mounted_in_instrumented_fastapi_is_labelled_by_its_rules(
    registry: CollectorRegistry,
) -> None:
    """FastAPI records only the mounted app for a mount: Quart's rule still completes it."""
    app = FastAPI()
    app.mount("/q", quart_items())  # type: ignore[arg-type]
    app.add_middleware(PrometheusMiddleware, registry=registry)
    async with client_for(app) as client:
        assert (await client.get("/q/items/1")).status_code == 200
        assert (await client.delete("/q/items/1")).status_code == 405
        assert (await client.get("/q/nothing-here")).status_code == 404
    assert recorded(registry) == {
        ("GET", "/q/items/{id}", "200"): 1,
        ("DELETE", "/q/items/{id}", "405"): 1,
        ("GET", UNMATCHED_ENDPOINT, "404"): 1,
    }
