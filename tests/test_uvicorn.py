"""The middleware behind a real uvicorn on 127.0.0.1: real sockets, real streaming, a real
client that hangs up mid-stream, and `/metrics` scraped over HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from _apps import STREAM_CHUNKS, build_app
from _servers import uvicorn_thread
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from gatewayz_metrics import UNMATCHED_ENDPOINT

pytestmark = pytest.mark.slow
STREAM_DELAY = 0.3
"""Seconds before each `/stream` chunk: long enough for a client to leave mid-stream."""


@pytest.fixture(params=["starlette", "fastapi"], ids=["starlette", "fastapi"])
def served(request: pytest.FixtureRequest) -> Iterator[str]:
    """The test app behind uvicorn in a thread; yields its base URL, stops it afterwards."""
    app = build_app(request.param, CollectorRegistry(), stream_delay=STREAM_DELAY)
    with uvicorn_thread(app, log_level="critical", ws="none", lifespan="on") as url:
        yield url


def scraped(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples of an exposition, keyed by (name, labels)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    """One sample of a scrape, None when absent."""
    return samples.get((name, frozenset(labels.items())))


async def scrape_until(
    client: httpx.AsyncClient, expected: dict[tuple[str, str], float], timeout: float = 10
) -> dict[Any, float]:
    """Scrape until `http_requests_total{method="GET"}` per (endpoint, status_code) matches
    `expected` and nothing is in progress; return that scrape.

    A request is recorded when its handler returns, just after its last byte went out, so
    a client can read a response before it is counted: a scrape may need a retry.
    """
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get("/metrics")
        assert response.status_code == 200
        samples = scraped(response.text)
        got = {
            (endpoint, status): value(
                samples, "http_requests_total", method="GET", endpoint=endpoint, status_code=status
            )
            for endpoint, status in expected
        }
        idle = value(samples, "http_requests_in_progress", method="GET") == 0
        if (got == expected and idle) or time.monotonic() > deadline:
            assert got == expected
            assert idle
            return samples
        await asyncio.sleep(0.02)


async def test_real_traffic_is_recorded_and_scraped_over_http(served: str) -> None:
    """Plain, templated, unmatched, streamed and abandoned requests all show in /metrics."""
    async with httpx.AsyncClient(base_url=served, timeout=10) as client:
        for _ in range(3):
            assert (await client.get("/ping")).text == "pong"
        assert (await client.get("/items/1")).status_code == 200
        assert (await client.get("/items/2")).status_code == 200
        assert (await client.get("/definitely/not/here")).status_code == 404

        began = time.perf_counter()
        streamed = await client.get("/stream")
        stream_time = time.perf_counter() - began
        assert streamed.content == b"".join(STREAM_CHUNKS)

        async with client.stream("GET", "/stream") as response:
            async for _ in response.aiter_raw():
                break  # the first chunk arrived: hang up mid-stream

        samples = await scrape_until(
            client,
            {
                ("/ping", "200"): 3,
                ("/items/{item_id}", "200"): 2,
                (UNMATCHED_ENDPOINT, "404"): 1,
                ("/stream", "200"): 1,
                ("/stream", "499"): 1,
            },
        )
    assert not [key for key in samples if ("endpoint", "/metrics") in key[1]]

    stream = {"method": "GET", "endpoint": "/stream"}
    assert value(samples, "http_request_duration_seconds_count", **stream) == 2
    stream_duration = value(samples, "http_request_duration_seconds_sum", **stream) or 0
    assert 3 * STREAM_DELAY * 0.9 < stream_duration < stream_time + 3 * STREAM_DELAY
    sent = value(samples, "http_response_size_bytes_total", **stream) or 0
    assert (
        sum(map(len, STREAM_CHUNKS)) + len(STREAM_CHUNKS[0])
        <= sent
        < 2 * sum(map(len, STREAM_CHUNKS))
    )
