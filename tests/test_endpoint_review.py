"""The middleware's own `/metrics` never serves around a MetricsApp the survey cannot see
(under a Host, at a root mount, behind a function wrapper, created late), around a
PrometheusMiddleware below it, or over a route of the application (Quart rules, Starlette
patterns and slash redirects); and no dead code is left from the merge."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from _asgi import client_for
from _servers import uvicorn_thread
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter
from quart import Quart, abort
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Host, Mount, Route

from gatewayz_metrics import MetricsApp, PrometheusMiddleware
from gatewayz_metrics._types import ASGIApp, Receive, Scope, Send

SECRET = "secret_business_total"
TOKEN = "s3cret-scrape-token"
STARLETTES = ["starlette", "fastapi"]
starlettes = pytest.mark.parametrize("framework", STARLETTES, ids=STARLETTES)
PACKAGE = Path(__file__).resolve().parent.parent / "gatewayz_metrics"


@pytest.fixture
def secret_registry(registry: CollectorRegistry) -> CollectorRegistry:
    """The fresh registry, holding a business metric that must not leak."""
    Counter("secret_business", "Business numbers.", registry=registry).inc()
    return registry


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("home")


async def page(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"page {request.path_params['page']}")


def make(framework: str, routes: list[BaseRoute], registry: CollectorRegistry, **kw: Any) -> Any:
    """A Starlette or FastAPI app with `routes` after `/`, measured into `registry`."""
    every = [Route("/", home), *routes]
    app = Starlette(routes=every) if framework == "starlette" else FastAPI(routes=every)
    app.add_middleware(PrometheusMiddleware, registry=registry, **kw)
    return app


class Deny:
    """A wrapper with `.app` that refuses everything: 403."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("forbidden", status_code=403)(scope, receive, send)


def require_header(inner: ASGIApp) -> ASGIApp:
    """A function-based auth wrapper (no `.app` to look through): 403 without X-Internal."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if (b"x-internal", b"yes") not in (scope.get("headers") or ()):
            await PlainTextResponse("forbidden", status_code=403)(scope, receive, send)
            return
        await inner(scope, receive, send)

    return guarded


async def get(app: Any, path: str, **headers: str) -> httpx.Response:
    async with client_for(app) as client:
        return await client.get(path, headers=headers)


# --- 1. a MetricsApp the survey cannot see ---------------------------------------------


@starlettes
async def test_a_metrics_app_given_to_a_host_is_not_served_to_other_hosts(
    framework: str, secret_registry: CollectorRegistry
) -> None:
    """`Host("internal.local", app=MetricsApp())`: `/metrics` on another Host is a 404."""
    app = make(
        framework, [Host("internal.local", app=MetricsApp(secret_registry))], secret_registry
    )
    response = await get(app, "/metrics", host="public.example")
    assert response.status_code == 404
    assert SECRET not in response.text
    inside = await get(app, "/metrics", host="internal.local")
    assert SECRET in inside.text


@starlettes
async def test_a_token_protected_metrics_app_under_a_host_keeps_its_token(
    framework: str, secret_registry: CollectorRegistry
) -> None:
    """The Host's MetricsApp has a token: `/metrics` answers 401 without it, 200 with it."""
    metrics = MetricsApp(secret_registry, bearer_token=TOKEN)
    app = make(framework, [Host("internal.local", app=metrics)], secret_registry)
    assert (await get(app, "/metrics", host="internal.local")).status_code == 401
    allowed = await get(app, "/metrics", host="internal.local", authorization=f"Bearer {TOKEN}")
    assert SECRET in allowed.text


@starlettes
@pytest.mark.parametrize(
    "route",
    [
        lambda metrics: Host("metrics.internal", app=Deny(metrics)),
        lambda metrics: Host("metrics.internal", app=Starlette(routes=[Mount("/", Deny(metrics))])),
        lambda metrics: Mount("/", app=Deny(metrics)),
    ],
    ids=["host-wrapper", "host-root-mount", "root-mount"],
)
async def test_a_wrapped_metrics_app_without_a_bare_path_keeps_its_wrappers_answer(
    framework: str, route: Any, secret_registry: CollectorRegistry
) -> None:
    """A MetricsApp behind a wrapper under a Host or at a root mount: `/metrics` is the 403."""
    app = make(framework, [route(MetricsApp(secret_registry))], secret_registry)
    response = await get(app, "/metrics", host="metrics.internal")
    assert response.status_code == 403
    assert SECRET not in response.text


@starlettes
async def test_a_metrics_app_behind_a_function_wrapper_gets_no_unprotected_copy(
    framework: str, secret_registry: CollectorRegistry
) -> None:
    """`Mount("/internal", app=require_header(MetricsApp()))`: `/metrics` is a 404, not the
    registry without the wrapper's check."""
    guarded = Mount("/internal", app=require_header(MetricsApp(secret_registry)))
    app = make(framework, [guarded], secret_registry)
    assert (await get(app, "/internal/")).status_code == 403
    assert SECRET in (await get(app, "/internal/", **{"x-internal": "yes"})).text
    response = await get(app, "/metrics")
    assert response.status_code == 404
    assert SECRET not in response.text


async def test_a_metrics_app_created_after_the_first_scrape_takes_over(
    secret_registry: CollectorRegistry,
) -> None:
    """The middleware serves `/metrics` until a MetricsApp of its registry exists, then
    hands the request down to the application."""
    app = make("starlette", [], secret_registry)
    async with client_for(app) as client:
        assert SECRET in (await client.get("/metrics")).text
        app.router.routes.append(
            Mount("/internal", app=require_header(MetricsApp(secret_registry)))
        )
        late = await client.get("/metrics")
    assert late.status_code == 404
    assert SECRET not in late.text


async def test_a_metrics_app_of_another_registry_leaves_the_own_endpoint_alone(
    secret_registry: CollectorRegistry,
) -> None:
    """With no MetricsApp of its registry, the middleware keeps serving its own `/metrics`."""
    other = MetricsApp(CollectorRegistry())
    app = make("starlette", [], secret_registry)
    response = await get(app, "/metrics")
    assert response.status_code == 200
    assert SECRET in response.text
    assert other.registry is not secret_registry


@starlettes
@pytest.mark.parametrize(
    "route",
    [
        lambda metrics: Host("internal.local", app=metrics),
        lambda metrics: Mount("/", app=metrics),
    ],
    ids=["host", "root-mount"],
)
async def test_a_token_less_metrics_app_without_a_bare_path_refuses_the_middleware_token(
    framework: str, route: Any, secret_registry: CollectorRegistry
) -> None:
    """`PrometheusMiddleware(bearer_token=...)` with a token-less MetricsApp under a Host or
    at a root mount: the misconfiguration raises, the token is never dropped silently."""
    app = make(framework, [route(MetricsApp(secret_registry))], secret_registry, bearer_token=TOKEN)
    with pytest.raises(ValueError, match="bearer_token"):
        async with client_for(app, raise_app_exceptions=True) as client:
            await client.get("/metrics", headers={"host": "internal.local"})


def test_a_host_metrics_app_on_uvicorn_is_not_served_to_other_hosts(
    secret_registry: CollectorRegistry,
) -> None:
    """On a real uvicorn, the Host's MetricsApp is read on its Host only."""
    app = make(
        "starlette", [Host("internal.local", app=MetricsApp(secret_registry))], secret_registry
    )
    with uvicorn_thread(app, log_level="warning", lifespan="off") as url:
        public = httpx.get(f"{url}/metrics", headers={"Host": "public.example"}, timeout=5)
        internal = httpx.get(f"{url}/metrics", headers={"Host": "internal.local"}, timeout=5)
    assert public.status_code == 404
    assert SECRET not in public.text
    assert SECRET in internal.text


# --- 2. a PrometheusMiddleware below -----------------------------------------------------


async def test_an_outer_middleware_leaves_metrics_to_the_token_protected_inner_one(
    secret_registry: CollectorRegistry,
) -> None:
    """An outer PrometheusMiddleware (same path) hands `/metrics` to the inner one, whose
    token applies: 401 without it, 200 with it."""
    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(PrometheusMiddleware, registry=secret_registry, bearer_token=TOKEN)
    app.add_middleware(PrometheusMiddleware, registry=secret_registry)
    assert (await get(app, "/metrics")).status_code == 401
    allowed = await get(app, "/metrics", authorization=f"Bearer {TOKEN}")
    assert SECRET in allowed.text


async def test_an_outer_middleware_token_over_a_token_less_inner_one_is_refused(
    secret_registry: CollectorRegistry,
) -> None:
    """The outer middleware's token would be dropped by the inner one: it raises, naming it."""
    app = Starlette(routes=[Route("/", home)])
    app.add_middleware(PrometheusMiddleware, registry=secret_registry)
    app.add_middleware(PrometheusMiddleware, registry=secret_registry, bearer_token=TOKEN)
    with pytest.raises(ValueError, match="PrometheusMiddleware below"):
        async with client_for(app, raise_app_exceptions=True) as client:
            await client.get("/metrics")


# --- 3. the application routes metrics_path itself ---------------------------------------


@pytest.mark.parametrize(
    ("rule", "status"), [("/metrics", 403), ("/metrics/", 308), ("/<name>", 403)], ids=str
)
async def test_a_quart_rule_for_the_metrics_path_is_left_to_the_application(
    rule: str, status: int, secret_registry: CollectorRegistry
) -> None:
    """A Quart rule matching `/metrics` (exactly, by its slash redirect, or by a variable)
    keeps the application's answer; the middleware never serves the registry there."""
    app = Quart(__name__)

    async def refuse(**_: str) -> str:
        abort(403)

    app.add_url_rule(rule, "refuse", refuse)
    app.asgi_app = PrometheusMiddleware(app.asgi_app, registry=secret_registry)  # type: ignore[assignment, arg-type]
    response = await get(app, "/metrics")
    assert response.status_code == status
    assert SECRET not in response.text


async def test_a_quart_app_without_the_rule_gets_the_middleware_endpoint(
    secret_registry: CollectorRegistry,
) -> None:
    """A Quart app that routes no `/metrics`: the middleware serves its registry there."""
    app = Quart(__name__)
    app.add_url_rule("/other", "other", lambda: "x")
    app.asgi_app = PrometheusMiddleware(app.asgi_app, registry=secret_registry)  # type: ignore[assignment, arg-type]
    assert SECRET in (await get(app, "/metrics")).text


@starlettes
async def test_a_starlette_pattern_route_matching_the_metrics_path_keeps_its_answer(
    framework: str, secret_registry: CollectorRegistry
) -> None:
    """`Route("/{page}")` matches `/metrics`: the application's page answers."""
    app = make(framework, [Route("/{page}", page)], secret_registry)
    response = await get(app, "/metrics")
    assert response.text == "page metrics"


@starlettes
async def test_a_slash_route_reached_by_redirect_keeps_the_redirect(
    framework: str, secret_registry: CollectorRegistry
) -> None:
    """`Route("/metrics/")`: `/metrics` is Starlette's redirect to it, not the registry."""
    app = make(framework, [Route("/metrics/", home)], secret_registry)
    response = await get(app, "/metrics")
    assert response.status_code == 307
    assert SECRET not in response.text


@starlettes
async def test_an_application_mounted_at_the_root_leaves_the_metrics_path_to_the_middleware(
    framework: str, secret_registry: CollectorRegistry
) -> None:
    """`Mount("/", app=static_site)` (a catch-all that is no MetricsApp): the middleware
    still serves `/metrics`, as documented."""

    async def static_site(scope: Scope, receive: Receive, send: Send) -> None:
        await PlainTextResponse("static")(scope, receive, send)

    app = make(framework, [Mount("/", app=static_site)], secret_registry)
    assert SECRET in (await get(app, "/metrics")).text


# --- 4. no dead code ---------------------------------------------------------------------


def test_every_private_module_level_function_is_used() -> None:
    """Every module-level function of a private module is referenced beyond its definition
    (and its own recursion)."""
    sources = {path: path.read_text(encoding="utf-8") for path in PACKAGE.glob("*.py")}
    everything = "\n".join(sources.values())
    unused = []
    for path, text in sources.items():
        if path.name in {"__init__.py", "exporter.py", "multiprocess.py"}:
            continue  # public modules
        for node in ast.parse(text).body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            name = node.name
            own = sum(isinstance(inner, ast.Name) and inner.id == name for inner in ast.walk(node))
            uses = len(re.findall(rf"\b{re.escape(name)}\b", everything)) - 1 - own
            exported = re.search(rf"['\"]{re.escape(name)}['\"]", everything)
            if uses <= 0 and not exported and not name.startswith("__"):
                unused.append(f"{path.name}:{node.lineno} {name}")
    assert unused == []
