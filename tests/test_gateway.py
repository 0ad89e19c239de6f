"""The demo gateway (examples/gateway): each endpoint behaves like an OpenAI-compatible AI
gateway, and each behaviour feeds the metric family it claims, in process with a fresh
registry. Its load generator refuses anything but loopback and stays bounded in time."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _asgi import RecordingSend, ScriptedReceive, client_for, http_scope
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from starlette.requests import ClientDisconnect

from examples.gateway import load
from examples.gateway.app import (
    DEMO_KEYS,
    UNKNOWN_KEY,
    Gateway,
    ResponseCache,
    Settings,
    TokenBucket,
    create_app,
)
from examples.gateway.providers import (
    DEFAULT_PROVIDERS,
    Completion,
    OutageWindow,
    ProviderProfile,
    Usage,
    model_catalog,
)
from gatewayz_metrics._secrets import fingerprint

ROOT = Path(__file__).resolve().parent.parent
KEYS = {demo.owner: demo.key for demo in DEMO_KEYS}
CREDITS = {demo.owner: demo.credits for demo in DEMO_KEYS}
ACTIVE_KEYS = sum(1 for demo in DEMO_KEYS if demo.active)
ALICE = KEYS["alice"]
MODEL = "openai/gpt-4o"
OPENAI = {"provider": "openai", "model": MODEL}
CATALOG = model_catalog(DEFAULT_PROVIDERS)
RELIABLE = tuple(
    dataclasses.replace(profile, error_rate=0.0, timeout_rate=0.0, rate_limit_rate=0.0, outages=())
    for profile in DEFAULT_PROVIDERS
)
"""The demo's providers without failures: outcomes that do not depend on the seed."""
FAST = Settings(latency_scale=0.01, upstream_timeout=1.0, providers=RELIABLE)


def with_providers(**changes: Any) -> Settings:
    """FAST settings whose every provider has `changes` applied."""
    profiles = tuple(dataclasses.replace(profile, **changes) for profile in RELIABLE)
    return dataclasses.replace(FAST, providers=profiles)


def chat(model: str = MODEL, content: str = "Say hello.", **extra: Any) -> dict[str, Any]:
    """An OpenAI chat completion request body."""
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sse_events(text: str) -> list[str]:
    """The `data:` payloads of a server-sent event stream, in order."""
    events = [block for block in text.split("\n\n") if block]
    assert all(event.startswith("data: ") for event in events), events
    return [event.removeprefix("data: ") for event in events]


@pytest.fixture
def gateway_app(registry: CollectorRegistry) -> Iterator[FastAPI]:
    """The demo app on a fresh registry with fast, reliable providers."""
    app = create_app(registry=registry, settings=FAST)
    yield app
    app.state.gateway.close()


@pytest.fixture
async def client(gateway_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client of `gateway_app`."""
    async with client_for(gateway_app) as http:
        yield http


def app_with(registry: CollectorRegistry, settings: Settings) -> FastAPI:
    return create_app(registry=registry, settings=settings)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0 when the series does not exist."""
    return registry.get_sample_value(name, labels) or 0.0


async def post(http: httpx.AsyncClient, body: dict[str, Any], key: str = ALICE) -> httpx.Response:
    return await http.post("/v1/chat/completions", json=body, headers=bearer(key))


# --- completions ---------------------------------------------------------------------------


async def test_a_completion_is_openai_json_and_feeds_inference_tokens_and_credits(
    client: httpx.AsyncClient, registry: CollectorRegistry, gateway_app: FastAPI
) -> None:
    """A completion answers OpenAI's shape and records inference, tokens, credits, key use,
    the database queries of billing and a cache miss."""
    response = await post(client, chat())
    assert response.status_code == 200
    assert response.headers["x-gatewayz-cache"] == "miss"
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["choices"][0]["message"]["content"]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]

    assert value(registry, "model_inference_requests_total", **OPENAI, status="success") == 1
    assert value(registry, "model_inference_duration_seconds_count", **OPENAI) == 1
    assert value(registry, "model_time_to_first_token_seconds_count", **OPENAI) == 0
    tokens = {"token_type": "input"}
    assert value(registry, "tokens_used_total", **OPENAI, **tokens) == usage["prompt_tokens"]
    tokens = {"token_type": "output"}
    assert value(registry, "tokens_used_total", **OPENAI, **tokens) == usage["completion_tokens"]
    credits = CATALOG[MODEL].credits(usage["prompt_tokens"], usage["completion_tokens"])
    user = {"user_id": fingerprint(ALICE)}
    assert value(registry, "credits_used_total", **OPENAI, **user) == pytest.approx(credits)
    key_use = {"api_key_id": fingerprint(ALICE), "status": "success"}
    assert value(registry, "api_key_usage_total", **key_use) == 1
    billing = {"table": "credit_balances", "operation": "update"}
    assert value(registry, "database_queries_total", **billing) == 1
    assert value(registry, "database_query_duration_seconds_count", **billing) == 1
    log = {"table": "usage_events", "operation": "insert"}
    assert value(registry, "database_queries_total", **log) == 1
    assert value(registry, "cache_misses_total", cache_name="completions") == 1
    assert value(registry, "cache_size_bytes", cache_name="completions") > 0
    gateway: Gateway = gateway_app.state.gateway
    assert gateway.db.balance(ALICE) == pytest.approx(CREDITS["alice"] - credits)


async def test_a_stream_is_openai_sse_and_observes_time_to_first_token(
    client: httpx.AsyncClient, registry: CollectorRegistry
) -> None:
    """A stream sends `chat.completion.chunk` events ending with `[DONE]`, and records time to
    first token, time per output token and the usage of its last chunk."""
    body = chat(stream=True, stream_options={"include_usage": True})
    response = await post(client, body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    usage = chunks[-1]["usage"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert len(text.split(" ")) == usage["completion_tokens"]

    assert value(registry, "model_inference_requests_total", **OPENAI, status="success") == 1
    assert value(registry, "model_time_to_first_token_seconds_count", **OPENAI) == 1
    assert value(registry, "model_time_per_output_token_seconds_count", **OPENAI) == 1
    output = {"token_type": "output"}
    assert value(registry, "tokens_used_total", **OPENAI, **output) == usage["completion_tokens"]
    user = {"user_id": fingerprint(ALICE)}
    assert value(registry, "credits_used_total", **OPENAI, **user) > 0


async def test_a_repeated_request_is_a_cache_hit_without_inference(
    client: httpx.AsyncClient, registry: CollectorRegistry
) -> None:
    """The same model and messages again are answered from the cache, streamed or not: a
    hit each, and no second inference call."""
    first = await post(client, chat(content="What is 2 + 2?"))
    second = await post(client, chat(content="What is 2 + 2?"))
    streamed = await post(client, chat(content="What is 2 + 2?", stream=True))
    assert second.headers["x-gatewayz-cache"] == "hit"
    assert second.json()["choices"] == first.json()["choices"]
    assert streamed.headers["x-gatewayz-cache"] == "hit"
    assert sse_events(streamed.text)[-1] == "[DONE]"
    assert value(registry, "cache_hits_total", cache_name="completions") == 2
    assert value(registry, "cache_misses_total", cache_name="completions") == 1
    assert value(registry, "model_inference_requests_total", **OPENAI, status="success") == 1


# --- refusals ------------------------------------------------------------------------------


async def test_missing_unknown_and_revoked_keys_are_401(
    client: httpx.AsyncClient, registry: CollectorRegistry
) -> None:
    """No key, an unknown key and a revoked key get 401 in OpenAI's error shape; unknown keys
    are counted under one fixed id, never as themselves."""
    missing = await client.post("/v1/chat/completions", json=chat())
    unknown = await post(client, chat(), key=UNKNOWN_KEY)
    revoked = await post(client, chat(), key=KEYS["ivan"])
    assert [r.status_code for r in (missing, unknown, revoked)] == [401, 401, 401]
    assert unknown.json()["error"]["code"] == "invalid_api_key"
    assert revoked.json()["error"]["code"] == "api_key_revoked"
    assert value(registry, "api_key_usage_total", api_key_id="anonymous", status="missing") == 1
    assert value(registry, "api_key_usage_total", api_key_id="unknown", status="invalid") == 1
    revoked_use = {"api_key_id": fingerprint(KEYS["ivan"]), "status": "inactive"}
    assert value(registry, "api_key_usage_total", **revoked_use) == 1
    assert value(registry, "model_inference_duration_seconds_count", **OPENAI) == 0


@pytest.mark.parametrize("owner", ["erin", "heidi"], ids=["zero-balance", "overdrawn"])
async def test_a_key_without_credits_is_402(
    owner: str, client: httpx.AsyncClient, registry: CollectorRegistry
) -> None:
    """A key whose balance is zero or negative gets 402 and reaches no provider."""
    response = await post(client, chat(), key=KEYS[owner])
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "insufficient_credits"
    labels = {"api_key_id": fingerprint(KEYS[owner]), "status": "insufficient_credits"}
    assert value(registry, "api_key_usage_total", **labels) == 1
    assert value(registry, "model_inference_duration_seconds_count", **OPENAI) == 0


async def test_a_key_over_its_rate_limit_is_429(
    client: httpx.AsyncClient, registry: CollectorRegistry
) -> None:
    """A key with a burst of one gets 429 with Retry-After on its second request, counted in
    `rate_limited_requests_total{limit_type="api_key"}`; its headroom reads 0."""
    frank = KEYS["frank"]
    assert (await post(client, chat(), key=frank)).status_code == 200
    refused = await post(client, chat(), key=frank)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    assert value(registry, "rate_limited_requests_total", limit_type="api_key") == 1
    assert value(registry, "current_rate_limit", limit_type="api_key") == 0
    labels = {"api_key_id": fingerprint(frank), "status": "rate_limited"}
    assert value(registry, "api_key_usage_total", **labels) == 1


async def test_the_global_rate_limit_is_429_with_its_own_limit_type(
    registry: CollectorRegistry,
) -> None:
    """Past the gateway-wide bucket, any key gets 429 under `limit_type="global"`."""
    app = app_with(registry, dataclasses.replace(FAST, global_rate=0.001, global_burst=1))
    async with client_for(app) as http:
        assert (await post(http, chat())).status_code == 200
        assert (await post(http, chat())).status_code == 429
    app.state.gateway.close()
    assert value(registry, "rate_limited_requests_total", limit_type="global") == 1
    assert value(registry, "current_rate_limit", limit_type="global") == 0


async def test_bad_bodies_are_400_and_unknown_models_404(
    client: httpx.AsyncClient, registry: CollectorRegistry
) -> None:
    """A body without messages is 400, a model nobody serves is 404; neither reaches a provider."""
    empty = await post(client, {"model": MODEL, "messages": []})
    not_json = await client.post(
        "/v1/chat/completions", content=b"{not json", headers=bearer(ALICE)
    )
    unknown = await post(client, chat(model="mistral/mistral-large-2411"))
    assert [empty.status_code, not_json.status_code, unknown.status_code] == [400, 400, 404]
    assert "messages" in empty.json()["error"]["message"]
    assert unknown.json()["error"]["code"] == "model_not_found"
    bad = {"api_key_id": fingerprint(ALICE), "status": "bad_request"}
    assert value(registry, "api_key_usage_total", **bad) == 2
    assert value(registry, "model_inference_duration_seconds_count", **OPENAI) == 0


# --- provider failures ---------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_provider_error_is_502_and_an_inference_error(
    stream: bool, registry: CollectorRegistry
) -> None:
    """A provider failing before its first token gives 502 and `status="error"`; no credits
    are charged."""
    # One token per answer, so a failing stream fails before its first token.
    app = app_with(registry, with_providers(error_rate=1.0, output_tokens=(1, 1)))
    async with client_for(app) as http:
        response = await post(http, chat(stream=stream))
    app.state.gateway.close()
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    assert value(registry, "model_inference_requests_total", **OPENAI, status="error") == 1
    assert value(registry, "model_inference_requests_total", **OPENAI, status="success") == 0
    assert value(registry, "credits_used_total", **OPENAI, user_id=fingerprint(ALICE)) == 0
    labels = {"api_key_id": fingerprint(ALICE), "status": "upstream_error"}
    assert value(registry, "api_key_usage_total", **labels) == 1


async def test_a_provider_failing_mid_stream_ends_the_stream_with_an_error_event(
    registry: CollectorRegistry,
) -> None:
    """Once the stream has started, a provider error is an `error` event (the status line is
    gone) and still `status="error"` in the metrics, with the first token observed."""
    app = app_with(registry, with_providers(error_rate=1.0, output_tokens=(60, 60)))
    async with client_for(app) as http:
        response = await post(http, chat(stream=True))
    app.state.gateway.close()
    assert response.status_code == 200
    last = json.loads(sse_events(response.text)[-1])
    assert last["error"]["code"] == "upstream_error"
    assert value(registry, "model_inference_requests_total", **OPENAI, status="error") == 1
    assert value(registry, "model_time_to_first_token_seconds_count", **OPENAI) == 1
    assert value(registry, "model_time_per_output_token_seconds_count", **OPENAI) == 0


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_provider_timeout_is_504_and_an_inference_timeout(
    stream: bool, registry: CollectorRegistry
) -> None:
    """A provider that stops answering is cut at the upstream timeout: 504, `status="timeout"`."""
    settings = dataclasses.replace(
        with_providers(timeout_rate=1.0, output_tokens=(1, 1)), upstream_timeout=0.05
    )
    app = app_with(registry, settings)
    async with client_for(app) as http:
        response = await post(http, chat(stream=stream))
    gateway: Gateway = app.state.gateway
    gateway.close()
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert value(registry, "model_inference_requests_total", **OPENAI, status="timeout") == 1
    assert gateway.upstreams["openai"].in_flight == 0


async def test_an_outage_makes_the_provider_unavailable(registry: CollectorRegistry) -> None:
    """During an outage calls fail (502) and, after three failed probes or calls, the health
    monitor reports the provider unavailable with its error rate; the others stay up."""
    down = dataclasses.replace(RELIABLE[0], outages=(OutageWindow(start=0, duration=1e9),))
    # No fallback chains: the request would otherwise succeed on another provider.
    settings = dataclasses.replace(FAST, providers=(down, *RELIABLE[1:]), fallbacks={})
    app = app_with(registry, settings)
    gateway: Gateway = app.state.gateway
    async with client_for(app) as http:
        assert (await post(http, chat())).status_code == 502
        await gateway.check_provider_health()
        await gateway.check_provider_health()
        health = (await http.get("/health")).json()
    gateway.close()
    assert health["providers"]["openai"]["available"] is False
    assert value(registry, "provider_availability", provider="openai") == 0
    assert value(registry, "provider_error_rate", provider="openai") == 1
    assert value(registry, "provider_availability", provider="anthropic") == 1
    assert value(registry, "provider_error_rate", provider="anthropic") == 0
    assert value(registry, "provider_response_time_seconds", provider="anthropic") > 0
    assert value(registry, "model_inference_requests_total", **OPENAI, status="error") == 1


async def test_provider_health_reflects_recent_calls(
    client: httpx.AsyncClient, registry: CollectorRegistry, gateway_app: FastAPI
) -> None:
    """After successful calls the provider is available, with no errors and the calls'
    average duration as its response time."""
    for index in range(3):
        assert (await post(client, chat(content=f"question {index}"))).status_code == 200
    snapshots = await gateway_app.state.gateway.check_provider_health()
    assert snapshots["openai"].samples == 4  # three calls and one probe
    assert value(registry, "provider_availability", provider="openai") == 1
    assert value(registry, "provider_error_rate", provider="openai") == 0
    response_time = value(registry, "provider_response_time_seconds", provider="openai")
    assert response_time == pytest.approx(snapshots["openai"].response_time)


# --- clients that leave --------------------------------------------------------------------


@pytest.mark.parametrize("spec_version", ["2.3", "2.4"], ids=["disconnect-message", "send-fails"])
async def test_a_client_leaving_mid_stream_is_cancelled_and_frees_its_slot(
    spec_version: str, registry: CollectorRegistry
) -> None:
    """A client gone mid-stream is `cancelled` (not a provider error), 499 for HTTP, and the
    connection slot is released; ASGI 2.3 servers say so with `http.disconnect`, 2.4 servers
    with a failing `send`."""
    settings = dataclasses.replace(with_providers(output_tokens=(200, 200)), latency_scale=0.2)
    app = app_with(registry, settings)
    gateway: Gateway = app.state.gateway
    scope = http_scope(
        "/v1/chat/completions",
        method="POST",
        headers=[(b"authorization", f"Bearer {ALICE}".encode())],
    )
    scope["asgi"]["spec_version"] = spec_version
    body = json.dumps(chat(stream=True)).encode()
    receive = ScriptedReceive([{"type": "http.request", "body": body}])
    if spec_version == "2.3":
        send = RecordingSend()
        task = asyncio.create_task(app(scope, receive, send))
        while len(send.messages) < 3:  # the start and two chunks
            await asyncio.sleep(0.01)
        receive.disconnect()
        await task
    else:
        send = RecordingSend(fail_at=3, fail_with=OSError("connection reset"))
        with pytest.raises(ClientDisconnect):
            await app(scope, receive, send)
    gateway.close()
    assert value(registry, "model_inference_requests_total", **OPENAI, status="cancelled") == 1
    assert value(registry, "model_inference_requests_total", **OPENAI, status="error") == 0
    labels = {"method": "POST", "endpoint": "/v1/chat/completions", "status_code": "499"}
    assert value(registry, "http_requests_total", **labels) == 1
    assert gateway.upstreams["openai"].in_flight == 0
    assert gateway.upstreams["openai"].stats.snapshot().samples == 0


# --- gauges of state -------------------------------------------------------------------------


async def test_state_gauges_are_read_from_the_database_at_scrape_time(
    client: httpx.AsyncClient, registry: CollectorRegistry
) -> None:
    """Keys, trials, subscriptions and balances come from the database when scraped; the
    balance moves with spending, keyed by the key's fingerprint."""
    assert value(registry, "active_api_keys", status="active") == ACTIVE_KEYS
    assert value(registry, "active_api_keys", status="inactive") == 1
    assert value(registry, "trial_active", status="active") == 1
    assert value(registry, "trial_active", status="expired") == 1
    assert value(registry, "subscription_count", plan="pro") == 2
    assert value(registry, "subscription_count", plan="enterprise") == 1
    heidi = {"user_id": fingerprint(KEYS["heidi"])}
    assert value(registry, "user_credit_balance", **heidi) == -1.5
    alice = {"user_id": fingerprint(ALICE)}
    before = value(registry, "user_credit_balance", **alice)
    assert (await post(client, chat())).status_code == 200
    assert value(registry, "user_credit_balance", **alice) < before
    assert value(registry, "active_connections", connection_type="db") == 1
    scrape = {"table": "api_keys", "operation": "select"}
    assert value(registry, "database_queries_total", **scrape) > 1


async def test_connections_and_queue_follow_the_requests_in_flight(
    registry: CollectorRegistry,
) -> None:
    """With one connection slot per provider, one call holds it (`active_connections`) while
    the others wait in the provider's queue (`queue_size`); both return to zero."""
    settings = dataclasses.replace(
        with_providers(output_tokens=(20, 20)), latency_scale=0.2, max_concurrency_per_provider=1
    )
    app = app_with(registry, settings)
    upstream = app.state.gateway.upstreams["openai"]
    async with client_for(app) as http:
        calls = [
            asyncio.create_task(post(http, chat(content=f"q{index}", stream=True), KEYS["carol"]))
            for index in range(3)
        ]
        while upstream.waiting < 2:
            await asyncio.sleep(0.005)
        assert value(registry, "active_connections", connection_type="provider") == 1
        assert value(registry, "queue_size", queue="upstream:openai") == 2
        assert [(await call).status_code for call in calls] == [200, 200, 200]
    app.state.gateway.close()
    assert value(registry, "active_connections", connection_type="provider") == 0
    assert value(registry, "queue_size", queue="upstream:openai") == 0


# --- the read-only endpoints -----------------------------------------------------------------


async def test_models_and_health_endpoints(client: httpx.AsyncClient) -> None:
    """`/v1/models` lists every model with its provider; `/health` every provider."""
    models = (await client.get("/v1/models")).json()
    assert models["object"] == "list"
    assert {entry["id"] for entry in models["data"]} == set(CATALOG)
    assert all(entry["id"].startswith(entry["owned_by"] + "/") for entry in models["data"])
    health = (await client.get("/health")).json()
    assert set(health["providers"]) == {profile.name for profile in DEFAULT_PROVIDERS}


# --- every family, under the built-in traffic ------------------------------------------------

# Every metric family of the domain module (and the middleware's), by an exposed sample name.
DOMAIN_SAMPLES = (
    "http_requests_total",
    "http_request_duration_seconds_count",
    "model_inference_requests_total",
    "model_inference_duration_seconds_count",
    "model_time_to_first_token_seconds_count",
    "model_time_per_output_token_seconds_count",
    "tokens_used_total",
    "credits_used_total",
    "database_queries_total",
    "database_query_duration_seconds_count",
    "cache_hits_total",
    "cache_misses_total",
    "cache_size_bytes",
    "rate_limited_requests_total",
    "current_rate_limit",
    "provider_availability",
    "provider_error_rate",
    "provider_response_time_seconds",
    "api_key_usage_total",
    "active_api_keys",
    "user_credit_balance",
    "trial_active",
    "subscription_count",
    "active_connections",
    "queue_size",
)


@pytest.mark.slow
async def test_the_built_in_traffic_feeds_every_family_and_no_key_leaks(
    registry: CollectorRegistry,
) -> None:
    """Two seconds of the demo's own traffic (lifespan on, as `python -m examples.gateway`
    runs it) give every family a non-zero sample and every kind of answer, and not one API key
    appears in the exposition."""
    settings = dataclasses.replace(
        Settings(latency_scale=0.02, upstream_timeout=0.5, health_interval=0.05),
        traffic=True,
        traffic_concurrency=6,
    )
    app = app_with(registry, settings)
    async with app.router.lifespan_context(app):
        await asyncio.sleep(2.0)
    exposition = generate_latest(registry).decode()
    app.state.gateway.close()
    samples: dict[str, float] = {}
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            samples[name] = max(samples.get(name, 0.0), float(line.rsplit(" ", 1)[1]))
    assert [name for name in DOMAIN_SAMPLES if name not in samples] == []
    # Gauges that may rightly read 0 (no provider out of slots, no failure in the window);
    # every other family has counted or measured something.
    may_be_zero = {"queue_size", "provider_error_rate"}
    assert [name for name in DOMAIN_SAMPLES if name not in may_be_zero and samples[name] <= 0] == []
    statuses = {
        label.split('"')[1]
        for line in exposition.splitlines()
        if line.startswith("http_requests_total{")
        for label in line.split(",")
        if label.startswith("status_code=")
    }
    assert {"200", "400", "401", "402", "404", "429"} <= statuses, statuses
    for demo in DEMO_KEYS:
        assert demo.key not in exposition
    assert UNKNOWN_KEY not in exposition
    assert "sk-demo" not in exposition


@pytest.mark.slow
def test_importing_the_app_module_registers_nothing_until_app_is_used() -> None:
    """`examples.gateway.app:app` (what uvicorn and Docker Compose load) is a FastAPI app in
    the default registry, built on first access: the import alone registers nothing."""
    script = (
        "from prometheus_client import REGISTRY\n"
        "import examples.gateway.app as module\n"
        "assert REGISTRY.get_sample_value('active_api_keys', {'status': 'active'}) is None\n"
        "from fastapi import FastAPI\n"
        "assert isinstance(module.app, FastAPI) and module.app is module.app\n"
        "assert REGISTRY.get_sample_value('active_api_keys', {'status': 'active'}) == "
        f"{ACTIVE_KEYS}\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.stdout.strip() == "ok", result.stderr


# --- building blocks -------------------------------------------------------------------------


def test_settings_read_the_environment_and_name_bad_values() -> None:
    """`GATEWAYZ_DEMO_*` variables set the demo; a bad one raises naming the variable."""
    settings = Settings.from_env(
        {
            "GATEWAYZ_DEMO_TRAFFIC": "1",
            "GATEWAYZ_DEMO_SEED": "7",
            "GATEWAYZ_DEMO_LATENCY_SCALE": "0.5",
            "GATEWAYZ_DEMO_UPSTREAM_TIMEOUT": "2",
        }
    )
    assert (settings.traffic, settings.seed, settings.latency_scale) == (True, 7, 0.5)
    assert settings.upstream_timeout == 2.0
    assert Settings.from_env({}) == Settings()
    with pytest.raises(ValueError, match="GATEWAYZ_DEMO_TRAFFIC"):
        Settings.from_env({"GATEWAYZ_DEMO_TRAFFIC": "maybe"})
    with pytest.raises(ValueError, match="upstream_timeout"):
        Settings.from_env({"GATEWAYZ_DEMO_UPSTREAM_TIMEOUT": "0"})


def test_the_cache_evicts_least_recently_used_within_its_byte_budget() -> None:
    """The LRU keeps its size in bytes within the budget, evicting the oldest unused entry."""
    cache = ResponseCache(max_bytes=250)
    answer = Completion("x" * 50, Usage(1, 1))
    keys = [ResponseCache.key(MODEL, [("user", str(index))], None) for index in range(3)]
    cache.put(keys[0], answer)
    cache.put(keys[1], answer)
    assert cache.get(keys[0]) is answer  # keys[1] is now the least recently used
    cache.put(keys[2], answer)
    assert cache.get(keys[1]) is None
    assert cache.size_bytes == 2 * (64 + 50) <= cache.max_bytes


def test_a_token_bucket_admits_its_burst_then_refills_at_its_rate() -> None:
    """`burst` requests at once, then one more per 1/rate seconds."""
    bucket = TokenBucket(rate=2.0, burst=2, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
    assert bucket.retry_after() == 1
    assert bucket.take(0.5)
    assert not bucket.take(0.5)


def test_an_outage_window_repeats_with_its_period() -> None:
    """Down from `start` for `duration`, again every `every` seconds."""
    window = OutageWindow(start=10, duration=20, every=60)
    assert [window.covers(t) for t in (5, 10, 29, 30, 70, 89, 95)] == [
        False,
        True,
        True,
        False,
        True,
        True,
        False,
    ]
    with pytest.raises(ValueError, match="period"):
        OutageWindow(start=0, duration=10, every=5)
    with pytest.raises(ValueError, match="belong"):
        ProviderProfile("openai", (CATALOG["anthropic/claude-3-5-haiku"],))


# --- the load generator ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["http://example.com:8000", "http://10.0.0.1", "http://127.0.0.1.evil.test", "ftp://[::1]"],
)
async def test_the_load_generator_refuses_anything_but_loopback(url: str) -> None:
    """`run_load` refuses a URL whose host is not 127.0.0.1, localhost or ::1, before sending."""
    with pytest.raises(ValueError, match=r"refusing|http"):
        await load.run_load(url, duration=1)


@pytest.mark.parametrize("duration", [0, -1, load.MAX_DURATION + 1])
async def test_the_load_generator_is_bounded_in_time(duration: float) -> None:
    """Durations must be positive and at most MAX_DURATION."""
    with pytest.raises(ValueError, match="duration"):
        await load.run_load("http://127.0.0.1:9", duration=duration)


def test_the_load_cli_explains_a_refusal(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m examples.gateway.load --url http://example.com ...` exits 2 and says why."""
    with pytest.raises(SystemExit) as exit_info:
        load.main(["--url", "http://example.com", "--duration", "5"])
    assert exit_info.value.code == 2
    assert "refusing to send load to 'example.com'" in capsys.readouterr().err


@pytest.mark.slow
async def test_drive_sends_every_scenario_of_its_mix(registry: CollectorRegistry) -> None:
    """One run of `drive` covers every scenario of the deck and counts answers by status."""
    wanted = {"200", "400", "401", "402", "404", "429"}
    app = app_with(registry, FAST)
    async with client_for(app) as http:
        # A 429 needs a burst past the key's limit within its window: on a loaded machine
        # one second of driving may not get there, so drive again (bounded) until it does.
        for _ in range(8):
            summary = await load.drive(http, duration=1.0, concurrency=2, seed=3)
            if wanted <= set(summary["by_status"]):
                break
    app.state.gateway.close()
    assert set(summary["by_scenario"]) == {name for name, _ in load._DECK}
    assert summary["requests"] == sum(summary["by_status"].values())
    assert summary["transport_errors"] == 0
    assert wanted <= set(summary["by_status"])
