"""The fast OpenMetrics encoder: prometheus_client's OpenMetrics bytes, on the event loop;
and `MetricsApp` serving it to a scraper that asks as Prometheus does."""

from __future__ import annotations

import asyncio
import gzip
import math
import threading

import pytest
from _asgi import RecordingSend, ScriptedReceive, http_scope
from _exposition import PROMETHEUS_ACCEPT as PROMETHEUS_ACCEPT_HEADER
from _registries import (
    CustomCollector,
    created_metrics,
    fill_large,
    longest_pause,
    spy_fast_renders,
)
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
    generate_latest,
)
from prometheus_client.openmetrics import exposition as openmetrics

from gatewayz_metrics import MetricsApp
from gatewayz_metrics._render import OPENMETRICS, TEXT, Format, Renderer

PROMETHEUS_ACCEPT = PROMETHEUS_ACCEPT_HEADER.encode()
AWKWARD_VALUES = ('say "hi"', "back\\slash", "new\nline", "ünïcødé ✓", "", "a,b=c}", "{0}")


def render(
    registry: CollectorRegistry, fmt: Format = OPENMETRICS, renderer: Renderer | None = None
) -> bytes:
    """`Renderer().render(registry, fmt)` on a fresh event loop."""
    return asyncio.run((renderer or Renderer()).render(registry, fmt))


def assert_renders_like_openmetrics(
    registry: CollectorRegistry, renderer: Renderer | None = None
) -> bytes:
    """The very bytes of prometheus_client's OpenMetrics encoder."""
    ours, theirs = render(registry, OPENMETRICS, renderer), openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
    assert ours == theirs
    return ours


def every_kind(registry: CollectorRegistry) -> CustomCollector:
    """Each metric type, units, exemplars, awkward labels and values, a custom collector."""
    requests = Counter("app_requests", 'Requests "quoted".\nSecond \\ line.',
                       ["method", "path"], registry=registry)  # fmt: skip
    for index, value in enumerate(AWKWARD_VALUES):
        requests.labels("GET", value).inc(index)
    requests.labels("POST", "/big").inc(1e21)
    requests.labels("POST", "/traced").inc(3, exemplar={"trace_id": "abc"})
    requests.labels("PUT", "/reset").reset()  # an int 0, formatted as a float
    Counter("app_starts_total", "Starts.", registry=registry).inc()
    Counter("app_sent", "Sent.", unit="bytes", registry=registry).inc(2048)
    temperature = Gauge("app_temperature", "Temperature.", ["room"], unit="celsius",
                        registry=registry)  # fmt: skip
    rooms: list[tuple[str, float]] = [("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf),
                        ("negzero", -0.0), ("big", 12345678.9), ("tiny", 1e-300),
                        ("int", 2**60)]  # fmt: skip
    for room, reading in rooms:
        temperature.labels(room).set(reading)
    Gauge("app_up", "Up.", registry=registry).set(1)
    Gauge("app_empty", "A labelled gauge without children.", ["x"], registry=registry)
    latency = Histogram("app_latency", "Latency.", ["route"], unit="seconds", registry=registry)
    for value in AWKWARD_VALUES:
        latency.labels(value).observe(0.3)
    latency.labels("/traced").observe(0.07, exemplar={"trace_id": "t1", "span": "s"})
    latency.labels("/traced").observe(42, exemplar={"trace_id": "t2"})
    Histogram("app_job_seconds", "Jobs.", registry=registry, buckets=(1, 2.5, 1e7)).observe(2)
    Histogram("app_drift", "Negative buckets: no _sum.", registry=registry,
              buckets=(-1, 0, 1)).observe(-0.5)  # fmt: skip
    size = Summary("app_size", "Sizes.", ["kind"], unit="bytes", registry=registry)
    size.labels("a").observe(512)
    size.labels('b"').observe(1024.5)
    Summary("app_wait_seconds", "Waits.", registry=registry).observe(0.25)
    Info("app_build", "Build.", registry=registry).info({"version": "1.2.3"})
    Enum("app_state", "State.", states=["on", "off"], registry=registry).state("off")
    Gauge("app_colon:ratio", "A recording-rule style name.", ["a"], registry=registry).labels(
        "b"
    ).set(0.5)
    custom = CustomCollector()
    registry.register(custom)
    return custom


def test_every_metric_kind_renders_like_the_openmetrics_encoder() -> None:
    """Counters, gauges, histograms, summaries, units, exemplars, info, enum, custom: same bytes."""
    registry = CollectorRegistry()
    every_kind(registry)
    body = assert_renders_like_openmetrics(registry)
    assert body.endswith(b"# EOF\n")
    assert body.count(b"# EOF") == 1
    assert b"# UNIT app_latency_seconds seconds\n" in body
    assert b'app_requests_total{method="POST",path="/traced"} 3.0 # {trace_id="abc"} 3.0 ' in body
    assert b'app_requests_created{method="GET",path=""}' in body
    assert b'{le="0.075",route="/traced"} 1.0 # {span="s",trace_id="t1"} 0.07 ' in body


def test_exemplar_label_values_are_escaped_like_the_openmetrics_encoder() -> None:
    """Quotes, backslashes and newlines in exemplar labels: prometheus_client's bytes.

    (Not parsed back: prometheus_client's own OpenMetrics parser rejects these lines.)
    """
    registry = CollectorRegistry()
    counter = Counter("traced", "Traced.", ["a"], registry=registry)
    counter.labels("x").inc(2, exemplar={"trace_id": 'abc"\\\n', "z": "ü"})
    histogram = Histogram("traced_seconds", "Traced.", registry=registry)
    histogram.observe(0.2, exemplar={"q": '"'})
    ours = render(registry)
    assert ours == openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
    assert b'# {trace_id="abc\\"\\\\\\n",z="\xc3\xbc"} 2.0 ' in ours


def test_target_info_and_an_empty_registry_render_like_the_openmetrics_encoder() -> None:
    """target_info comes first; a registry with nothing in it is just `# EOF`."""
    registry = CollectorRegistry(target_info={"service": 'gate"way'})
    Counter("hits", "Hits.", registry=registry).inc()
    assert render(registry).startswith(b"# HELP target Target metadata\n# TYPE target info\n")
    assert_renders_like_openmetrics(registry)
    assert (
        render(CollectorRegistry())
        == b"# EOF\n"
        == openmetrics.generate_latest(CollectorRegistry())  # type: ignore[no-untyped-call]
    )


def test_disabled_created_metrics_render_like_the_openmetrics_encoder() -> None:
    """With `disable_created_metrics()` no `_created` lines, as prometheus_client writes."""
    registry = CollectorRegistry()
    every_kind(registry)
    renderer = Renderer()
    with created_metrics(enabled=False):
        body = assert_renders_like_openmetrics(registry, renderer)
    assert b"app_requests_created" not in body
    with created_metrics(enabled=True):
        assert_renders_like_openmetrics(registry, renderer)


def test_text_and_openmetrics_share_one_prefix_cache_and_both_stay_exact() -> None:
    """One renderer serving both formats: each byte-exact, one prefix cache per metric."""
    registry = CollectorRegistry()
    requests = Counter("shared", "Shared.", ["path"], registry=registry)
    odd = Counter("odd:name", "A colon: its OpenMetrics lines are escaped.", ["path"],
                  registry=registry)  # fmt: skip
    for path in AWKWARD_VALUES:
        requests.labels(path).inc()
        odd.labels(path).inc()
    renderer = Renderer()
    for path in ("", "a,b=c}"):
        assert render(registry, TEXT, renderer) == generate_latest(registry)
        assert_renders_like_openmetrics(registry, renderer)
        requests.labels(f"{path}!").inc(2)
        requests.remove(path)
    plans = renderer._plans[requests]
    text_plan, om_plan = plans["text"], plans["openmetrics"]
    assert text_plan is not None
    assert om_plan is not None
    assert text_plan.lines is om_plan.lines
    assert text_plan.header != om_plan.header
    odd_plans = renderer._plans[odd]
    odd_text, odd_om = odd_plans["text"], odd_plans["openmetrics"]
    assert odd_text is not None
    assert odd_om is not None
    # Only where both formats write the same prefixes is the cache shared.
    assert (odd_text.lines is odd_om.lines) == (odd_text.templates == odd_om.templates)


def test_removed_children_and_new_values_render_like_the_openmetrics_encoder() -> None:
    """Second renders with cached prefixes see new values, new and removed children."""
    registry = CollectorRegistry()
    counter = Counter("jobs", "Jobs.", ["queue"], registry=registry)
    histogram = Histogram("job_seconds", "Jobs.", ["queue"], registry=registry)
    for queue in ("a", "b", "c"):
        counter.labels(queue).inc()
        histogram.labels(queue).observe(1)
    renderer = Renderer()
    assert_renders_like_openmetrics(registry, renderer)
    counter.remove("b")
    histogram.clear()
    counter.labels("a").inc(5, exemplar={"trace_id": "late"})
    body = assert_renders_like_openmetrics(registry, renderer)
    assert b'queue="b"' not in body
    counter.labels("b").reset()
    assert_renders_like_openmetrics(registry, renderer)


def test_callbacks_and_custom_collectors_run_in_a_worker_thread() -> None:
    """set_function callbacks and custom collectors are called off the loop's thread."""
    registry = CollectorRegistry()
    callback_threads: list[int] = []

    def depth() -> float:
        callback_threads.append(threading.get_ident())
        return 4.0

    Counter("before", "Before.", registry=registry).inc()
    Gauge("queue_depth", "Depth.", registry=registry).set_function(depth)
    custom = CustomCollector()
    registry.register(custom)
    Counter("after", "After.", registry=registry).inc()
    loop_threads: list[int] = []

    async def main() -> bytes:
        loop_threads.append(threading.get_ident())
        return await Renderer().render(registry, OPENMETRICS)

    assert asyncio.run(main()) == openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
    assert loop_threads[0] not in callback_threads[:1]
    assert loop_threads[0] != custom.threads[0]


def test_the_event_loop_stays_responsive_during_a_large_openmetrics_render() -> None:
    """While ~50k series render as OpenMetrics, a 1 ms sleeper never waits more than 50 ms."""
    registry = CollectorRegistry()
    fill_large(registry)
    longest, body = longest_pause(Renderer().render(registry, OPENMETRICS))
    assert body.endswith(b"# EOF\n")
    assert longest < 0.050


async def test_metrics_app_answers_prometheus_from_the_fast_openmetrics_renderer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prometheus's own Accept and gzip: OpenMetrics bytes, rendered by the fast path."""
    registry = CollectorRegistry()
    every_kind(registry)
    formats = spy_fast_renders(monkeypatch)
    app = MetricsApp(registry)
    for encoding in (b"gzip", b""):
        send = RecordingSend()
        headers = [(b"accept", PROMETHEUS_ACCEPT), (b"accept-encoding", encoding)]
        await app(http_scope("/metrics", headers=headers), ScriptedReceive(), send)
        assert send.status == 200
        content_type = send.headers[b"content-type"]
        assert content_type.startswith(b"application/openmetrics-text; version=1.0.0")
        body = gzip.decompress(send.body) if encoding else send.body
        assert body == openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
    assert formats.count("openmetrics") >= 2


async def test_a_broken_fast_openmetrics_path_falls_back_to_prometheus_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Should the fast path fail on an OpenMetrics scrape, the answer is still OpenMetrics."""
    registry = CollectorRegistry()
    every_kind(registry)

    async def broken(self: Renderer, registry: CollectorRegistry, fmt: Format = TEXT) -> bytes:
        raise AttributeError("'Counter' object has no attribute '_metrics'")

    monkeypatch.setattr(Renderer, "render", broken)
    send = RecordingSend()
    await MetricsApp(registry)(
        http_scope("/metrics", headers=[(b"accept", PROMETHEUS_ACCEPT)]), ScriptedReceive(), send
    )
    assert send.status == 200
    assert send.body.endswith(b"# EOF\n")
    assert b"\n# TYPE app_requests counter\n" in send.body
    errors = registry.get_sample_value(
        "gatewayz_metrics_internal_errors_total", {"component": "render.fast"}
    )
    assert errors == 1
