"""Custom collectors shared by the endpoint tests, and a loop-friendly wait for the events they
set from the render thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import anyio
from prometheus_client.core import GaugeMetricFamily, Metric


class GatedCollector:
    """A custom collector whose first collect blocks until `release` is set."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        self.calls += 1
        if self.calls == 1:
            self.started.set()
            assert self.release.wait(10), "never released"
        yield GaugeMetricFamily("gated", "Gated.", value=self.calls)


async def wait_for(event: threading.Event) -> None:
    """Poll a threading.Event from the event loop (asyncio or trio) without blocking it."""
    deadline = time.monotonic() + 10
    while not event.is_set():
        assert time.monotonic() < deadline, "the event was never set"
        await anyio.sleep(0.002)
