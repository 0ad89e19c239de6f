"""`MetricsApp` and `PrometheusMiddleware` on both event loops Starlette runs on: asyncio and
trio (through anyio). Each test runs the same code under `anyio.run(..., backend=...)`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from _asgi import RecordingSend, ScriptedReceive, http_scope
from _collectors import GatedCollector, wait_for
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from gatewayz_metrics import MetricsApp, PrometheusMiddleware

BACKENDS = ["asyncio", "trio"]
backends = pytest.mark.parametrize("backend", BACKENDS, ids=BACKENDS)


def run(backend: str, main: Callable[[], Awaitable[None]]) -> None:
    """Run `main` on `backend`'s event loop."""
    anyio.run(main, backend=backend)


class CustomCollector:
    """A custom collector: rendered by prometheus_client in a worker thread."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("custom_value", "Custom.", value=7)


async def ping(request: Request) -> PlainTextResponse:
    return PlainTextResponse("pong")


def starlette_app(registry: CollectorRegistry, *, mounted: bool) -> Starlette:
    """A Starlette app instrumented, serving metrics itself or from a mounted MetricsApp."""
    routes: list[Any] = [Route("/ping", ping)]
    if mounted:
        routes.append(Mount("/metrics", MetricsApp(registry)))
    app = Starlette(routes=routes)
    app.add_middleware(PrometheusMiddleware, registry=registry)
    return app


def families(text: str) -> dict[str, Any]:
    """The families of an exposition by name."""
    return {family.name: family for family in text_string_to_metric_families(text)}


@backends
@pytest.mark.parametrize("mounted", [False, True], ids=["middleware-served", "mounted"])
def test_every_kind_of_scrape_is_served(
    backend: str, mounted: bool, registry: CollectorRegistry
) -> None:
    """Text (rendered on the loop), OpenMetrics, gzip and `name[]` (worker thread), a custom
    collector: 200s with the recorded requests, on asyncio and on trio."""
    registry.register(CustomCollector())
    Gauge("callback_value", "A callback.", registry=registry).set_function(lambda: 3.0)
    app = starlette_app(registry, mounted=mounted)

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            await client.get("/ping")
            text = await client.get("/metrics")
            om = await client.get(
                "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
            )
            zipped = await client.get("/metrics", headers={"Accept-Encoding": "gzip"})
            named = await client.get("/metrics", params={"name[]": "callback_value"})
        assert [r.status_code for r in (text, om, zipped, named)] == [200] * 4, text.text
        found = families(text.text)
        assert found["custom_value"].samples[0].value == 7
        assert found["callback_value"].samples[0].value == 3
        requests = found["http_requests"].samples
        assert any(s.labels["endpoint"] == "/ping" and s.value == 1 for s in requests)
        assert om.text.endswith("# EOF\n")
        assert zipped.headers["content-encoding"] == "gzip"
        assert "custom_value" in zipped.text  # httpx decompresses
        assert set(families(named.text)) == {"callback_value"}

    run(backend, main)


@backends
def test_a_large_registry_is_rendered_in_slices_that_let_other_tasks_run(
    backend: str, registry: CollectorRegistry
) -> None:
    """While 20,000 series render on the loop, another task of the same loop gets turns."""
    counter = Counter("many", "Many.", ["n"], registry=registry)
    for n in range(20_000):
        counter.labels(str(n)).inc()
    app = MetricsApp(registry)
    turns = 0

    async def main() -> None:
        nonlocal turns
        done = anyio.Event()
        send = RecordingSend()

        async def scrape() -> None:
            await app(http_scope("/"), ScriptedReceive(), send)
            done.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(scrape)
            while not done.is_set():
                await anyio.lowlevel.checkpoint()
                turns += 1
        assert send.status == 200
        assert send.body.count(b"\nmany_total{") == 20_000

    run(backend, main)
    assert turns >= 2


@backends
def test_a_scrape_during_a_render_gets_the_next_render(
    backend: str, registry: CollectorRegistry
) -> None:
    """A write between the start of a render and a scrape's arrival is in that scrape's
    answer; the scrapes that arrive during one render share the next."""
    counter = Counter("writes", "Writes.", registry=registry)
    gated = GatedCollector()
    registry.register(gated)
    app = MetricsApp(registry)
    answers: list[RecordingSend] = []

    async def scrape() -> None:
        send = RecordingSend()
        await app(http_scope("/"), ScriptedReceive(), send)
        answers.append(send)

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(scrape)
            await wait_for(gated.started)
            counter.inc()
            for _ in range(3):
                tasks.start_soon(scrape)
            for _ in range(10):
                await anyio.lowlevel.checkpoint()  # the three have arrived and wait
            assert not answers
            gated.release.set()

    run(backend, main)
    values = sorted(families(a.body.decode())["writes"].samples[0].value for a in answers)
    assert values == [0.0, 1.0, 1.0, 1.0]
    assert (app.scrapes, app.renders) == (4, 2)


@backends
def test_a_cancelled_request_is_recorded_as_client_closed(
    backend: str, registry: CollectorRegistry
) -> None:
    """The server cancels the request task of a client that went away: 499, on both loops
    (asyncio's CancelledError and trio's Cancelled)."""

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        assert events
        events[0].set()
        await anyio.sleep_forever()

    events: list[anyio.Event] = []  # made inside the loop: an event belongs to its loop
    middleware = PrometheusMiddleware(slow, registry=registry, route_resolver=lambda s: "/slow")

    async def main() -> None:
        events.append(anyio.Event())
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(middleware, http_scope("/slow"), ScriptedReceive(), RecordingSend())
            await events[0].wait()
            tasks.cancel_scope.cancel()

    run(backend, main)
    labels = {"method": "GET", "endpoint": "/slow", "status_code": "499"}
    assert registry.get_sample_value("http_requests_total", labels) == 1


def test_a_cancelled_trio_nursery_is_recorded_as_client_closed(registry: CollectorRegistry) -> None:
    """An app running a trio nursery re-raises the server's cancellation as a group of
    `trio.Cancelled`: still the client gone, 499."""
    import trio

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            await trio.sleep_forever()

    middleware = PrometheusMiddleware(app, registry=registry, route_resolver=lambda s: "/slow")

    async def main() -> None:
        with trio.move_on_after(0.05):
            await middleware(http_scope("/slow"), ScriptedReceive(), RecordingSend())

    trio.run(main)
    labels = {"method": "GET", "endpoint": "/slow", "status_code": "499"}
    assert registry.get_sample_value("http_requests_total", labels) == 1
