"""Registry helpers shared by the renderer tests: the process-global `_created` switch for a
block, a custom collector outside prometheus_client's metric types, and a spy on the fast
render path."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from collections.abc import Coroutine, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    enable_created_metrics,
)
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gatewayz_metrics._render import Format, Renderer


@contextmanager
def created_metrics(enabled: bool) -> Iterator[None]:
    """`_created` series on or off for the block, then as before (it is process-global)."""
    before = prometheus_metrics._use_created
    (enable_created_metrics if enabled else disable_created_metrics)()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        (enable_created_metrics if before else disable_created_metrics)()  # type: ignore[no-untyped-call]


class CustomCollector:
    """A custom collector; records the threads it was collected from."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def collect(self) -> Iterable[Metric]:
        self.threads.append(threading.get_ident())
        gauge = GaugeMetricFamily("custom_queue_depth", "Queue depth.", labels=["queue"])
        gauge.add_metric(['say "hi"\n'], 3)
        counter = CounterMetricFamily("custom_jobs", "Jobs.", labels=["kind"])
        counter.add_metric(["batch"], 7, created=1700000000.5)
        return [gauge, counter]


def spy_fast_renders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the name of every format the fast render path renders from now on (in the
    list returned); prometheus_client's fallback is not recorded."""
    formats: list[str] = []
    fast = Renderer._render_fast

    async def spy(self: Renderer, registry: CollectorRegistry, fmt: Format) -> bytes:
        formats.append(fmt.name)
        return await fast(self, registry, fmt)

    monkeypatch.setattr(Renderer, "_render_fast", spy)
    return formats


def fill_large(registry: CollectorRegistry) -> None:
    """About 50k series in `registry`: 25,000 counter children and 3,600 histogram children
    (7 lines each); then the full collection owed for building them, which is not a render's
    pause."""
    counter = Counter("big", "Big.", ["endpoint", "status"], registry=registry)
    histogram = Histogram("big_seconds", "Big.", ["endpoint"], registry=registry,
                          buckets=(0.01, 0.1, 1, 10))  # fmt: skip
    for n in range(25_000):
        counter.labels(f"/api/{n}", "200").inc(n)
    for n in range(3_600):
        histogram.labels(f"/api/{n}").observe(n / 1000)
    gc.collect()


def longest_pause(render: Coroutine[Any, Any, bytes]) -> tuple[float, bytes]:
    """Run `render` on a new event loop beside a 1 ms sleeper: (the sleeper's longest wait in
    seconds, the rendered bytes)."""

    async def main() -> tuple[float, bytes]:
        task = asyncio.ensure_future(render)
        longest = 0.0
        last = time.perf_counter()
        while not task.done():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now
        return longest, await task

    return asyncio.run(main())
