"""OpenTelemetry tracing for the demo, offline: the spans stay in memory, and their trace ids
are what the latency histograms' exemplars point to.

On when `opentelemetry-sdk` is installed, unless `GATEWAYZ_DEMO_TRACING=0`. gatewayz-metrics
needs nothing from here: with a span active, `PrometheusMiddleware` and
`track_model_inference` attach its `trace_id` to their observations by themselves. The one
rule is the order: the tracing middleware sits outside `PrometheusMiddleware`.

    GET /debug/traces   # the trace ids of the spans the demo finished, newest last
"""

from __future__ import annotations

import importlib.util
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

TRACING_ENV = "GATEWAYZ_DEMO_TRACING"
TRACES_PATH = "/debug/traces"
MAX_TRACES = 10_000
"""Trace ids kept for `/debug/traces`: the demo runs for days, its memory must not grow."""


def tracing_wanted(environ: Mapping[str, str] | None = None) -> bool:
    """`GATEWAYZ_DEMO_TRACING` (1/0), else whether opentelemetry-sdk is installed."""
    raw = (os.environ if environ is None else environ).get(TRACING_ENV, "").strip().lower()
    if raw in ("0", "false", "no", "off"):
        return False
    if raw and raw not in ("1", "true", "yes", "on"):
        raise ValueError(f"{TRACING_ENV} must be 1/0, true/false, yes/no or on/off, got {raw!r}")
    return importlib.util.find_spec("opentelemetry.sdk") is not None


def enable_tracing(app: FastAPI, *, skip_paths: Sequence[str] = ("/metrics", TRACES_PATH)) -> None:
    """Trace every request of `app` (but `skip_paths`) into memory; serve `/debug/traces`."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    traces = RecentTraces()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(traces))  # type: ignore[arg-type]
    tracer = provider.get_tracer("examples.gateway")
    # Added last, so outermost: the span is active while PrometheusMiddleware records.
    app.add_middleware(ServerSpans, tracer=tracer, skip_paths=tuple(skip_paths))

    @app.get(TRACES_PATH)
    async def recent_traces() -> dict[str, list[str]]:
        return {"trace_ids": traces.trace_ids()}


class ServerSpans:
    """One SERVER span per HTTP request, current while the application below runs."""

    def __init__(self, app: ASGIApp, *, tracer: Any, skip_paths: tuple[str, ...]) -> None:
        self.app = app
        self.tracer = tracer
        self.skip_paths = skip_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.skip_paths):
            await self.app(scope, receive, send)
            return
        from opentelemetry.trace import SpanKind

        name = f"{scope['method']} {scope['path']}"
        with self.tracer.start_as_current_span(name, kind=SpanKind.SERVER):
            await self.app(scope, receive, send)


class RecentTraces:
    """An in-memory span exporter keeping the trace ids of the last `MAX_TRACES` traces."""

    def __init__(self) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        for span in spans:
            trace_id = f"{span.context.trace_id:032x}"
            self._ids[trace_id] = None
            self._ids.move_to_end(trace_id)
            while len(self._ids) > MAX_TRACES:
                self._ids.popitem(last=False)
        return SpanExportResult.SUCCESS

    def trace_ids(self) -> list[str]:
        return list(self._ids)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True
