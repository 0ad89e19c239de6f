"""The metrics endpoint inside composed applications: the application's own protections
(auth middleware, a mount's middleware, a sub-application's middleware, Host routing)
apply at the bare path `/metrics` exactly as at `/metrics/`; a middleware token is never
silently dropped; configured tokens are stripped; a route resolver's value is cleaned."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _asgi import RecordingSend, ScriptedReceive, client_for, http_scope
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Host, Mount, Route

from gatewayz_metrics import BEARER_TOKEN_ENV, MetricsApp, PrometheusMiddleware
from gatewayz_metrics._exposition import BEARER_TOKEN_FILE_ENV

TOKEN = "s3cret-scrape-token"
PASS = {"X-Internal": "yes"}
EXPOSITION = "# TYPE"
STARLETTES = ["starlette", "fastapi"]
starlettes = pytest.mark.parametrize("framework", STARLETTES, ids=STARLETTES)


class Auth:
    """An auth middleware as teams write them: 403 unless `X-Internal: yes`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (b"x-internal", b"yes") not in scope["headers"]:
            response = PlainTextResponse("forbidden", status_code=403)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


async def ping(request: Request) -> PlainTextResponse:
    return PlainTextResponse("pong")


async def public_metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse("the application's own /metrics page")


def make(framework: str, routes: list[BaseRoute]) -> Starlette | FastAPI:
    """A Starlette or FastAPI app with `routes` and a `/ping` route."""
    every = [Route("/ping", ping), *routes]
    return Starlette(routes=every) if framework == "starlette" else FastAPI(routes=every)


def auth_inside_the_middleware(framework: str, registry: CollectorRegistry) -> Any:
    """`add_middleware(Auth)` then `add_middleware(PrometheusMiddleware)`: Auth runs inside."""
    app = make(framework, [Mount("/metrics", MetricsApp(registry))])
    app.add_middleware(Auth)
    app.add_middleware(PrometheusMiddleware, registry=registry)
    return app


def auth_on_the_mount(framework: str, registry: CollectorRegistry) -> Any:
    """`Mount("/internal", routes=[Mount("/metrics", ...)], middleware=[Auth])`."""
    inner = Mount("/metrics", MetricsApp(registry))
    app = make(framework, [Mount("/internal", routes=[inner], middleware=[Middleware(Auth)])])
    app.add_middleware(PrometheusMiddleware, registry=registry)
    return app


def auth_on_a_sub_application(framework: str, registry: CollectorRegistry) -> Any:
    """A sub-application with its own `add_middleware(Auth)`, mounted at `/internal`."""
    sub = Starlette(routes=[Mount("/metrics", MetricsApp(registry))])
    sub.add_middleware(Auth)
    app = make(framework, [Mount("/internal", app=sub)])
    app.add_middleware(PrometheusMiddleware, registry=registry)
    return app


def auth_wrapping_the_metrics_app(framework: str, registry: CollectorRegistry) -> Any:
    """`Mount("/metrics", app=Auth(MetricsApp()))`: the wrapper is the protection."""
    app = make(framework, [Mount("/metrics", app=Auth(MetricsApp(registry)))])
    app.add_middleware(PrometheusMiddleware, registry=registry)
    return app


def host_only(framework: str, registry: CollectorRegistry) -> Any:
    """A MetricsApp mounted only under `Host("internal.local")`."""
    metrics = Host(
        "internal.local", app=Starlette(routes=[Mount("/metrics", MetricsApp(registry))])
    )
    app = make(framework, [metrics])
    app.add_middleware(PrometheusMiddleware, registry=registry)
    return app


Setup = Callable[[str, CollectorRegistry], Any]
PROTECTED: list[tuple[Setup, str, dict[str, str]]] = [
    (auth_inside_the_middleware, "/metrics", PASS),
    (auth_on_the_mount, "/internal/metrics", PASS),
    (auth_on_a_sub_application, "/internal/metrics", PASS),
    (auth_wrapping_the_metrics_app, "/metrics", PASS),
    (host_only, "/metrics", {"Host": "internal.local"}),
]
PROTECTED_IDS = [setup.__name__ for setup, _, _ in PROTECTED]
protected = pytest.mark.parametrize(("setup", "path", "allowed"), PROTECTED, ids=PROTECTED_IDS)


@starlettes
@protected
async def test_the_bare_path_is_refused_where_the_application_refuses(
    framework: str,
    setup: Setup,
    path: str,
    allowed: dict[str, str],
    registry: CollectorRegistry,
) -> None:
    """Without what the application asks for, the bare path is refused (403 or 404) like the
    slash path; with it, both are the exposition, and the bare path is never redirected."""
    async with client_for(setup(framework, registry)) as client:
        await client.get("/ping")
        refused = [await client.get(p) for p in (path, path + "/")]
        served = [await client.get(p, headers=allowed) for p in (path, path + "/")]
    assert [r.status_code for r in refused] in ([403, 403], [404, 404])
    assert not any(EXPOSITION in r.text for r in refused)
    assert [r.status_code for r in served] == [200, 200]
    assert all(EXPOSITION in r.text and "http_requests" in r.text for r in served)


@starlettes
@protected
@pytest.mark.parametrize("root_path", ["", "/api"], ids=["no-root-path", "root-path"])
async def test_the_bare_path_gets_exactly_what_the_slash_path_gets(
    framework: str,
    setup: Setup,
    path: str,
    allowed: dict[str, str],
    root_path: str,
    registry: CollectorRegistry,
) -> None:
    """For every method, query, negotiation and credential, `/metrics` answers with the
    status and kind of body that `/metrics/` gets, behind a root path too."""
    compared = 0
    async with client_for(setup(framework, registry), root_path=root_path) as client:
        await client.get(root_path + "/ping")
        for method in ("GET", "HEAD"):
            for query in ("", "?name[]=http_requests"):
                for headers in ({}, allowed, {**allowed, "Accept-Encoding": "gzip"}):
                    answers = [
                        await client.request(method, root_path + p + query, headers=headers)
                        for p in (path, path + "/")
                    ]
                    bare, slash = answers
                    assert bare.status_code == slash.status_code, (method, query, headers)
                    assert (EXPOSITION in bare.text) == (EXPOSITION in slash.text)
                    assert bare.headers.get("content-type") == slash.headers.get("content-type")
                    compared += 1
    assert compared == 12


@starlettes
async def test_no_spelling_of_the_path_reaches_the_metrics_around_the_auth(
    framework: str, registry: CollectorRegistry
) -> None:
    """Percent-encoding, double and trailing slashes, HEAD and `name[]`: never the exposition
    without the application's credential."""
    spellings = ["/metrics", "/%6Detrics", "/metrics/", "//metrics", "/metrics//", "/metrics/."]
    async with client_for(auth_inside_the_middleware(framework, registry)) as client:
        for spelling in spellings:
            for method in ("GET", "HEAD"):
                url = f"http://testserver{spelling}?name[]=http_requests"
                response = await client.request(method, url)
                assert response.status_code in (403, 404), (spelling, method)
                assert EXPOSITION not in response.text


@starlettes
async def test_a_route_of_the_application_at_metrics_path_is_not_shadowed(
    framework: str, registry: CollectorRegistry
) -> None:
    """When the application routes `/metrics` itself, the middleware leaves it to it."""
    app = make(framework, [Route("/metrics", public_metrics)])
    app.add_middleware(PrometheusMiddleware, registry=registry)
    async with client_for(app) as client:
        response = await client.get("/metrics")
    assert response.text == "the application's own /metrics page"


@starlettes
async def test_a_host_specific_mount_leaves_the_public_bare_route_alone(
    framework: str, registry: CollectorRegistry
) -> None:
    """A MetricsApp under `Host("internal.local")` and a public `/metrics` route for every
    other host: other hosts keep the public route."""
    internal = Host(
        "internal.local", app=Starlette(routes=[Mount("/metrics", MetricsApp(registry))])
    )
    app = make(framework, [internal, Route("/metrics", public_metrics)])
    app.add_middleware(PrometheusMiddleware, registry=registry)
    async with client_for(app) as client:
        public = await client.get("/metrics")
        slash = await client.get("/metrics/", headers={"Host": "internal.local"})
    assert public.text == "the application's own /metrics page"
    assert slash.status_code == 200
    assert EXPOSITION in slash.text


@starlettes
async def test_scrapes_at_the_bare_and_slash_path_are_not_recorded(
    framework: str, registry: CollectorRegistry
) -> None:
    """The scrapes of a mounted MetricsApp stay out of the request metrics, refused or not."""
    async with client_for(auth_on_the_mount(framework, registry)) as client:
        await client.get("/ping")
        for path in ("/internal/metrics", "/internal/metrics/"):
            await client.get(path)
            await client.get(path, headers=PASS)
    endpoints = {s.labels.get("endpoint") for f in registry.collect() for s in f.samples}
    assert endpoints - {None} == {"/ping"}


# --- a middleware token and mounted MetricsApps -------------------------------------------


async def run_lifespan(app: Any) -> list[dict[str, Any]]:
    """Drive the lifespan start-up of `app` and return what it sent."""
    receive = ScriptedReceive([{"type": "lifespan.startup"}])
    send = RecordingSend()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}

    async def stop_after_startup() -> dict[str, Any]:
        message = await receive()
        return dict(message)

    task = asyncio.ensure_future(app(scope, stop_after_startup, send))
    while not send.messages:
        await asyncio.sleep(0.001)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return send.messages


@starlettes
@pytest.mark.parametrize("mounted_token", [None, "another-token"], ids=["no-token", "other"])
async def test_a_middleware_token_the_mount_would_drop_fails_the_start_up(
    framework: str, mounted_token: str | None, registry: CollectorRegistry
) -> None:
    """`PrometheusMiddleware(bearer_token=...)` with a MetricsApp mounted without that token:
    the start-up fails with a message naming the mount, never serves unprotected."""
    app = make(framework, [Mount("/metrics", MetricsApp(registry, bearer_token=mounted_token))])
    app.add_middleware(PrometheusMiddleware, registry=registry, bearer_token=TOKEN)
    sent = await run_lifespan(app)
    assert sent[0]["type"] == "lifespan.startup.failed"
    assert "/metrics" in sent[0]["message"]
    assert "bearer_token" in sent[0]["message"]
    assert TOKEN not in sent[0]["message"]


@starlettes
async def test_without_lifespan_the_first_request_refuses_the_dropped_token(
    framework: str, registry: CollectorRegistry
) -> None:
    """Served without a lifespan, the misconfiguration raises; the metrics never leak."""
    app = make(framework, [Mount("/metrics", MetricsApp(registry))])
    app.add_middleware(PrometheusMiddleware, registry=registry, bearer_token=TOKEN)
    with pytest.raises(ValueError, match="bearer_token"):
        async with client_for(app, raise_app_exceptions=True) as client:
            await client.get("/metrics")


@starlettes
async def test_the_same_token_on_both_starts_and_protects(
    framework: str, registry: CollectorRegistry
) -> None:
    """The same token on the middleware and the mount: start-up succeeds; 401 without it."""
    app = make(framework, [Mount("/metrics", MetricsApp(registry, bearer_token=TOKEN))])
    app.add_middleware(PrometheusMiddleware, registry=registry, bearer_token=TOKEN + "\n")
    sent = await run_lifespan(app)
    assert sent[0]["type"] == "lifespan.startup.complete"
    async with client_for(app) as client:
        refused = await client.get("/metrics")
        allowed = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert (refused.status_code, allowed.status_code) == (401, 200)


@starlettes
async def test_the_token_from_the_environment_covers_both(
    framework: str, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`GATEWAYZ_METRICS_BEARER_TOKEN` is read by the middleware and the mounted app alike:
    a valid configuration, protected at both paths."""
    monkeypatch.setenv(BEARER_TOKEN_ENV, TOKEN)
    app = make(framework, [Mount("/metrics", MetricsApp(registry))])
    app.add_middleware(PrometheusMiddleware, registry=registry)
    sent = await run_lifespan(app)
    assert sent[0]["type"] == "lifespan.startup.complete"
    async with client_for(app) as client:
        statuses = [(await client.get(p)).status_code for p in ("/metrics", "/metrics/")]
    assert statuses == [401, 401]


# --- configured tokens ----------------------------------------------------------------


@pytest.mark.parametrize("written", [f"{TOKEN}\n", f"  {TOKEN}\r\n", f"\t{TOKEN} "])
@pytest.mark.parametrize("source", ["argument", "environment"])
async def test_a_configured_token_is_stripped_of_surrounding_whitespace(
    written: str, source: str, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token read from a secret file keeps its newline; the client sends the token alone."""
    if source == "environment":
        monkeypatch.setenv(BEARER_TOKEN_ENV, written)
        app = MetricsApp(registry)
    else:
        app = MetricsApp(registry, bearer_token=written)
    send = RecordingSend()
    authorization = (b"authorization", f"Bearer {TOKEN}".encode())
    await app(http_scope("/", headers=[authorization]), ScriptedReceive(), send)
    assert send.status == 200


@pytest.mark.parametrize("blank", ["", " ", "\n", " \t\r\n"], ids=["empty", "space", "nl", "mix"])
def test_a_blank_token_is_refused_clearly(
    blank: str, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blank token (argument or middleware) is a ValueError; so is a blank variable."""
    with pytest.raises(ValueError, match="bearer_token must not be empty or blank"):
        MetricsApp(registry, bearer_token=blank)
    with pytest.raises(ValueError, match="bearer_token must not be empty or blank"):
        PrometheusMiddleware(MetricsApp(registry), registry=registry, bearer_token=blank)
    if blank:  # an empty variable means "unset"
        monkeypatch.setenv(BEARER_TOKEN_ENV, blank)
        with pytest.raises(ValueError, match=f"{BEARER_TOKEN_ENV} must not be empty or blank"):
            MetricsApp(registry)


async def test_the_token_can_come_from_a_secret_file(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`GATEWAYZ_METRICS_BEARER_TOKEN_FILE` names a Docker/Kubernetes secret file; its
    trailing newline is not part of the token."""
    secret = tmp_path / "metrics-token"
    secret.write_text(TOKEN + "\n")
    monkeypatch.setenv(BEARER_TOKEN_FILE_ENV, str(secret))
    app = MetricsApp(registry)
    allowed, refused = RecordingSend(), RecordingSend()
    authorization = (b"authorization", f"Bearer {TOKEN}".encode())
    await app(http_scope("/", headers=[authorization]), ScriptedReceive(), allowed)
    await app(http_scope("/"), ScriptedReceive(), refused)
    assert (allowed.status, refused.status) == (200, 401)


def test_a_secret_file_that_cannot_serve_is_refused_clearly(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A missing or blank secret file, or both variables set: a ValueError naming the cause."""
    monkeypatch.setenv(BEARER_TOKEN_FILE_ENV, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=f"{BEARER_TOKEN_FILE_ENV}: cannot read"):
        MetricsApp(registry)
    blank = tmp_path / "blank"
    blank.write_text("\n")
    monkeypatch.setenv(BEARER_TOKEN_FILE_ENV, str(blank))
    with pytest.raises(ValueError, match="must not be empty or blank"):
        MetricsApp(registry)
    monkeypatch.setenv(BEARER_TOKEN_ENV, TOKEN)
    with pytest.raises(ValueError, match="not both"):
        MetricsApp(registry)


# --- the route resolver's value --------------------------------------------------------


async def test_a_route_resolver_value_is_cleaned_like_every_label(
    registry: CollectorRegistry,
) -> None:
    """A lone surrogate from `route_resolver` becomes `?`; every later scrape is a 200."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    wrapped = PrometheusMiddleware(
        app, registry=registry, route_resolver=lambda scope: "/odd/\ud800"
    )
    async with client_for(wrapped) as client:
        await client.get("/odd/1")
        scrapes = [await client.get("/metrics") for _ in range(2)]
    assert [s.status_code for s in scrapes] == [200, 200]
    labels = {'endpoint="/odd/?"' in s.text for s in scrapes}
    assert labels == {True}


@starlettes
async def test_a_metrics_app_mounted_after_the_first_request_takes_over(
    framework: str, registry: CollectorRegistry
) -> None:
    """A protected MetricsApp mounted while serving replaces the middleware's own,
    unprotected `/metrics` at the next scrape."""
    app = make(framework, [])
    app.add_middleware(PrometheusMiddleware, registry=registry)
    async with client_for(app) as client:
        before = await client.get("/metrics")
        app.mount("/metrics", Auth(MetricsApp(registry)))
        after = await client.get("/metrics")
        allowed = await client.get("/metrics", headers=PASS)
    assert before.status_code == 200
    assert (after.status_code, allowed.status_code) == (403, 200)
