"""The demo gateway's gateway-native metrics, in process with a fresh registry: fallback
chains and attempts, who refused a request (the gateway's own limits apart from a provider's
429), and what calls cost the gateway (priced, or counted as unpriced)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import httpx
import pytest
from _asgi import client_for
from prometheus_client import CollectorRegistry
from test_gateway import (
    ALICE,
    CATALOG,
    FAST,
    KEYS,
    RELIABLE,
    bearer,
    chat,
    post,
    sse_events,
    value,
)

from examples.gateway import load
from examples.gateway.app import Gateway, Settings, create_app
from examples.gateway.providers import DEFAULT_PROVIDERS, ProviderProfile

GPT_4O = "openai/gpt-4o"
SONNET = "anthropic/claude-3-5-sonnet"
MIXTRAL = "openrouter/mistralai/mixtral-8x22b-instruct"
JUDY = KEYS["judy"]


def settings_where(provider: str, **changes: Any) -> Settings:
    """FAST settings where only `provider` has `changes` applied."""
    profiles: list[ProviderProfile] = [
        dataclasses.replace(profile, **changes) if profile.name == provider else profile
        for profile in RELIABLE
    ]
    return dataclasses.replace(FAST, providers=tuple(profiles))


async def run(registry: CollectorRegistry, settings: Settings, body: dict[str, Any]) -> Any:
    app = create_app(registry=registry, settings=settings)
    async with client_for(app) as http:
        response = await post(http, body)
    app.state.gateway.close()
    return response


def served_model(response: httpx.Response) -> str:
    if response.headers["content-type"].startswith("text/event-stream"):
        model: str = json.loads(sse_events(response.text)[0])["model"]
        return model
    answered: str = response.json()["model"]
    return answered


# --- fallbacks and attempts -------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"error_rate": 1.0}, "error"),
        ({"timeout_rate": 1.0}, "timeout"),
        ({"rate_limit_rate": 1.0}, "rate_limited"),
    ],
    ids=["error", "timeout", "rate_limited"],
)
async def test_a_failed_first_attempt_falls_back_to_the_next_model(
    stream: bool, changes: dict[str, float], reason: str, registry: CollectorRegistry
) -> None:
    """When gpt-4o fails before its first token, the request is served by its fallback:
    one fallback with its reason, two upstream attempts (the second a retry), one request
    of two attempts, billed and priced on the model that answered."""
    # One token per answer: a failing stream fails before its first token, where it can move.
    failing = settings_where("openai", output_tokens=(1, 1), **changes)
    settings = dataclasses.replace(failing, upstream_timeout=0.05)
    response = await run(registry, settings, chat(GPT_4O, stream=stream))
    assert response.status_code == 200
    assert served_model(response) == SONNET
    fallback = {"from_model": GPT_4O, "to_model": SONNET, "reason": reason}
    assert value(registry, "model_fallbacks_total", **fallback) == 1
    failed = "timeout" if reason == "timeout" else "error"
    openai = {"provider": "openai", "model": GPT_4O}
    anthropic = {"provider": "anthropic", "model": SONNET}
    assert value(registry, "model_inference_requests_total", **openai, status=failed) == 1
    assert value(registry, "model_inference_requests_total", **anthropic, status="success") == 1
    assert value(registry, "model_inference_retries_total", **anthropic) == 1
    assert value(registry, "model_inference_retries_total", **openai) == 0
    assert value(registry, "gateway_request_attempts_count", model=GPT_4O) == 1
    assert value(registry, "gateway_request_attempts_sum", model=GPT_4O) == 2
    assert value(registry, "gateway_request_attempts_bucket", model=GPT_4O, le="1.0") == 0
    limited = value(registry, "provider_rate_limited_total", **openai)
    assert limited == (1 if reason == "rate_limited" else 0)
    assert value(registry, "provider_cost_total", **anthropic, currency="USD") > 0
    assert value(registry, "provider_cost_total", **openai, currency="USD") == 0
    # A provider's 429 is not the gateway refusing anything.
    assert value(registry, "gateway_rejections_total", scope="key", kind="rpm") == 0
    assert value(registry, "rate_limited_requests_total", limit_type="api_key") == 0


async def test_a_first_try_success_is_one_attempt_without_fallback(
    registry: CollectorRegistry,
) -> None:
    """A request answered at once is one attempt (`le="1"`), no retry, no fallback."""
    response = await run(registry, FAST, chat(GPT_4O))
    assert response.status_code == 200
    assert value(registry, "gateway_request_attempts_bucket", model=GPT_4O, le="1.0") == 1
    assert value(registry, "model_inference_retries_total", provider="openai", model=GPT_4O) == 0
    assert not any(
        metric.samples for metric in registry.collect() if metric.name == "model_fallbacks"
    )


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_provider_429_with_no_fallback_left_is_passed_on_as_429(
    stream: bool, registry: CollectorRegistry
) -> None:
    """When every model of the chain is rate limited upstream, the client gets 429
    `upstream_rate_limited`: counted per provider, never as the gateway's own rejection."""
    settings = dataclasses.replace(
        FAST,
        providers=tuple(dataclasses.replace(p, rate_limit_rate=1.0) for p in RELIABLE),
    )
    response = await run(registry, settings, chat(GPT_4O, stream=stream))
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "upstream_rate_limited"
    assert value(registry, "provider_rate_limited_total", provider="openai", model=GPT_4O) == 1
    assert value(registry, "provider_rate_limited_total", provider="anthropic", model=SONNET) == 1
    fallback = {"from_model": GPT_4O, "to_model": SONNET, "reason": "rate_limited"}
    assert value(registry, "model_fallbacks_total", **fallback) == 1
    assert value(registry, "gateway_request_attempts_sum", model=GPT_4O) == 2
    assert not any(
        metric.samples for metric in registry.collect() if metric.name == "gateway_rejections"
    )


async def test_a_chain_of_three_counts_each_fallback_and_three_attempts(
    registry: CollectorRegistry,
) -> None:
    """qwen -> mixtral -> gpt-4o: two fallbacks with their reasons, three attempts."""
    settings = dataclasses.replace(
        FAST,
        providers=tuple(
            dataclasses.replace(p, error_rate=1.0)
            if p.name == "together"
            else dataclasses.replace(p, rate_limit_rate=1.0)
            if p.name == "openrouter"
            else p
            for p in RELIABLE
        ),
    )
    qwen = "together/qwen/qwen-2.5-72b-instruct"
    response = await run(registry, settings, chat(qwen))
    assert response.status_code == 200
    assert served_model(response) == GPT_4O
    first = {"from_model": qwen, "to_model": MIXTRAL, "reason": "error"}
    second = {"from_model": MIXTRAL, "to_model": GPT_4O, "reason": "rate_limited"}
    assert value(registry, "model_fallbacks_total", **first) == 1
    assert value(registry, "model_fallbacks_total", **second) == 1
    assert value(registry, "gateway_request_attempts_sum", model=qwen) == 3
    assert value(registry, "gateway_request_attempts_bucket", model=qwen, le="2.0") == 0
    assert value(registry, "gateway_request_attempts_bucket", model=qwen, le="3.0") == 1


# --- who refused -------------------------------------------------------------------------------


async def test_the_gateways_own_refusals_say_scope_and_kind(registry: CollectorRegistry) -> None:
    """A key over its requests per second is (key, rpm), a user without credits is
    (user, credits): next to the unchanged `rate_limited_requests_total{limit_type}`."""
    app = create_app(registry=registry, settings=FAST)
    async with client_for(app) as http:
        frank = KEYS["frank"]
        assert (await post(http, chat(), key=frank)).status_code == 200
        assert (await post(http, chat(), key=frank)).status_code == 429
        assert (await post(http, chat(), key=KEYS["erin"])).status_code == 402
    app.state.gateway.close()
    assert value(registry, "gateway_rejections_total", scope="key", kind="rpm") == 1
    assert value(registry, "gateway_rejections_total", scope="user", kind="credits") == 1
    assert value(registry, "rate_limited_requests_total", limit_type="api_key") == 1


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_a_key_allowed_one_request_at_a_time_gets_429_for_a_second(
    stream: bool, registry: CollectorRegistry
) -> None:
    """Two requests at once with a key capped at one: one is served, the other refused as
    (key, concurrency); once the first has ended (its stream too), the key may ask again."""
    app = create_app(registry=registry, settings=FAST)
    gateway: Gateway = app.state.gateway
    async with client_for(app) as http:
        first, second = await asyncio.gather(
            post(http, chat(content="one", stream=stream), key=JUDY),
            post(http, chat(content="two", stream=stream), key=JUDY),
        )
        assert sorted([first.status_code, second.status_code]) == [200, 429]
        refused = first if first.status_code == 429 else second
        assert refused.json()["error"]["code"] == "concurrency_limit_exceeded"
        assert gateway.in_flight_by_key[JUDY] == 0
        assert (await post(http, chat(content="three", stream=stream), key=JUDY)).status_code == 200
    gateway.close()
    assert value(registry, "gateway_rejections_total", scope="key", kind="concurrency") == 1
    assert value(registry, "rate_limited_requests_total", limit_type="concurrency") == 1


async def test_a_refused_or_failed_request_releases_its_concurrency_slot(
    registry: CollectorRegistry,
) -> None:
    """A request that ends in an upstream failure (502) gives its slot back."""
    settings = dataclasses.replace(
        FAST, providers=tuple(dataclasses.replace(p, error_rate=1.0) for p in RELIABLE)
    )
    app = create_app(registry=registry, settings=settings)
    gateway: Gateway = app.state.gateway
    async with client_for(app) as http:
        for stream in (False, True):
            response = await http.post(
                "/v1/chat/completions",
                json=chat(stream=stream, max_tokens=1),
                headers=bearer(JUDY),
            )
            assert response.status_code == 502
    gateway.close()
    assert gateway.in_flight_by_key[JUDY] == 0


# --- cost --------------------------------------------------------------------------------------


async def test_a_priced_call_adds_its_cost_and_an_unpriced_one_is_counted(
    registry: CollectorRegistry,
) -> None:
    """The demo prices usage from `ModelInfo.cost` (USD per million tokens); mixtral has no
    cost, so its calls count in `inference_unpriced_total` and add no cost."""
    app = create_app(registry=registry, settings=FAST)
    async with client_for(app) as http:
        priced = (await post(http, chat(GPT_4O, content="priced"))).json()["usage"]
        assert (await post(http, chat(MIXTRAL, content="unpriced"))).status_code == 200
    app.state.gateway.close()
    cost_in, cost_out = CATALOG[GPT_4O].cost or (0.0, 0.0)
    expected = (priced["prompt_tokens"] * cost_in + priced["completion_tokens"] * cost_out) / 1e6
    openai = {"provider": "openai", "model": GPT_4O, "currency": "USD"}
    assert value(registry, "provider_cost_total", **openai) == pytest.approx(expected)
    assert value(registry, "inference_unpriced_total", provider="openai", model=GPT_4O) == 0
    mixtral = {"provider": "openrouter", "model": MIXTRAL}
    assert value(registry, "inference_unpriced_total", **mixtral) == 1
    assert value(registry, "provider_cost_total", **mixtral, currency="USD") == 0


def test_the_demo_has_a_model_without_a_price_and_a_provider_that_429s() -> None:
    """The default providers exercise the unpriced and upstream-429 paths under load."""
    assert CATALOG[MIXTRAL].cost is None
    assert sum(1 for model in CATALOG.values() if model.cost is None) == 1
    assert any(profile.rate_limit_rate > 0 for profile in DEFAULT_PROVIDERS)


def test_the_load_sends_concurrent_pairs_with_the_one_at_a_time_key() -> None:
    """The traffic mix contains the scenario that hits the gateway's concurrency limit."""
    assert ("concurrent_pair", 1) in load._DECK
    assert ALICE != JUDY
