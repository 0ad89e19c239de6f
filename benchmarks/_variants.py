"""The middleware variants: one Starlette app, instrumented a different way by each.

Every variant is added with `app.add_middleware(...)`, the way each project documents it,
so all of them sit at the same place in Starlette's stack and the bare app's cost cancels
out exactly. Each builder returns a function telling how many requests the variant has
recorded, so that a run which silently measured nothing (a skipped path, a wrong route
label) is caught instead of reported as fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ROUTE = "/items/{item_id}"
NOT_INSTALLED = "not installed"
Recorded = Callable[[], float]
"""How many requests a variant has recorded so far."""


async def _item(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"item {request.path_params['item_id']}")


def make_app() -> Starlette:
    """The application every variant instruments: one route, a small text response."""
    return Starlette(routes=[Route(ROUTE, _item)])


class FloorMiddleware:
    """The least a useful HTTP middleware can do: one counter and one histogram per request.

    Labels are resolved on every request (`.labels()`), as a hand-written middleware would;
    the route template comes from the route object Starlette leaves in the scope.
    """

    def __init__(self, app: ASGIApp, *, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "http_requests",
            "HTTP requests.",
            ["method", "endpoint", "status_code"],
            registry=registry,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request duration.",
            ["method", "endpoint"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "__unmatched__")
            method = scope["method"]
            self.requests.labels(method, endpoint, str(status)).inc()
            self.duration.labels(method, endpoint).observe(perf_counter() - start)


def _sample(registry: CollectorRegistry, name: str, labels: dict[str, str]) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _bare(app: Starlette) -> Recorded:
    return lambda: 0.0


def _floor(app: Starlette) -> Recorded:
    registry = CollectorRegistry()
    app.add_middleware(FloorMiddleware, registry=registry)
    labels = {"method": "GET", "endpoint": ROUTE, "status_code": "200"}
    return lambda: _sample(registry, "http_requests_total", labels)


def _gatewayz(app: Starlette, registry: CollectorRegistry | None = None) -> Recorded:
    from gatewayz_metrics import PrometheusMiddleware

    registry = CollectorRegistry() if registry is None else registry
    app.add_middleware(PrometheusMiddleware, registry=registry)
    labels = {"method": "GET", "endpoint": ROUTE, "status_code": "200"}
    return lambda: _sample(registry, "http_requests_total", labels)


def _tracer() -> Any:
    from opentelemetry.sdk.trace import TracerProvider

    return TracerProvider().get_tracer("benchmarks")


def _gatewayz_exemplars_no_span(app: Starlette) -> Recorded:
    # The application uses OpenTelemetry (it is imported, the SDK is set up), but no span
    # is active during the requests: the exemplar code runs and finds nothing to attach.
    _tracer()
    return _gatewayz(app)


def _gatewayz_exemplars_span(app: Starlette) -> Recorded:
    from opentelemetry import context, trace

    # One sampled span, current for the whole run (asyncio.run copies this context into
    # its task): the row measures what attaching exemplars costs, not what tracing costs.
    span = _tracer().start_span("benchmark")
    context.attach(trace.set_span_in_context(span))
    trace_id = f"{span.get_span_context().trace_id:032x}"
    registry = CollectorRegistry()
    recorded = _gatewayz(app, registry)

    def with_exemplars() -> float:
        # Requests recorded without the span's exemplar would not be this row's work.
        for family in registry.collect():
            if family.name == "http_request_duration_seconds":
                for sample in family.samples:
                    exemplar = sample.exemplar
                    if exemplar is not None and exemplar.labels["trace_id"] == trace_id:
                        return recorded()
        return 0.0

    return with_exemplars


def _starlette_exporter(app: Starlette) -> Recorded:
    from starlette_exporter import PrometheusMiddleware

    app.add_middleware(PrometheusMiddleware)
    labels = {"method": "GET", "path": ROUTE, "status_code": "200", "app_name": "starlette"}
    return lambda: _sample(REGISTRY, "starlette_requests_total", labels)


def _instrumentator(app: Starlette) -> Recorded:
    from prometheus_fastapi_instrumentator import Instrumentator

    Instrumentator().instrument(app)
    labels = {"method": "GET", "handler": ROUTE, "status": "2xx"}
    return lambda: _sample(REGISTRY, "http_requests_total", labels)


def _otel_asgi(app: Starlette) -> Recorded:
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    # Metrics go to an SDK meter provider (what records them); tracing is left at the
    # API default, non-recording spans, so the comparison is metrics against metrics.
    reader = InMemoryMetricReader()
    app.add_middleware(OpenTelemetryMiddleware, meter_provider=MeterProvider([reader]))

    def recorded() -> float:
        data: Any = reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name in ("http.server.duration", "http.server.request.duration"):
                        return float(sum(point.count for point in metric.data.data_points))
        return 0.0

    return recorded


def _starlette_prometheus(app: Starlette) -> Recorded:
    from starlette_prometheus import PrometheusMiddleware

    app.add_middleware(PrometheusMiddleware)
    labels = {"method": "GET", "path_template": ROUTE, "status_code": "200"}
    return lambda: _sample(REGISTRY, "starlette_responses_total", labels)


@dataclass(frozen=True, slots=True)
class Variant:
    """One way of instrumenting the app; `distribution` is the peer package it needs."""

    name: str
    description: str
    distribution: str | None
    install: Callable[[Starlette], Recorded]


VARIANTS: tuple[Variant, ...] = (
    Variant("bare", "no middleware", None, _bare),
    Variant(
        "floor", "hand-written: Counter.labels().inc() + Histogram.labels().observe()", None, _floor
    ),
    Variant(
        "gatewayz", "gatewayz_metrics.PrometheusMiddleware, defaults", "gatewayz-metrics", _gatewayz
    ),
    Variant(
        "gatewayz + exemplars, no span",
        "PrometheusMiddleware, defaults, OpenTelemetry SDK loaded, no active span",
        "opentelemetry-sdk",
        _gatewayz_exemplars_no_span,
    ),
    Variant(
        "gatewayz + exemplars, with an active span",
        "PrometheusMiddleware, defaults, a sampled span active: trace_id exemplars",
        "opentelemetry-sdk",
        _gatewayz_exemplars_span,
    ),
    Variant(
        "starlette_exporter",
        "starlette_exporter.PrometheusMiddleware, defaults",
        "starlette-exporter",
        _starlette_exporter,
    ),
    Variant(
        "instrumentator",
        "prometheus_fastapi_instrumentator.Instrumentator().instrument(app)",
        "prometheus-fastapi-instrumentator",
        _instrumentator,
    ),
    Variant(
        "otel_asgi",
        "opentelemetry OpenTelemetryMiddleware, SDK MeterProvider",
        "opentelemetry-instrumentation-asgi",
        _otel_asgi,
    ),
    Variant(
        "starlette_prometheus",
        "starlette_prometheus.PrometheusMiddleware (BaseHTTPMiddleware)",
        "starlette-prometheus",
        _starlette_prometheus,
    ),
)
BY_NAME: dict[str, Variant] = {variant.name: variant for variant in VARIANTS}
