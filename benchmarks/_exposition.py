"""Rendering `/metrics`: `MetricsApp` against `prometheus_client.generate_latest`.

The registry is synthetic and sized in *series*: sample lines of the text exposition,
not counting the `_created` lines prometheus_client adds for every counter and
histogram child. Half the series come from counters (one `_total` line per child), half
from histograms (7 finite buckets, so 8 `_bucket` lines + `_count` + `_sum` = 10 lines
per child), spread over 5 counter and 5 histogram families.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import statistics
import tracemalloc
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from time import perf_counter, perf_counter_ns
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.parser import text_string_to_metric_families

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
"""The Accept header of Prometheus 2.42+ and 3.x scrapes (captured from a real Prometheus)."""
PROMETHEUS_HEADERS = ((b"accept", PROMETHEUS_ACCEPT.encode()), (b"accept-encoding", b"gzip"))
GZIP_LEVEL = 6
"""MetricsApp's gzip level; prometheus_client's own apps call `gzip.compress` (level 9)."""
FAMILIES = 5
BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
LINES_PER_HISTOGRAM_CHILD = len(BUCKETS) + 3  # finite buckets, +Inf, _count, _sum
_STATUSES = ("200", "404", "500", "503")
_SampleKey = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True, slots=True)
class Shape:
    """How many children a registry of `series` series has."""

    series: int
    counter_children: int
    histogram_children: int

    @property
    def lines(self) -> int:
        """Sample lines in the text format, `_created` lines included."""
        return self.series + self.counter_children + self.histogram_children

    @staticmethod
    def of(series: int) -> Shape:
        unit = 2 * FAMILIES * LINES_PER_HISTOGRAM_CHILD
        if series <= 0 or series % unit:
            raise ValueError(f"series must be a positive multiple of {unit}, got {series}")
        return Shape(series, series // 2, series // 2 // LINES_PER_HISTOGRAM_CHILD)


def build_registry(series: int) -> tuple[CollectorRegistry, Counter]:
    """A registry whose text exposition has exactly `series` series (see the module doc),
    and one of its counter children, to change a sample between renders."""
    shape = Shape.of(series)
    registry = CollectorRegistry()
    first: Counter | None = None
    counters_per_family = shape.counter_children // FAMILIES
    histograms_per_family = shape.histogram_children // FAMILIES
    for family in range(FAMILIES):
        counter = Counter(
            f"bench_requests_{family}",
            "Synthetic requests.",
            ["endpoint", "status_code"],
            registry=registry,
        )
        for child in range(counters_per_family):
            endpoint = f"/api/v1/resource_{child // len(_STATUSES)}/{{id}}"
            status = _STATUSES[child % len(_STATUSES)]
            child_counter = counter.labels(endpoint, status)
            child_counter.inc(child + 1)
            first = first or child_counter
        histogram = Histogram(
            f"bench_latency_{family}_seconds",
            "Synthetic latency.",
            ["endpoint"],
            buckets=BUCKETS,
            registry=registry,
        )
        for child in range(histograms_per_family):
            observer = histogram.labels(f"/api/v1/resource_{child}/{{id}}")
            observer.observe(child % 1000 / 1000)
            observer.observe(0.2)
    assert first is not None
    return registry, first


_SCOPE: dict[str, Any] = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/metrics",
    "raw_path": b"/metrics",
    "root_path": "",
    "query_string": b"",
    # No Accept and no Accept-Encoding: the plain text format, uncompressed, which is
    # exactly what generate_latest produces.
    "headers": [(b"host", b"127.0.0.1")],
    "server": ("127.0.0.1", 8000),
    "client": ("127.0.0.1", 51000),
}


async def _render_ours(app: Any, headers: Sequence[tuple[bytes, bytes]] = ()) -> bytes:
    """The body `app` answers to `GET /metrics` (with `headers`), through its ASGI interface."""
    chunks: list[bytes] = []
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    scope = {**_SCOPE, "headers": [*_SCOPE["headers"], *headers]}
    await app(scope, receive, send)
    if status != [200]:
        raise RuntimeError(f"MetricsApp answered {status}, expected 200")
    return b"".join(chunks)


def _samples(text: bytes) -> dict[_SampleKey, float]:
    samples: dict[_SampleKey, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def compare(ours: bytes, theirs: bytes) -> dict[str, Any]:
    """Parse both outputs; the same samples with the same values (`_created` values aside)."""
    mine, reference = _samples(ours), _samples(theirs)
    missing = reference.keys() - mine.keys()
    extra = mine.keys() - reference.keys()
    mismatched = [
        key
        for key in reference.keys() & mine.keys()
        if not key[0].endswith("_created") and mine[key] != reference[key]
    ]
    return {
        "samples": len(reference),
        "missing": len(missing),
        "extra": len(extra),
        "value_mismatches": len(mismatched),
        "identical": not (missing or extra or mismatched),
        "examples": [repr(k) for k in [*sorted(missing), *sorted(extra), *mismatched][:3]],
    }


def _peak_bytes(render: Any) -> int:
    """Peak memory Python allocated during one call of `render` (any thread)."""
    tracemalloc.start()
    try:
        render()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak


async def _measure(registry: CollectorRegistry, touch: Counter, repeats: int) -> dict[str, Any]:
    from gatewayz_metrics import MetricsApp

    app = MetricsApp(registry)
    ours_ns: list[int] = []
    theirs_ns: list[int] = []
    ours = await _render_ours(app)  # warm: the executor thread, imports, caches
    theirs = generate_latest(registry)
    for index in range(repeats):
        # Alternating who goes first. A sample changes before every round, as between
        # two real scrapes: a render that serves a cached body must not look fast here.
        touch.inc()
        for side in (0, 1) if index % 2 == 0 else (1, 0):
            start = perf_counter_ns()
            if side == 0:
                ours = await _render_ours(app)
                ours_ns.append(perf_counter_ns() - start)
            else:
                theirs = generate_latest(registry)
                theirs_ns.append(perf_counter_ns() - start)
    return {
        "ours_ms": statistics.median(ours_ns) / 1e6,
        "generate_latest_ms": statistics.median(theirs_ns) / 1e6,
        "ours_bytes": len(ours),
        "generate_latest_bytes": len(theirs),
        "app": app,
    }


def measure_exposition(series: int, repeats: int) -> dict[str, Any]:
    """Render times, sizes, sample equality and memory for a registry of `series` series."""
    shape = Shape.of(series)
    tracemalloc.start()
    registry, touch = build_registry(series)
    registry_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    result = asyncio.run(_measure(registry, touch, repeats))
    app = result.pop("app")

    # Change one sample, then render both from the same state and compare what they say.
    touch.inc()
    ours = asyncio.run(_render_ours(app))
    theirs = generate_latest(registry)
    result["comparison"] = compare(ours, theirs)
    result["ours_peak_bytes"] = _peak_bytes(lambda: asyncio.run(_render_ours(app)))
    result["generate_latest_peak_bytes"] = _peak_bytes(lambda: generate_latest(registry))
    result.update(
        series=shape.series,
        lines=shape.lines,
        counter_children=shape.counter_children,
        histogram_children=shape.histogram_children,
        registry_bytes=registry_bytes,
        bytes_per_series=registry_bytes / shape.series,
        repeats=repeats,
    )
    return result


_T = TypeVar("_T")
_TICK = 0.001


async def _with_ticker(work: Awaitable[_T]) -> tuple[_T, float]:
    """`work`'s result and the longest gap, in ms, between the wakeups of a task on the same
    loop that sleeps 1 ms at a time: how long the loop could not serve anything else."""
    task = asyncio.ensure_future(work)
    longest = 0.0
    last = perf_counter()
    while not task.done():
        await asyncio.sleep(_TICK)
        now = perf_counter()
        longest = max(longest, now - last)
        last = now
    return await task, longest * 1e3


def _openmetrics_gzip(registry: CollectorRegistry, level: int) -> bytes:
    return gzip.compress(openmetrics_latest(registry), compresslevel=level)


async def _measure_openmetrics(
    registry: CollectorRegistry, touch: Counter, repeats: int
) -> dict[str, Any]:
    """A Prometheus-style scrape: MetricsApp with Prometheus's Accept and gzip, against
    prometheus_client's OpenMetrics encoder + gzip; then the loop's longest stall for each,
    prometheus_client's encoder run in a worker thread as MetricsApp used to run it."""
    from gatewayz_metrics import MetricsApp

    app = MetricsApp(registry)
    loop = asyncio.get_running_loop()
    ours_ns: list[int] = []
    theirs_ns: list[int] = []
    theirs_9_ns: list[int] = []
    await _render_ours(app, PROMETHEUS_HEADERS)  # warm: executor thread, caches, first probe
    for index in range(repeats):
        touch.inc()
        order = (0, 1, 2) if index % 2 == 0 else (2, 1, 0)
        for side in order:
            start = perf_counter_ns()
            if side == 0:
                await _render_ours(app, PROMETHEUS_HEADERS)
                ours_ns.append(perf_counter_ns() - start)
            elif side == 1:
                _openmetrics_gzip(registry, GZIP_LEVEL)
                theirs_ns.append(perf_counter_ns() - start)
            else:
                _openmetrics_gzip(registry, 9)
                theirs_9_ns.append(perf_counter_ns() - start)
    ours_stall: list[float] = []
    theirs_stall: list[float] = []
    idle_stall: list[float] = []
    for _ in range(3):
        touch.inc()
        # The full collection owed for building the registry is not a render's pause.
        gc.collect()
        start = perf_counter()
        ours_stall.append((await _with_ticker(_render_ours(app, PROMETHEUS_HEADERS)))[1])
        # The same ticker with nothing else to do for as long: the machine's own gaps
        # (other processes, the scheduler), which no renderer can go below.
        idle_stall.append((await _with_ticker(asyncio.sleep(perf_counter() - start)))[1])
        gc.collect()
        threaded = loop.run_in_executor(None, _openmetrics_gzip, registry, GZIP_LEVEL)
        theirs_stall.append((await _with_ticker(threaded))[1])
    touch.inc()
    ours = gzip.decompress(await _render_ours(app, PROMETHEUS_HEADERS))
    theirs = openmetrics_latest(registry)
    return {
        "accept": PROMETHEUS_ACCEPT,
        "ours_ms": statistics.median(ours_ns) / 1e6,
        "openmetrics_gzip_ms": statistics.median(theirs_ns) / 1e6,
        "openmetrics_gzip9_ms": statistics.median(theirs_9_ns) / 1e6,
        "ours_stall_ms": max(ours_stall),
        "openmetrics_thread_stall_ms": max(theirs_stall),
        "idle_stall_ms": max(idle_stall),
        "bytes": len(theirs),
        "identical_bytes": ours == theirs,
    }


def measure_openmetrics(series: int, repeats: int) -> dict[str, Any]:
    """The OpenMetrics render table's row for a registry of `series` series."""
    registry, touch = build_registry(series)
    result = asyncio.run(_measure_openmetrics(registry, touch, repeats))
    result.update(series=series, repeats=repeats)
    return result
