"""Exemplars on the HTTP and inference histograms: from the active OpenTelemetry span or
from the application's function, served in OpenMetrics only, never failing a request."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from _apps import FRAMEWORKS, build_app
from _asgi import RecordingSend, ScriptedReceive, http_scope
from _registries import spy_fast_renders
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import Span, Tracer
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from gatewayz_metrics import GatewayMetrics, MetricsApp, PrometheusMiddleware
from gatewayz_metrics._validation import InvalidTypeError, InvalidValueError

REPO_ROOT = Path(__file__).resolve().parent.parent
OPENMETRICS = b"application/openmetrics-text; version=1.0.0; charset=utf-8"
HTTP_HISTOGRAMS = ("http_request_duration_seconds", "http_time_to_first_byte_seconds")
INFERENCE_HISTOGRAMS = ("model_inference_duration_seconds", "model_time_to_first_token_seconds")


@pytest.fixture
def tracer() -> Tracer:
    """A tracer of a private SDK provider (the global one can be set once per process)."""
    return TracerProvider().get_tracer("tests")


def ids(span: Span) -> dict[str, str]:
    context = span.get_span_context()
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def exemplars(registry: CollectorRegistry, name: str) -> list[dict[str, str]]:
    """The labels of every exemplar on the buckets of histogram `name`."""
    return [
        dict(sample.exemplar.labels)
        for family in registry.collect()
        if family.name == name
        for sample in family.samples
        if sample.exemplar is not None
    ]


def invalid(registry: CollectorRegistry, metric: str) -> float | None:
    return registry.get_sample_value(
        "gatewayz_metrics_invalid_values_total", {"metric": metric, "argument": "exemplar"}
    )


async def get(app: Any, path: str = "/items/7") -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.get(path)


# --- the middleware ------------------------------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_a_request_in_a_sampled_span_carries_its_trace(
    framework: str, registry: CollectorRegistry, tracer: Tracer
) -> None:
    """Duration and TTFB of a request served inside a sampled span carry its trace and span
    ids, as 32 and 16 lower-case hex digits."""
    app = build_app(framework, registry)
    with tracer.start_as_current_span("request") as span:
        assert (await get(app)).status_code == 200
    for name in HTTP_HISTOGRAMS:
        assert exemplars(registry, name) == [ids(span)], name
    assert len(ids(span)["trace_id"]) == 32
    assert len(ids(span)["span_id"]) == 16


async def test_no_span_or_an_unsampled_one_gives_no_exemplar(
    registry: CollectorRegistry, tracer: Tracer
) -> None:
    """Without an active span, or in a span that will never be exported, no exemplar."""
    app = build_app("starlette", registry)
    assert (await get(app)).status_code == 200
    unsampled = TracerProvider(sampler=ALWAYS_OFF).get_tracer("tests")
    with unsampled.start_as_current_span("dropped") as span:
        assert span.get_span_context().is_valid
        assert (await get(app)).status_code == 200
    assert (
        registry.get_sample_value(
            "http_request_duration_seconds_count", {"method": "GET", "endpoint": "/items/{item_id}"}
        )
        == 2
    )
    assert exemplars(registry, "http_request_duration_seconds") == []


async def test_exemplar_false_turns_them_off(registry: CollectorRegistry, tracer: Tracer) -> None:
    """`exemplar=False`: no exemplar even inside a sampled span."""
    app = build_app("starlette", registry, exemplar=False)
    with tracer.start_as_current_span("request"):
        assert (await get(app)).status_code == 200
    assert exemplars(registry, "http_request_duration_seconds") == []


@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_the_applications_function_decides_the_exemplar(
    framework: str, registry: CollectorRegistry, tracer: Tracer
) -> None:
    """`exemplar=function`: called with the request's scope; its labels replace the span's,
    and None gives no exemplar."""

    def exemplar(scope: dict[str, Any]) -> dict[str, str] | None:
        if scope["path"] == "/ping":
            return None
        return {"request_path": scope["path"]}

    app = build_app(framework, registry, exemplar=exemplar)
    with tracer.start_as_current_span("request"):
        assert (await get(app)).status_code == 200
        assert (await get(app, "/ping")).status_code == 200
    for name in HTTP_HISTOGRAMS:
        assert exemplars(registry, name) == [{"request_path": "/items/7"}], name
    assert invalid(registry, "http_request_duration_seconds") == 0


def _raises(scope: dict[str, Any]) -> dict[str, str]:
    raise RuntimeError("exemplar function failed")


@pytest.mark.parametrize(
    "function",
    [
        pytest.param(_raises, id="raises"),
        pytest.param(lambda scope: "trace", id="not-a-mapping"),
        pytest.param(lambda scope: {"trace_id": 42}, id="non-str-value"),
        pytest.param(lambda scope: {"trace-id": "abc"}, id="invalid-name"),
        pytest.param(lambda scope: {"__reserved": "abc"}, id="reserved-name"),
        pytest.param(lambda scope: {"a" * 60: "b" * 60, "c": "d" * 10}, id="over-128-chars"),
    ],
)
@pytest.mark.parametrize("framework", FRAMEWORKS)
async def test_a_failing_exemplar_function_never_fails_the_request(
    framework: str, function: Any, registry: CollectorRegistry
) -> None:
    """A function that raises or returns an invalid exemplar: the request answers 200, is
    recorded without an exemplar, and the drop is counted (no internal error)."""
    app = build_app(framework, registry, exemplar=function)
    assert (await get(app)).status_code == 200
    labels = {"method": "GET", "endpoint": "/items/{item_id}"}
    assert registry.get_sample_value("http_request_duration_seconds_count", labels) == 1
    assert registry.get_sample_value("http_time_to_first_byte_seconds_count", labels) == 1
    assert exemplars(registry, "http_request_duration_seconds") == []
    assert invalid(registry, "http_request_duration_seconds") == 1
    assert (
        registry.get_sample_value(
            "gatewayz_metrics_internal_errors_total", {"component": "middleware.record"}
        )
        == 0
    )


async def test_exemplar_values_are_cleaned_like_labels(registry: CollectorRegistry) -> None:
    """A credential in an exemplar becomes its fingerprint, a W3C trace id under `trace_id`
    stays as it is, and a lone surrogate cannot break the exposition."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"

    def exemplar(scope: dict[str, Any]) -> dict[str, str]:
        return {"trace_id": trace_id, "user": "sk-live-4f9a8b7c6d5e4f3a", "note": "a\udc80b"}

    app = build_app("starlette", registry, exemplar=exemplar)
    assert (await get(app)).status_code == 200
    [labels] = exemplars(registry, "http_request_duration_seconds")
    assert labels["trace_id"] == trace_id
    assert labels["user"].startswith("sha256:")
    assert "sk-live" not in labels["user"]
    assert labels["note"] == "a?b"
    assert b"sk-live" not in openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]


def test_the_exemplar_option_is_checked_at_construction(registry: CollectorRegistry) -> None:
    """Anything but a bool or a function is a configuration error, named."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    with pytest.raises(TypeError, match="exemplar must be True, False or a function"):
        PrometheusMiddleware(app, registry=registry, exemplar={"trace_id": "x"})  # type: ignore[arg-type]


async def test_a_raw_asgi_request_in_a_span_records_the_span_seen_at_record_time(
    registry: CollectorRegistry, tracer: Tracer
) -> None:
    """Raw ASGI: the exemplar is the span active where the middleware runs (the server
    span of an OpenTelemetry middleware placed outside it), not one the handler opens."""
    inner: list[Span] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        with tracer.start_as_current_span("handler") as span:
            inner.append(span)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

    middleware = PrometheusMiddleware(app, registry=registry, metrics_path=None)
    with tracer.start_as_current_span("server") as server:
        await middleware(http_scope("/x"), ScriptedReceive(), RecordingSend())
    assert exemplars(registry, "http_request_duration_seconds") == [ids(server)]
    assert ids(server)["trace_id"] == ids(inner[0])["trace_id"]


# --- the inference tracker and track_http_request ------------------------------------------


async def test_an_inference_call_in_a_span_carries_its_trace(
    registry: CollectorRegistry, tracer: Tracer
) -> None:
    """Inference duration and time to first token carry the active span's ids; the time
    per output token (no exemplar asked) carries none."""
    metrics = GatewayMetrics(registry)
    with (
        tracer.start_as_current_span("inference") as span,
        metrics.track_model_inference("openai", "gpt-4o") as call,
    ):
        call.first_token()
        call.set_usage(input_tokens=3, output_tokens=5)
    for name in INFERENCE_HISTOGRAMS:
        assert exemplars(registry, name) == [ids(span)], name
    assert exemplars(registry, "model_time_per_output_token_seconds") == []


def test_an_inference_exemplar_from_a_mapping_or_a_function(registry: CollectorRegistry) -> None:
    """`exemplar=` a mapping (checked at the call) or a function (called per observation)."""
    metrics = GatewayMetrics(registry)
    with metrics.track_model_inference("openai", "gpt-4o", exemplar={"request_id": "r1"}):
        pass
    assert exemplars(registry, "model_inference_duration_seconds") == [{"request_id": "r1"}]
    calls = iter(["r2", "r3"])
    with metrics.track_model_inference(
        "anthropic", "claude", exemplar=lambda: {"request_id": next(calls)}
    ) as call:
        call.first_token()
    assert {"request_id": "r2"} in exemplars(registry, "model_time_to_first_token_seconds")
    assert {"request_id": "r3"} in exemplars(registry, "model_inference_duration_seconds")


def test_an_invalid_inference_exemplar_raises_in_strict_mode(registry: CollectorRegistry) -> None:
    """Strict mode: an invalid exemplar mapping or option raises at the call, named."""
    metrics = GatewayMetrics(registry, strict=True)
    with pytest.raises(InvalidValueError, match="128"):
        metrics.track_model_inference(
            "openai", "gpt-4o", exemplar={"k" * 60: "v" * 60, "l": "w" * 9}
        )
    with pytest.raises(InvalidTypeError, match="exemplar must be"):
        metrics.track_model_inference("openai", "gpt-4o", exemplar=42)  # type: ignore[arg-type]


def test_an_invalid_inference_exemplar_is_dropped_alone_in_lenient_mode(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lenient mode: the call is recorded without an exemplar and the drop counted; a
    function that raises is counted the same way, in both modes."""
    monkeypatch.delenv("GATEWAYZ_METRICS_STRICT")
    metrics = GatewayMetrics(registry)
    assert invalid(registry, "model_inference_duration_seconds") == 0
    with metrics.track_model_inference("openai", "gpt-4o", exemplar={"bad-name": "x"}):
        pass

    def boom() -> dict[str, str]:
        raise RuntimeError("no trace here")

    strict = GatewayMetrics(registry, strict=True)
    with strict.track_model_inference("openai", "gpt-4o", exemplar=boom) as call:
        call.first_token()
    labels = {"provider": "openai", "model": "gpt-4o"}
    assert registry.get_sample_value("model_inference_duration_seconds_count", labels) == 2
    assert exemplars(registry, "model_inference_duration_seconds") == []
    assert invalid(registry, "model_inference_duration_seconds") == 2
    assert invalid(registry, "model_time_to_first_token_seconds") == 1


def test_track_http_request_in_a_span_carries_its_trace(
    registry: CollectorRegistry, tracer: Tracer
) -> None:
    """`track_http_request` outside any middleware records the active span too."""
    metrics = GatewayMetrics(registry)
    with tracer.start_as_current_span("job") as span, metrics.track_http_request("GET", "/batch"):
        pass
    assert exemplars(registry, "http_request_duration_seconds") == [ids(span)]


def test_a_failing_opentelemetry_is_counted_not_raised(
    registry: CollectorRegistry, tracer: Tracer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenTelemetry raising inside `get_current_span`: recorded without an exemplar,
    counted in internal_errors_total{component="exemplar"}."""
    import opentelemetry.trace

    def broken() -> Span:
        raise RuntimeError("broken context")

    monkeypatch.setattr(opentelemetry.trace, "get_current_span", broken)
    metrics = GatewayMetrics(registry)
    with metrics.track_model_inference("openai", "gpt-4o"):
        pass
    labels = {"provider": "openai", "model": "gpt-4o"}
    assert registry.get_sample_value("model_inference_duration_seconds_count", labels) == 1
    assert (
        registry.get_sample_value(
            "gatewayz_metrics_internal_errors_total", {"component": "exemplar"}
        )
        == 1
    )


# --- exposition ------------------------------------------------------------------------------


async def scrape(app: MetricsApp, accept: bytes, *, gzipped: bool = False) -> tuple[bytes, bytes]:
    """(content type, body) of one scrape of `app`."""
    headers = [(b"accept", accept)] + ([(b"accept-encoding", b"gzip")] if gzipped else [])
    send = RecordingSend()
    await app(http_scope("/metrics", headers=headers), ScriptedReceive(), send)
    start = next(m for m in send.messages if m["type"] == "http.response.start")
    assert start["status"] == 200
    body = b"".join(m.get("body", b"") for m in send.messages if m["type"] == "http.response.body")
    content_type = dict(start["headers"])[b"content-type"]
    return content_type, gzip.decompress(body) if gzipped else body


@pytest.fixture
def recorded(registry: CollectorRegistry, tracer: Tracer) -> CollectorRegistry:
    """`registry` after requests and inference calls inside spans, and some outside."""
    import asyncio

    app = build_app("starlette", registry)
    metrics = GatewayMetrics(registry)

    async def traffic() -> None:
        for index in range(3):
            with tracer.start_as_current_span(f"request {index}"):
                await get(app, f"/items/{index}")
                await get(app, "/stream")
                with metrics.track_model_inference("openai", "gpt-4o") as call:
                    call.first_token()
        await get(app, "/ping")

    asyncio.run(traffic())
    return registry


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
async def test_openmetrics_scrapes_carry_exemplars_byte_for_byte(
    recorded: CollectorRegistry, gzipped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MetricsApp's OpenMetrics answer, rendered by the fast renderer, is prometheus_client's
    OpenMetrics encoding of the same registry, exemplars included, byte for byte."""
    formats = spy_fast_renders(monkeypatch)
    content_type, body = await scrape(MetricsApp(recorded), OPENMETRICS, gzipped=gzipped)
    assert set(formats) == {"openmetrics"}  # the fast path, not prometheus_client's fallback
    assert recorded.get_sample_value(
        "gatewayz_metrics_internal_errors_total", {"component": "render.fast"}
    ) in (None, 0)
    assert content_type.startswith(b"application/openmetrics-text")
    assert body == openmetrics.generate_latest(recorded)  # type: ignore[no-untyped-call]
    for name in (*HTTP_HISTOGRAMS, *INFERENCE_HISTOGRAMS):
        lines = [line for line in body.splitlines() if line.startswith(f"{name}_bucket".encode())]
        assert any(b' # {span_id="' in line for line in lines), name


async def test_prometheus_accept_header_gets_the_exemplars(recorded: CollectorRegistry) -> None:
    """The Accept header Prometheus 2.x sends negotiates OpenMetrics, exemplars included."""
    accept = (
        b"application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
        b"version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
    )
    content_type, body = await scrape(MetricsApp(recorded), accept)
    assert content_type.startswith(b"application/openmetrics-text")
    assert b' # {span_id="' in body


async def test_the_text_format_has_no_exemplars(recorded: CollectorRegistry) -> None:
    """The Prometheus text format carries no exemplar: the body is generate_latest's."""
    content_type, body = await scrape(MetricsApp(recorded), b"text/plain")
    assert content_type.startswith(b"text/plain")
    assert body == generate_latest(recorded)
    assert b"trace_id" not in body


# --- multiprocess ---------------------------------------------------------------------------

MULTIPROCESS_SCRIPT = """
import asyncio, json, sys
import httpx
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from gatewayz_metrics import GatewayMetrics, MetricsApp, PrometheusMiddleware
from gatewayz_metrics._render import Format, Renderer

async def item(request):
    return PlainTextResponse("ok")

app = Starlette(routes=[Route("/items/{item_id}", item)])
app.add_middleware(PrometheusMiddleware, exemplar=lambda scope: {"trace_id": "a" * 32})
tracer = TracerProvider().get_tracer("multiprocess")

async def main():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with tracer.start_as_current_span("request"):
            statuses = [(await client.get(f"/items/{i}")).status_code for i in range(3)]
            with GatewayMetrics().track_model_inference("openai", "gpt-4o") as call:
                call.first_token()
        scrape = await client.get(
            "/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"}
        )
    print(json.dumps({"statuses": statuses, "status": scrape.status_code,
                      "content_type": scrape.headers["content-type"], "body": scrape.text}))

asyncio.run(main())
"""


def test_multiprocess_mode_records_without_exemplars(tmp_path: Path) -> None:
    """In multiprocess mode (prometheus_client keeps no exemplars there) requests in spans
    and with an exemplar function are answered and counted, the OpenMetrics scrape works,
    and nothing is counted as a fault."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_SCRIPT],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["statuses"] == [200, 200, 200]
    assert result["status"] == 200
    assert result["content_type"].startswith("application/openmetrics-text")
    body: str = result["body"]
    assert (
        'http_request_duration_seconds_count{endpoint="/items/{item_id}",method="GET"} 3.0' in body
    )
    assert 'model_inference_duration_seconds_count{model="gpt-4o",provider="openai"} 1.0' in body
    assert "trace_id" not in body
    for line in body.splitlines():
        if line.startswith(
            ("gatewayz_metrics_internal_errors_total", "gatewayz_metrics_invalid_values_total")
        ):
            assert line.endswith(" 0.0"), line
