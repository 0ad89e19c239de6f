"""`TextRenderer`: the same exposition as `generate_latest`, byte for byte, without
blocking the event loop; and `MetricsApp` serving it."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import math
import random
import struct
import threading
from collections.abc import Iterable

import pytest
from _asgi import RecordingSend, ScriptedReceive, http_scope
from _registries import CustomCollector, created_metrics, fill_large, longest_pause
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
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from gatewayz_metrics import MetricsApp
from gatewayz_metrics._render import TextRenderer, format_value

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
AWKWARD_VALUES = ('say "hi"', "back\\slash", "new\nline", "ünïcødé ✓", "", "a,b=c}")


def render(registry: CollectorRegistry, renderer: TextRenderer | None = None) -> bytes:
    """`TextRenderer().render(registry)` on a fresh event loop."""
    return asyncio.run((renderer or TextRenderer()).render(registry))


def samples(text: bytes) -> Samples:
    """Every sample of an exposition, parsed by prometheus_client: (name, labels) -> value."""
    parsed: Samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in parsed, f"duplicate sample {key}"
            parsed[key] = sample.value
    return parsed


def assert_same_samples(ours: bytes, theirs: bytes) -> None:
    """Both parse to the same samples, `_created` included; NaN equals NaN."""
    mine, reference = samples(ours), samples(theirs)
    assert mine.keys() == reference.keys()
    for key, value in reference.items():
        assert mine[key] == value or (math.isnan(mine[key]) and math.isnan(value)), key


def assert_renders_like_generate_latest(
    registry: CollectorRegistry, renderer: TextRenderer | None = None
) -> bytes:
    """Same samples as `generate_latest(registry)` and the very same bytes."""
    ours, theirs = render(registry, renderer), generate_latest(registry)
    assert_same_samples(ours, theirs)
    assert ours == theirs
    return ours


class FailingCollector:
    """A custom collector whose database is down."""

    def collect(self) -> Iterable[Metric]:
        raise ConnectionError("database refused the connection")


def every_kind(registry: CollectorRegistry) -> CustomCollector:
    """Fill `registry` with each metric type, labelled and not, awkward labels and values."""
    requests = Counter("app_requests", "Requests.\nSecond \\ line.", ["method", "path"],
                       registry=registry)  # fmt: skip
    for index, value in enumerate(AWKWARD_VALUES):
        requests.labels("GET", value).inc(index)
    requests.labels("POST", "/big").inc(1e21)
    requests.labels("PUT", "/reset").reset()  # an int 0, formatted as a float
    Counter("app_starts_total", "Starts.", registry=registry).inc()
    temperature = Gauge("app_temperature_celsius", "Temperature.", ["room"], registry=registry)
    for room, reading in [("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf),
                          ("negzero", -0.0), ("big", 12345678.9), ("tiny", 1e-300)]:  # fmt: skip
        temperature.labels(room).set(reading)
    Gauge("app_up", "Up.", registry=registry).set(1)
    Gauge("app_empty", "A labelled gauge without children.", ["x"], registry=registry)
    latency = Histogram("app_latency_seconds", "Latency.", ["route"], registry=registry)
    for value in AWKWARD_VALUES:
        latency.labels(value).observe(0.3)
    Histogram("app_job_seconds", "Jobs.", registry=registry, buckets=(1, 2.5, 1e7)).observe(2)
    Histogram("app_drift", "Negative buckets: no _sum.", registry=registry,
              buckets=(-1, 0, 1)).observe(-0.5)  # fmt: skip
    size = Summary("app_size_bytes", "Sizes.", ["kind"], registry=registry)
    size.labels("a").observe(512)
    size.labels('b"').observe(1024.5)
    Summary("app_wait_seconds", "Waits.", registry=registry).observe(0.25)
    Info("app_build", "Build.", registry=registry).info({"version": "1.2.3"})
    Enum("app_state", "State.", states=["on", "off"], registry=registry).state("off")
    custom = CustomCollector()
    registry.register(custom)
    return custom


def test_every_metric_kind_renders_like_generate_latest() -> None:
    """Counters, gauges, histograms, summaries, info, enum and a custom collector: same bytes."""
    registry = CollectorRegistry()
    every_kind(registry)
    text = assert_renders_like_generate_latest(registry)
    assert b'path="new\\nline"' in text
    assert b"app_requests_created" in text


def test_a_second_render_uses_the_caches_and_sees_new_values() -> None:
    """Rendering again with cached prefixes gives the new values and new children."""
    registry = CollectorRegistry()
    every_kind(registry)
    renderer = TextRenderer()
    assert_renders_like_generate_latest(registry, renderer)
    requests = Counter("late_requests", "Registered after the first render.", ["a"],
                       registry=registry)  # fmt: skip
    requests.labels("x").inc(2)
    app_requests = registry._names_to_collectors["app_requests"]
    assert isinstance(app_requests, Counter)
    app_requests.labels("GET", "brand new").inc(41)
    app_requests.labels("GET", "").inc(0.5)
    assert_renders_like_generate_latest(registry, renderer)


def test_removed_and_cleared_children_disappear_from_the_output() -> None:
    """After remove() and clear(), the children are gone, as in generate_latest."""
    registry = CollectorRegistry()
    counter = Counter("jobs", "Jobs.", ["queue"], registry=registry)
    histogram = Histogram("job_seconds", "Jobs.", ["queue"], registry=registry)
    for queue in ("a", "b", "c"):
        counter.labels(queue).inc()
        histogram.labels(queue).observe(1)
    renderer = TextRenderer()
    assert_renders_like_generate_latest(registry, renderer)
    counter.remove("b")
    histogram.clear()
    text = assert_renders_like_generate_latest(registry, renderer)
    assert b'queue="b"' not in text
    assert b"job_seconds_bucket" not in text
    counter.labels("b").inc(5)  # the same labels again: a new child
    assert_renders_like_generate_latest(registry, renderer)


def test_disabled_created_metrics_render_like_generate_latest() -> None:
    """With `disable_created_metrics()` no `_created` series, as in generate_latest."""
    registry = CollectorRegistry()
    every_kind(registry)
    renderer = TextRenderer()
    with created_metrics(enabled=False):
        text = assert_renders_like_generate_latest(registry, renderer)
    assert b"app_requests_created" not in text
    with created_metrics(enabled=True):
        assert_renders_like_generate_latest(registry, renderer)


def test_target_info_renders_like_generate_latest() -> None:
    """A registry with target_info renders it first, as generate_latest does."""
    registry = CollectorRegistry(target_info={"service": 'gate"way'})
    Counter("hits", "Hits.", registry=registry).inc()
    assert render(registry).startswith(b"# HELP target_info")
    assert_renders_like_generate_latest(registry)


def test_format_value_matches_float_to_go_string() -> None:
    """`format_value` gives floatToGoString's text for special, integral and random values."""
    special: list[float] = [0, 1, -1, 7, 10**6, 10**21, True, 0.0, -0.0, 1.0, 0.5, -0.5,
                            1e6, 1e6 - 1e-9, 999999.9999999999, 1e7, 1e15, 1e16, 1e17, 1e21,
                            1e22, 1.5e300, -1e21, 1e-5, 1e-300, 5e-324, 1.7e9 + 0.123,
                            math.inf, -math.inf, math.nan, 2**53, 2.0**63]  # fmt: skip
    rng = random.Random(4)
    generated = [
        *(rng.uniform(-1e7, 1e7) for _ in range(20_000)),
        *(10 ** rng.uniform(-30, 30) for _ in range(20_000)),
        *(float(rng.randrange(0, 10**9)) for _ in range(20_000)),
        *(struct.unpack("<d", rng.randbytes(8))[0] for _ in range(20_000)),
    ]
    for value in [*special, *generated]:
        assert format_value(value) == floatToGoString(value), value  # type: ignore[no-untyped-call]


def test_gauge_callbacks_and_custom_collectors_run_in_a_worker_thread() -> None:
    """set_function callbacks and custom collectors are called off the event loop's thread."""
    registry = CollectorRegistry()
    callback_threads: list[int] = []

    def depth() -> float:
        callback_threads.append(threading.get_ident())
        return 4.0

    Counter("before", "Before.", registry=registry).inc()
    Gauge("queue_depth", "Depth.", registry=registry).set_function(depth)
    labelled = Gauge("pool_size", "Size.", ["pool"], registry=registry)
    labelled.labels("plain").set(2)
    labelled.labels("live").set_function(depth)
    custom = CustomCollector()
    registry.register(custom)
    Counter("after", "After.", registry=registry).inc()
    loop_threads: list[int] = []

    async def main() -> bytes:
        loop_threads.append(threading.get_ident())
        return await TextRenderer().render(registry)

    assert asyncio.run(main()) == generate_latest(registry)
    assert len(callback_threads) == 2 + 2  # ours, then generate_latest's
    assert loop_threads[0] not in callback_threads[:2]
    assert loop_threads[0] != custom.threads[0]


def test_a_registry_subclass_is_rendered_by_prometheus_client() -> None:
    """A registry whose collect() is not prometheus_client's own is rendered through it."""

    class Filtered(CollectorRegistry):
        def collect(self) -> Iterable[Metric]:
            return (m for m in super().collect() if m.name != "hidden")

    registry = Filtered()
    Counter("shown", "Shown.", registry=registry).inc()
    Counter("hidden", "Hidden.", registry=registry).inc()
    text = assert_renders_like_generate_latest(registry)
    assert b"hidden" not in text


@pytest.mark.slow
def test_children_added_and_removed_from_threads_during_a_render_do_not_break_it() -> None:
    """Other threads adding and removing children while a render runs: no crash, valid text."""
    registry = CollectorRegistry()
    counter = Counter("busy", "Busy.", ["n"], registry=registry)
    histogram = Histogram("busy_seconds", "Busy.", ["n"], registry=registry)
    for n in range(5_000):
        counter.labels(str(n)).inc()
        histogram.labels(str(n)).observe(0.1)
    stop = threading.Event()

    def churn(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            n = str(rng.randrange(5_000, 10_000))
            counter.labels(n).inc()
            histogram.labels(n).observe(1)
            if rng.random() < 0.5:
                # prometheus_client < 0.22 raises KeyError when another thread removed it.
                with contextlib.suppress(KeyError):
                    counter.remove(n)
            if rng.random() < 0.01:
                histogram.clear()

    threads = [threading.Thread(target=churn, args=(seed,)) for seed in range(2)]
    for thread in threads:
        thread.start()
    try:
        renderer = TextRenderer()
        for _ in range(3):
            text = render(registry, renderer)
            parsed = samples(text)
            for label in ("0", "4999"):
                assert parsed[("busy_total", (("n", label),))] == 1.0
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert_renders_like_generate_latest(registry, renderer)


@pytest.mark.slow
def test_the_event_loop_stays_responsive_during_a_large_render() -> None:
    """While ~50k series render on the loop, a 1 ms sleeper never waits more than 50 ms."""
    registry = CollectorRegistry()
    fill_large(registry)
    longest, body = longest_pause(TextRenderer().render(registry))
    assert len(body) > 1_000_000
    assert longest < 0.050


async def test_metrics_app_serves_the_fast_render_plain_and_gzipped() -> None:
    """MetricsApp answers generate_latest's bytes, plain, gzipped and for text 1.0.0."""
    registry = CollectorRegistry()
    every_kind(registry)
    app = MetricsApp(registry)
    accepts = [b"", b"text/plain; version=1.0.0; escaping=underscores"]
    for accept in accepts:
        for encoding in (b"", b"gzip"):
            send = RecordingSend()
            headers = [(b"accept", accept), (b"accept-encoding", encoding)]
            await app(http_scope("/metrics", headers=headers), ScriptedReceive(), send)
            assert send.status == 200
            body = gzip.decompress(send.body) if encoding else send.body
            assert body == generate_latest(registry)
    assert app.renders == app.scrapes == 4


async def test_a_failing_custom_collector_beside_fast_metrics_is_a_500() -> None:
    """A raising custom collector among fast-path metrics still gives the short 500."""
    registry = CollectorRegistry()
    Counter("fine", "Fine.", ["a"], registry=registry).labels("x").inc()
    registry.register(FailingCollector())
    Gauge("also_fine", "Fine.", registry=registry).set(1)
    send = RecordingSend()
    await MetricsApp(registry)(http_scope("/metrics"), ScriptedReceive(), send)
    assert send.status == 500
    assert send.body == b"metrics collection failed: ConnectionError\n"


async def test_a_broken_fast_path_falls_back_to_prometheus_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Should prometheus_client's internals change under the fast path, scrapes still work."""
    registry = CollectorRegistry()
    every_kind(registry)

    async def broken(self: TextRenderer, registry: CollectorRegistry) -> bytes:
        raise AttributeError("'Counter' object has no attribute '_metrics'")

    monkeypatch.setattr(TextRenderer, "render", broken)
    expected = generate_latest(registry)  # before the fault is counted in this registry
    send = RecordingSend()
    await MetricsApp(registry)(http_scope("/metrics"), ScriptedReceive(), send)
    assert send.status == 200
    assert_same_samples(send.body, expected)
    errors = registry.get_sample_value(
        "gatewayz_metrics_internal_errors_total", {"component": "render.fast"}
    )
    assert errors == 1


@pytest.mark.parametrize("accept", [b"application/openmetrics-text; version=1.0.0"])
async def test_openmetrics_negotiation_answers_openmetrics(accept: bytes) -> None:
    """OpenMetrics negotiation answers OpenMetrics (test_render_openmetrics.py: byte for byte)."""
    registry = CollectorRegistry()
    Counter("hits", "Hits.", registry=registry).inc()
    send = RecordingSend()
    await MetricsApp(registry)(
        http_scope("/metrics", headers=[(b"accept", accept)]), ScriptedReceive(), send
    )
    assert send.status == 200
    assert send.body.endswith(b"# EOF\n")
