"""`MetricsApp` and the `/metrics` endpoint: where it is served, formats, compression,
filtering, methods, rendering off the event loop, bearer tokens, failures, promtool."""

from __future__ import annotations

import asyncio
import gzip
import inspect
import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _apps import FRAMEWORKS, build_app
from _asgi import RecordingSend, ScriptedReceive, client_for, http_scope
from _binaries import require_binary
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from quart import Quart
from starlette.applications import Starlette

from gatewayz_metrics import BEARER_TOKEN_ENV, MetricsApp, PrometheusMiddleware

frameworks = pytest.mark.parametrize("framework", FRAMEWORKS, ids=FRAMEWORKS)
starlettes = pytest.mark.parametrize(
    "framework", ["starlette", "fastapi"], ids=["starlette", "fastapi"]
)
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
TOKEN = "s3cret-scrape-token"


def family_names(text: str) -> set[str]:
    """The metric family names of an exposition (counters without `_total`)."""
    return {family.name for family in text_string_to_metric_families(text)}


def bare_app() -> Any:
    """A bare ASGI app answering `hello` to everything."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello"})

    return app


def with_mounted(framework: str, registry: CollectorRegistry, metrics: MetricsApp) -> Any:
    """The test app with a MetricsApp mounted at /metrics, the documented second setup."""
    app: Starlette | FastAPI = build_app(framework, registry)
    app.mount("/metrics", metrics)
    return app


# --- where /metrics is served ---------------------------------------------------------


@starlettes
async def test_add_middleware_alone_serves_metrics(
    framework: str, registry: CollectorRegistry
) -> None:
    """With only `add_middleware`, `GET /metrics` is a 200 answered by the middleware."""
    async with client_for(build_app(framework, registry)) as client:
        await client.get("/ping")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert "http_requests" in family_names(response.text)


@starlettes
async def test_a_mounted_metrics_app_answers_the_bare_path_without_redirect(
    framework: str, registry: CollectorRegistry
) -> None:
    """With a mounted MetricsApp, `/metrics` (no 307 to `/metrics/`) and `/metrics/` are 200s."""
    metrics = MetricsApp(registry)
    async with client_for(with_mounted(framework, registry, metrics)) as client:
        await client.get("/ping")
        bare = await client.get("/metrics")
        slash = await client.get("/metrics/")
    assert (bare.status_code, slash.status_code) == (200, 200)
    assert "location" not in bare.headers
    assert metrics.scrapes == 2
    assert "http_requests" in family_names(bare.text)
    endpoints = {s.labels.get("endpoint") for f in registry.collect() for s in f.samples}
    assert endpoints - {None} == {"/ping"}  # scrapes of the mount are not recorded


@starlettes
async def test_the_mounted_metrics_app_keeps_its_own_token_at_the_bare_path(
    framework: str, registry: CollectorRegistry
) -> None:
    """The bare mount path is answered by the mounted app, so its bearer token applies."""
    metrics = MetricsApp(registry, bearer_token=TOKEN)
    async with client_for(with_mounted(framework, registry, metrics)) as client:
        refused = await client.get("/metrics")
        allowed = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert (refused.status_code, allowed.status_code) == (401, 200)


@pytest.mark.parametrize("kind", ["quart", "bare"], ids=["quart", "bare-asgi"])
async def test_wrapped_apps_serve_metrics_at_metrics_path(
    kind: str, registry: CollectorRegistry
) -> None:
    """Quart and bare ASGI apps get `/metrics` from `PrometheusMiddleware(app, metrics_path=)`."""
    if kind == "quart":
        quart = Quart(__name__)
        quart.add_url_rule("/ping", "ping", lambda: "pong")
        quart.asgi_app = PrometheusMiddleware(  # type: ignore[assignment]
            quart.asgi_app,  # type: ignore[arg-type]
            registry=registry,
            metrics_path="/metrics",
        )
        app: Any = quart
    else:
        app = PrometheusMiddleware(bare_app(), registry=registry, metrics_path="/metrics")
    async with client_for(app) as client:
        await client.get("/ping")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert "http_requests" in family_names(response.text)


async def test_metrics_path_can_be_moved_or_switched_off(registry: CollectorRegistry) -> None:
    """`metrics_path="/internal/metrics"` serves there; `metrics_path=None` serves nothing."""
    moved = PrometheusMiddleware(bare_app(), registry=registry, metrics_path="/internal/metrics")
    off = PrometheusMiddleware(bare_app(), registry=registry, metrics_path=None)
    async with client_for(moved) as one, client_for(off) as two:
        assert "http_requests" in family_names((await one.get("/internal/metrics")).text)
        assert (await one.get("/metrics")).text == "hello"
        assert (await two.get("/metrics")).text == "hello"


def test_metrics_path_must_be_absolute(registry: CollectorRegistry) -> None:
    """A metrics path without a leading slash is a ValueError naming it."""
    with pytest.raises(ValueError, match="'metrics'"):
        PrometheusMiddleware(bare_app(), registry=registry, metrics_path="metrics")


# --- formats, compression, filtering, methods ---------------------------------------


@frameworks
async def test_the_default_format_is_prometheus_text(
    framework: str, registry: CollectorRegistry
) -> None:
    """Without an Accept header the exposition is text format 0.0.4."""
    async with client_for(build_app(framework, registry)) as client:
        await client.get("/ping")
        response = await client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE http_requests_total counter" in response.text
    assert not response.text.rstrip().endswith("# EOF")


@frameworks
async def test_openmetrics_is_served_when_asked(
    framework: str, registry: CollectorRegistry
) -> None:
    """`Accept: application/openmetrics-text; version=1.0.0` gets OpenMetrics, `# EOF` last."""
    async with client_for(build_app(framework, registry)) as client:
        await client.get("/ping")
        response = await client.get("/metrics", headers={"Accept": OPENMETRICS})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n")
    assert "# TYPE http_requests counter" in response.text


async def test_gzip_when_accepted(registry: CollectorRegistry) -> None:
    """`Accept-Encoding: gzip` gets a gzip body that decompresses to the exposition."""
    Counter("demo_events", "Demo.", registry=registry).inc(3)
    app = MetricsApp(registry)
    zipped, plain = RecordingSend(), RecordingSend()
    await app(
        http_scope("/metrics", headers=[(b"accept-encoding", b"gzip")]), ScriptedReceive(), zipped
    )
    await app(http_scope("/metrics"), ScriptedReceive(), plain)
    assert zipped.headers[b"content-encoding"] == b"gzip"
    assert zipped.headers[b"vary"] == plain.headers[b"vary"] == b"Accept, Accept-Encoding"
    assert int(zipped.headers[b"content-length"]) == len(zipped.body)
    assert gzip.decompress(zipped.body) == plain.body
    assert b"demo_events_total 3.0" in plain.body
    assert b"content-encoding" not in plain.headers


@frameworks
async def test_name_filter_returns_only_the_named_families(
    framework: str, registry: CollectorRegistry
) -> None:
    """`?name[]=http_requests_total` returns that family alone; two names return two."""
    async with client_for(build_app(framework, registry)) as client:
        await client.get("/ping")
        one = await client.get("/metrics", params={"name[]": "http_requests_total"})
        two = await client.get(
            "/metrics",
            params=[("name[]", "http_requests_total"), ("name[]", "http_requests_in_progress")],
        )
    assert family_names(one.text) == {"http_requests"}
    assert family_names(two.text) == {"http_requests", "http_requests_in_progress"}


async def test_head_has_the_headers_of_get_and_no_body(registry: CollectorRegistry) -> None:
    """`HEAD /metrics` answers the GET headers (Content-Length included) with an empty body."""
    Counter("demo_events", "Demo.", registry=registry).inc()
    app = MetricsApp(registry)
    get, head = RecordingSend(), RecordingSend()
    await app(http_scope("/metrics"), ScriptedReceive(), get)
    await app(http_scope("/metrics", method="HEAD"), ScriptedReceive(), head)
    assert (get.status, head.status) == (200, 200)
    assert head.body == b""
    assert get.body
    assert head.headers == get.headers


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_other_methods_are_405_with_allow(registry: CollectorRegistry, method: str) -> None:
    """Anything but GET and HEAD is a 405 that names the allowed methods."""
    async with client_for(PrometheusMiddleware(bare_app(), registry=registry)) as client:
        response = await client.request(method, "/metrics")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD"


async def test_the_lifespan_protocol_is_answered(registry: CollectorRegistry) -> None:
    """Run as a whole application, MetricsApp completes startup and shutdown."""
    receive = ScriptedReceive([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    send = RecordingSend()
    await asyncio.wait_for(MetricsApp(registry)({"type": "lifespan"}, receive, send), timeout=5)
    assert [m["type"] for m in send.messages] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


async def test_a_websocket_is_refused(registry: CollectorRegistry) -> None:
    """A websocket to the metrics app is closed, never accepted."""
    send = RecordingSend()
    scope = {"type": "websocket", "path": "/metrics", "headers": []}
    receive = ScriptedReceive([{"type": "websocket.connect"}])
    await asyncio.wait_for(MetricsApp(registry)(scope, receive, send), timeout=5)
    assert [m["type"] for m in send.messages] == ["websocket.close"]


# --- rendering off the event loop -----------------------------------------------------


class SlowCollector:
    """A collector whose `collect()` blocks its thread for `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.started = threading.Event()
        self.finished = threading.Event()

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        self.started.set()
        time.sleep(self.delay)
        self.finished.set()
        yield GaugeMetricFamily("slow_value", "A value that is slow to compute.", value=1)


async def wait_for_thread_event(event: threading.Event, timeout: float = 5) -> None:
    """Poll a threading.Event from the event loop without blocking it."""
    deadline = time.monotonic() + timeout
    while not event.is_set():
        assert time.monotonic() < deadline, "the event was never set"
        await asyncio.sleep(0.005)


@frameworks
async def test_a_slow_scrape_does_not_stall_other_requests(
    framework: str, registry: CollectorRegistry
) -> None:
    """While a 0.5 s collector renders, `/ping` on the same event loop answers in < 0.25 s."""
    slow = SlowCollector(0.5)
    registry.register(slow)
    async with client_for(build_app(framework, registry)) as client:
        scrape = asyncio.ensure_future(client.get("/metrics"))
        await wait_for_thread_event(slow.started)
        assert not slow.finished.is_set(), "the render blocked the event loop"
        began = time.perf_counter()
        ping = await client.get("/ping")
        elapsed = time.perf_counter() - began
        rendering_during_ping = not slow.finished.is_set()
        response = await scrape
    assert ping.status_code == 200
    assert rendering_during_ping
    assert elapsed < 0.25
    assert response.status_code == 200
    assert "slow_value 1.0" in response.text


@frameworks
async def test_concurrent_scrapes_share_one_render(
    framework: str, registry: CollectorRegistry
) -> None:
    """Ten concurrent scrapes with a slow collector cost fewer renders than scrapes."""
    registry.register(SlowCollector(0.5))
    metrics = MetricsApp(registry)
    app = build_app(framework, registry, metrics_path=None)
    if framework == "quart":
        app.asgi_app = _route_metrics(app.asgi_app, metrics)
    else:
        app.mount("/metrics", metrics)
    async with client_for(app) as client:
        responses = await asyncio.gather(*(client.get("/metrics") for _ in range(10)))
    assert [r.status_code for r in responses] == [200] * 10
    assert len({r.text for r in responses}) == 1
    assert metrics.scrapes == 10
    assert metrics.renders < metrics.scrapes


def _route_metrics(app: Any, metrics: MetricsApp) -> Any:
    """Send `/metrics` to `metrics`, everything else to `app` (a Quart app has no mount)."""

    async def router(scope: Any, receive: Any, send: Any) -> None:
        target = metrics if scope.get("path") == "/metrics" else app
        await target(scope, receive, send)

    return router


# --- the signature and bearer tokens ----------------------------------------------------


def test_the_signature_is_registry_then_keyword_only_options() -> None:
    """`MetricsApp(registry=None, *, bearer_token=None, ...)`."""
    parameters = inspect.signature(MetricsApp).parameters
    registry, token = parameters["registry"], parameters["bearer_token"]
    assert list(parameters)[:2] == ["registry", "bearer_token"]
    assert registry.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert registry.default is None
    assert token.kind is inspect.Parameter.KEYWORD_ONLY
    assert token.default is None
    assert all(
        p.kind is inspect.Parameter.KEYWORD_ONLY
        for name, p in parameters.items()
        if name != "registry"
    )


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        (f"Bearer {TOKEN}x", 401),
        (f"Bearer {TOKEN[:-1]}", 401),
        (f"Basic {TOKEN}", 401),
        (f"Bearer {TOKEN}", 200),
        (f"bearer {TOKEN}", 200),
    ],
    ids=["missing", "wrong", "prefix", "other-scheme", "right", "scheme-any-case"],
)
async def test_the_bearer_token_argument_protects_the_endpoint(
    registry: CollectorRegistry, authorization: str | None, status: int
) -> None:
    """`MetricsApp(bearer_token=...)` is a 401 with `www-authenticate` unless the token matches."""
    headers = {} if authorization is None else {"Authorization": authorization}
    async with client_for(MetricsApp(registry, bearer_token=TOKEN)) as client:
        response = await client.get("/metrics", headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "http_" not in response.text


async def test_the_bearer_token_comes_from_the_environment(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without `bearer_token=`, GATEWAYZ_METRICS_BEARER_TOKEN protects the endpoint."""
    monkeypatch.setenv(BEARER_TOKEN_ENV, "from-the-environment")
    assert BEARER_TOKEN_ENV == "GATEWAYZ_METRICS_BEARER_TOKEN"
    async with client_for(MetricsApp(registry)) as client:
        refused = await client.get("/metrics")
        allowed = await client.get(
            "/metrics", headers={"Authorization": "Bearer from-the-environment"}
        )
    assert refused.status_code == 401
    assert "www-authenticate" in refused.headers
    assert allowed.status_code == 200


@pytest.mark.parametrize(
    ("method", "params", "accept"),
    [
        ("GET", None, None),
        ("HEAD", None, None),
        ("GET", {"name[]": "http_requests_total"}, None),
        ("GET", None, OPENMETRICS),
    ],
    ids=["get", "head", "name-filter", "openmetrics"],
)
@frameworks
async def test_the_middleware_served_endpoint_is_protected_too(
    framework: str,
    registry: CollectorRegistry,
    method: str,
    params: dict[str, str] | None,
    accept: str | None,
) -> None:
    """`PrometheusMiddleware(app, bearer_token=...)` guards `/metrics` on every variant."""
    app = build_app(framework, registry, bearer_token=TOKEN)
    headers = {} if accept is None else {"Accept": accept}
    authorized = {**headers, "Authorization": f"Bearer {TOKEN}"}
    async with client_for(app) as client:
        await client.get("/ping")
        refused = await client.request(method, "/metrics", params=params, headers=headers)
        allowed = await client.request(method, "/metrics", params=params, headers=authorized)
    assert refused.status_code == 401
    assert "www-authenticate" in refused.headers
    assert allowed.status_code == 200
    if method == "GET":
        assert "http_requests" in family_names(allowed.text)


# --- a failing collector ----------------------------------------------------------------


class FailingCollector:
    """A collector that raises while `failing` is true."""

    def __init__(self) -> None:
        self.failing = True

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        if self.failing:
            raise RuntimeError("database at 10.0.0.7 refused the connection")
        yield GaugeMetricFamily("recovered", "Back to normal.", value=1)


async def test_a_failing_collector_is_a_short_500_then_recovers(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """A raising collector gives a short plain-text 500, logged once; once fixed, a 200."""
    collector = FailingCollector()
    registry.register(collector)
    with caplog.at_level(logging.ERROR, logger="gatewayz_metrics"):
        async with client_for(MetricsApp(registry)) as client:
            first = await client.get("/metrics")
            second = await client.get("/metrics")
            collector.failing = False
            recovered = await client.get("/metrics")
    assert (first.status_code, second.status_code) == (500, 500)
    assert first.headers["content-type"].startswith("text/plain")
    assert first.text == "metrics collection failed: RuntimeError\n"
    assert "10.0.0.7" not in first.text  # the details go to the log, not to the scraper
    logged = [r for r in caplog.records if "metrics collection failed" in r.getMessage()]
    assert len(logged) == 1
    assert recovered.status_code == 200
    assert "recovered 1.0" in recovered.text


# --- promtool -----------------------------------------------------------------------------


@pytest.mark.prometheus
async def test_promtool_accepts_the_exposition(registry: CollectorRegistry, tmp_path: Path) -> None:
    """`promtool check metrics` reports nothing on the exposition of an app after traffic."""
    promtool = require_binary("promtool")
    async with client_for(build_app("starlette", registry)) as client:
        await client.get("/ping")
        await client.get("/items/1")
        await client.post("/echo", content=b"x" * 100)
        await client.get("/stream")
        await client.get("/boom")
        await client.get("/no/such/path")
        await client.request("BREW", "/ping")
        exposition = await client.get("/metrics")
    assert exposition.status_code == 200
    path = tmp_path / "metrics.txt"
    path.write_bytes(exposition.content)

    def check() -> subprocess.CompletedProcess[str]:
        with path.open() as stdin:
            return subprocess.run(
                [promtool, "check", "metrics"],
                stdin=stdin,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )

    result = await asyncio.to_thread(check)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
