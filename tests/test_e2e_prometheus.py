"""The proof that the operations kit works on live data: the demo gateway
(`python -m examples.gateway`, as the README starts it) behind a real Prometheus that scrapes it
every second and evaluates the kit's own rule files, under realistic load from
`examples.gateway.load`. Every query of the Grafana dashboard and every recording rule must
return data, every rule must evaluate without error, and no API key may reach Prometheus.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from _prometheus import STARTUP_SECONDS, demo_gateway, prometheus_server, scrape_job, write_config
from promql_queries import (
    ALERT_RULES_FILE,
    DASHBOARD_QUERIES,
    RECORDING_RULES,
    RECORDING_RULES_FILE,
    load_rule_groups,
)

from examples.gateway.load import run_load

pytestmark = [pytest.mark.slow, pytest.mark.prometheus]

JOB = "gatewayz-api"
ENVIRONMENT = "e2e"
LOAD_SECONDS = 20.0
"""Long enough for several scrapes and rule evaluations of every series, and to reach the
demo's first outage window (10 s after the gateway starts)."""
QUERY_SECONDS = 30.0
"""How long rules get to catch up after the load: each evaluation needs two scrapes of a
series inside its window, and the queries are polled until they all have data."""


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str]:
    """`python -m examples.gateway` on a free loopback port, without built-in traffic (the
    test's load is the only traffic); yields its base URL and stops it in every case."""
    # A second between health probes, like the scrape interval.
    with demo_gateway(tmp_path / "gateway.log", {"GATEWAYZ_DEMO_HEALTH_INTERVAL": "1"}) as url:
        yield url


def write_kit_config(directory: Path, target: str) -> Path:
    """A Prometheus configuration scraping `target` every second with the kit's rule files."""
    groups = load_rule_groups(RECORDING_RULES_FILE)
    for group in groups:
        # gatewayz-daily.rules runs every 5 minutes in production (its 24-hour windows are
        # costly); at that pace this test would never see it evaluated, so the copy runs it
        # every second like the other groups. The rules themselves are unchanged.
        if "interval" in group:
            group["interval"] = "1s"
    rules = directory / "recording_rules.yml"
    rules.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
    shutil.copy(ALERT_RULES_FILE, directory / "alert_rules.yml")
    static = {"targets": [target], "labels": {"service": JOB, "environment": ENVIRONMENT}}
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["recording_rules.yml", "alert_rules.yml"],
        "scrape_configs": [scrape_job(JOB, static, metrics_path="/metrics")],
    }
    return write_config(directory, config)


@pytest.fixture
def prometheus(tmp_path: Path, gateway: str) -> Iterator[str]:
    """A real Prometheus on a free loopback port scraping `gateway`; yields its base URL and
    stops it in every case."""
    directory = tmp_path / "prometheus"
    directory.mkdir()
    config = write_kit_config(directory, gateway.removeprefix("http://"))
    with prometheus_server(tmp_path, directory, config) as url:
        yield url


async def api(client: httpx.AsyncClient, path: str, **params: str) -> Any:
    """The `data` of a successful Prometheus HTTP API answer."""
    response = await client.get(path, params=params)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]


async def wait_for_target(client: httpx.AsyncClient) -> dict[str, Any]:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        targets = (await api(client, "/api/v1/targets"))["activeTargets"]
        ours = [t for t in targets if t["labels"].get("job") == JOB]
        if ours and ours[0]["health"] == "up":
            target: dict[str, Any] = ours[0]
            return target
        if time.monotonic() > deadline:
            pytest.fail(f"the {JOB} target is not up: {ours}")
        await asyncio.sleep(0.5)


async def test_every_dashboard_query_and_recording_rule_has_data(
    gateway: str, prometheus: str, tmp_path: Path
) -> None:
    """Under load, Prometheus scrapes the demo (target up, with its service and environment
    labels), every dashboard query and every recording rule returns data, every rule
    evaluates cleanly, and the only key-like label values are fingerprints."""
    async with httpx.AsyncClient(base_url=prometheus, timeout=10.0) as client:
        target = await wait_for_target(client)
        assert target["labels"]["service"] == JOB
        assert target["labels"]["environment"] == ENVIRONMENT

        summary = await run_load(gateway, duration=LOAD_SECONDS, concurrency=8, seed=1)
        assert summary["transport_errors"] == 0, summary
        # The mix the panels need: successes, refusals of every kind, provider failures.
        assert {"200", "401", "402", "404", "429"} <= set(summary["by_status"]), summary

        queries = {expr: f"dashboard panel {title!r}" for title, expr in DASHBOARD_QUERIES}
        queries.update({record: f"recording rule {record}" for record, _ in RECORDING_RULES})
        empty = dict(queries)
        deadline = time.monotonic() + QUERY_SECONDS
        while empty and time.monotonic() < deadline:
            for expr in list(empty):
                if (await api(client, "/api/v1/query", query=expr))["result"]:
                    del empty[expr]
            if empty:
                await asyncio.sleep(1.0)
        assert not empty, "no data for:\n" + "\n".join(
            f"  {what}: {expr}" for expr, what in empty.items()
        )

        groups = (await api(client, "/api/v1/rules"))["groups"]
        broken = [
            (rule["name"], rule.get("lastError"))
            for group in groups
            for rule in group["rules"]
            if rule["health"] != "ok"
        ]
        assert broken == [], broken
        assert sum(len(group["rules"]) for group in groups) >= len(RECORDING_RULES)

        for label in ("user_id", "api_key_id"):
            values = await api(client, f"/api/v1/label/{label}/values")
            assert values, label
            leaked = [v for v in values if not v.startswith("sha256:")]
            assert set(leaked) <= {"unknown", "anonymous"}, (label, leaked)

        # Who refused: each of the demo's own limits, apart from the provider that answers 429;
        # and the model without a price was counted as such.
        for expr in (
            'gateway_rejections_total{scope="key", kind="rpm"}',
            'gateway_rejections_total{scope="key", kind="concurrency"}',
            'gateway_rejections_total{scope="user", kind="credits"}',
            'provider_rate_limited_total{provider="openrouter"}',
            'inference_unpriced_total{model="openrouter/mistralai/mixtral-8x22b-instruct"}',
            "model_fallbacks_total > 0",
            'gateway_request_attempts_bucket{le="1.0"}'
            " < ignoring (le) gateway_request_attempts_count",
        ):
            assert (await api(client, "/api/v1/query", query=expr))["result"], expr

        # The demo's outage window fell inside the run: the availability panel saw it.
        down = await api(client, "/api/v1/query", query="min_over_time(provider_availability[5m])")
        assert any(float(sample["value"][1]) == 0 for sample in down["result"]), down
