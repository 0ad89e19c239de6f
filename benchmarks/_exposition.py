"""Rendering `/metrics`: `MetricsApp` against `prometheus_client.generate_latest`.

The registry is synthetic and sized in *series*: sample lines of the text exposition,
not counting the `_created` lines prometheus_client adds for every counter and
histogram child. Half the series come from counters (one `_total` line per child), half
from histograms (7 finite buckets, so 8 `_bucket` lines + `_count` + `_sum` = 10 lines
per child), spread over 5 counter and 5 histogram families.
"""

from __future__ import annotations

import asyncio
import statistics
import tracemalloc
from dataclasses import dataclass
from time import perf_counter_ns
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

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


async def _render_ours(app: Any) -> bytes:
    """The body `app` answers to `GET /metrics`, through its ASGI interface."""
    chunks: list[bytes] = []
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(dict(_SCOPE), receive, send)
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
