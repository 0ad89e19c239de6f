"""Exemplars end to end: the demo gateway with OpenTelemetry tracing (spans kept in memory,
offline) behind a real Prometheus with `--enable-feature=exemplar-storage`. Prometheus
negotiates OpenMetrics, stores the exemplars, and `/api/v1/query_exemplars` returns trace
ids that the demo's own exporter recorded, for the HTTP and inference latency families."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from _binaries import require_binary
from _servers import free_port, start_logged, stop, wait_serving
from promql_queries import REPO_ROOT

from examples.gateway.load import run_load

pytestmark = [pytest.mark.slow, pytest.mark.prometheus]

JOB = "gatewayz-exemplars"
LOAD_SECONDS = 8.0
STARTUP_SECONDS = 20.0
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
    port = free_port()
    log = tmp_path / "gateway.log"
    env = {**os.environ, "GATEWAYZ_DEMO_TRACING": "1", "GATEWAYZ_DEMO_HEALTH_INTERVAL": "1"}
    command = [sys.executable, "-m", "examples.gateway", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--no-traffic", "--log-level", "warning"]
    process = start_logged(command, log, cwd=REPO_ROOT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_serving(f"{url}/health", process, log, timeout=STARTUP_SECONDS)
        yield url
    finally:
        stop(process)


@pytest.fixture
def exemplar_prometheus(tmp_path: Path, traced_gateway: str) -> Iterator[str]:
    """A real Prometheus storing exemplars, scraping the gateway every second."""
    binary = require_binary("prometheus")
    directory = tmp_path / "prometheus"
    directory.mkdir()
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": JOB,
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "static_configs": [{"targets": [traced_gateway.removeprefix("http://")]}],
            }
        ],
    }
    config_file = directory / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    port = free_port()
    log = tmp_path / "prometheus.log"
    command = [
        binary,
        f"--config.file={config_file}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--enable-feature=exemplar-storage",
    ]
    process = start_logged(command, log, cwd=directory)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_serving(f"{url}/-/ready", process, log, timeout=STARTUP_SECONDS)
        yield url
    finally:
        stop(process)


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
