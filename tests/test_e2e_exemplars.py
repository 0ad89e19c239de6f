"""Exemplars end to end: the demo gateway with OpenTelemetry tracing (spans kept in memory,
offline) behind a real Prometheus with `--enable-feature=exemplar-storage`. Prometheus
negotiates OpenMetrics, stores the exemplars, and `/api/v1/query_exemplars` returns trace
ids that the demo's own exporter recorded, for the HTTP and inference latency families."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _prometheus import demo_gateway, prometheus_server, scrape_job, write_config

from examples.gateway.load import run_load

pytestmark = [pytest.mark.slow, pytest.mark.prometheus]

JOB = "gatewayz-exemplars"
LOAD_SECONDS = 8.0
QUERY_SECONDS = 30.0
FAMILIES = (
    "http_request_duration_seconds_bucket",
    "http_time_to_first_byte_seconds_bucket",
    "model_inference_duration_seconds_bucket",
    "model_time_to_first_token_seconds_bucket",
)


@pytest.fixture
def traced_gateway(tmp_path: Path) -> Iterator[str]:
    """`python -m examples.gateway` with tracing on (GATEWAYZ_DEMO_TRACING=1), no built-in
    traffic, on a free loopback port; yields its base URL and stops it in every case."""
    env = {"GATEWAYZ_DEMO_TRACING": "1", "GATEWAYZ_DEMO_HEALTH_INTERVAL": "1"}
    with demo_gateway(tmp_path / "gateway.log", env) as url:
        yield url


@pytest.fixture
def exemplar_prometheus(tmp_path: Path, traced_gateway: str) -> Iterator[str]:
    """A real Prometheus storing exemplars, scraping the gateway every second."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    target = {"targets": [traced_gateway.removeprefix("http://")]}
    config = {"global": {"scrape_interval": "1s"}, "scrape_configs": [scrape_job(JOB, target)]}
    config_file = write_config(directory, config)
    flags = ["--enable-feature=exemplar-storage"]
    with prometheus_server(tmp_path, directory, config_file, flags) as url:
        yield url


async def query_exemplars(client: httpx.AsyncClient, family: str, start: float) -> list[str]:
    """The trace ids of the exemplars Prometheus stored for `family` since `start`."""
    response = await client.get(
        "/api/v1/query_exemplars",
        params={"query": family, "start": f"{start:.3f}", "end": f"{time.time() + 60:.3f}"},
    )
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    assert body["status"] == "success", body
    return [
        exemplar["labels"]["trace_id"]
        for series in body["data"]
        for exemplar in series["exemplars"]
        if "trace_id" in exemplar["labels"]
    ]


async def test_prometheus_stores_the_demos_trace_ids_as_exemplars(
    traced_gateway: str, exemplar_prometheus: str
) -> None:
    """Under load, every latency family has exemplars in Prometheus, and every trace id
    Prometheus returns is one the demo's in-memory span exporter recorded."""
    start = time.time() - 5
    summary = await run_load(traced_gateway, duration=LOAD_SECONDS, concurrency=4, seed=3)
    assert summary["transport_errors"] == 0, summary
    async with httpx.AsyncClient(base_url=exemplar_prometheus, timeout=10.0) as client:
        found: dict[str, list[str]] = {}
        deadline = time.monotonic() + QUERY_SECONDS
        while time.monotonic() < deadline:
            found = {family: await query_exemplars(client, family, start) for family in FAMILIES}
            if all(found.values()):
                break
            await asyncio.sleep(1.0)
        assert all(found.values()), {family: len(ids) for family, ids in found.items()}
    async with httpx.AsyncClient(base_url=traced_gateway, timeout=10.0) as gateway:
        response = await gateway.get("/debug/traces")
        response.raise_for_status()
        recorded = set(response.json()["trace_ids"])
    returned = {trace_id for ids in found.values() for trace_id in ids}
    assert len(recorded) >= len(returned) > 0
    assert returned <= recorded, sorted(returned - recorded)[:5]
    assert all(len(trace_id) == 32 for trace_id in returned)
    total = sum(len(ids) for ids in found.values())
    print(f"exemplars returned by Prometheus: {total} ({len(returned)} distinct traces)")
