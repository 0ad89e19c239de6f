"""Gateway-native families: fallbacks and attempts, the gateway's own rejections apart from
upstream 429s, provider cost and unpriced calls. Bad input raises (the strict behaviour) and
changes nothing; every label is bounded like the other domain labels."""

from __future__ import annotations

import math
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import gatewayz_metrics
from gatewayz_metrics import (
    FALLBACK_REASONS,
    OVERFLOW_VALUE,
    REJECTION_KINDS,
    REJECTION_SCOPES,
    GatewayMetrics,
    ModelPrice,
)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def samples(registry: CollectorRegistry, family: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for metric in registry.collect()
        if metric.name == family
        for sample in metric.samples
        if not sample.name.endswith("_created")
    ]


# --- fallbacks and attempts -----------------------------------------------------------------


def test_a_fallback_is_counted_by_from_model_to_model_and_reason(
    registry: CollectorRegistry,
) -> None:
    """`record_fallback` adds one to `model_fallbacks_total{from_model, to_model, reason}`."""
    metrics = GatewayMetrics(registry)
    metrics.record_fallback("openai/gpt-4o", "anthropic/claude-3-5-sonnet", "rate_limited")
    metrics.record_fallback("openai/gpt-4o", "anthropic/claude-3-5-sonnet", "rate_limited")
    metrics.record_fallback("openai/gpt-4o", "anthropic/claude-3-5-sonnet", "timeout")
    labels = {"from_model": "openai/gpt-4o", "to_model": "anthropic/claude-3-5-sonnet"}
    assert value(registry, "model_fallbacks_total", **labels, reason="rate_limited") == 2
    assert value(registry, "model_fallbacks_total", **labels, reason="timeout") == 1


@pytest.mark.parametrize("reason", FALLBACK_REASONS)
def test_every_documented_fallback_reason_is_accepted(
    reason: str, registry: CollectorRegistry
) -> None:
    """Each of `FALLBACK_REASONS` is a valid reason."""
    GatewayMetrics(registry).record_fallback("a", "b", reason)
    assert value(registry, "model_fallbacks_total", from_model="a", to_model="b", reason=reason)


@pytest.mark.parametrize(
    ("reason", "error"),
    [("overloaded", ValueError), ("", ValueError), ("Timeout", ValueError), (None, TypeError)],
    ids=["unknown", "empty", "case", "none"],
)
def test_a_reason_outside_the_closed_set_is_refused_and_changes_nothing(
    reason: Any, error: type[Exception], registry: CollectorRegistry
) -> None:
    """The reason is a closed set (like inference statuses): anything else raises, naming
    `reason`, and no series is created."""
    with pytest.raises(error, match="reason"):
        GatewayMetrics(registry).record_fallback("a", "b", reason)
    assert samples(registry, "model_fallbacks") == []


def test_fallback_models_are_capped_like_every_model_label(registry: CollectorRegistry) -> None:
    """`from_model` and `to_model` obey the `model` cap: past it values fold into
    `__other__`, the fold is counted, and the total stays exact."""
    metrics = GatewayMetrics(registry, label_caps={"model": 2})
    for index in range(5):
        metrics.record_fallback(f"m{index}", "backup", "error")
    total = sum(v for _, _, v in samples(registry, "model_fallbacks"))
    assert total == 5
    folded = {"from_model": OVERFLOW_VALUE, "to_model": "backup", "reason": "error"}
    assert value(registry, "model_fallbacks_total", **folded) == 3
    overflow = {"metric": "model_fallbacks_total", "label": "from_model"}
    assert value(registry, "gatewayz_metrics_label_overflow_total", **overflow) == 3


def test_every_attempt_is_an_inference_request_and_later_ones_are_retries(
    registry: CollectorRegistry,
) -> None:
    """`attempt=` keeps `model_inference_requests_total` counting every upstream attempt;
    attempts after the first also count in `model_inference_retries_total`."""
    metrics = GatewayMetrics(registry)
    labels = {"provider": "openai", "model": "gpt-4o"}
    with metrics.track_model_inference("openai", "gpt-4o"):
        pass
    assert value(registry, "model_inference_retries_total", **labels) is None
    with metrics.track_model_inference("openai", "gpt-4o", attempt=2):
        pass
    with pytest.raises(RuntimeError), metrics.track_model_inference("openai", "gpt-4o", attempt=3):
        raise RuntimeError("upstream 500")
    assert value(registry, "model_inference_requests_total", **labels, status="success") == 2
    assert value(registry, "model_inference_requests_total", **labels, status="error") == 1
    assert value(registry, "model_inference_retries_total", **labels) == 2


@pytest.mark.parametrize(
    ("attempt", "error"),
    [(0, ValueError), (-1, ValueError), (True, TypeError), ("2", TypeError), (1.0, TypeError)],
    ids=["zero", "negative", "bool", "str", "float"],
)
def test_a_bad_attempt_number_raises_before_anything_is_measured(
    attempt: Any, error: type[Exception], registry: CollectorRegistry
) -> None:
    """An attempt number must be an int >= 1; a bad one raises at the call, naming `attempt`."""
    metrics = GatewayMetrics(registry)
    with pytest.raises(error, match="attempt"):
        metrics.track_model_inference("openai", "gpt-4o", attempt=attempt)
    assert samples(registry, "model_inference_requests") == []
    assert samples(registry, "model_inference_retries") == []


def test_retries_fold_exactly_like_the_inference_requests(registry: CollectorRegistry) -> None:
    """A model folded in `model_inference_requests_total` is folded in the retries too."""
    metrics = GatewayMetrics(registry, label_caps={"model": 1})
    for model in ("kept", "folded"):
        with metrics.track_model_inference("openai", model, attempt=2):
            pass
    requests = {"provider": "openai", "model": OVERFLOW_VALUE, "status": "success"}
    assert value(registry, "model_inference_requests_total", **requests) == 1
    retries = {"provider": "openai", "model": OVERFLOW_VALUE}
    assert value(registry, "model_inference_retries_total", **retries) == 1


def test_attempts_per_request_are_a_histogram_with_one_bucket_per_count(
    registry: CollectorRegistry,
) -> None:
    """`record_request_attempts` observes integer attempt counts: `le="1"` is first-try."""
    metrics = GatewayMetrics(registry)
    for attempts in (1, 1, 2, 3, 12):
        metrics.record_request_attempts("openai/gpt-4o", attempts)
    bucket = "gateway_request_attempts_bucket"
    model = {"model": "openai/gpt-4o"}
    assert value(registry, bucket, **model, le="1.0") == 2
    assert value(registry, bucket, **model, le="2.0") == 3
    assert value(registry, bucket, **model, le="10.0") == 4
    assert value(registry, bucket, **model, le="+Inf") == 5
    assert value(registry, "gateway_request_attempts_sum", **model) == 19


@pytest.mark.parametrize(
    ("attempts", "error"),
    [(0, ValueError), (-2, ValueError), (1.5, TypeError), (None, TypeError)],
    ids=["zero", "negative", "float", "none"],
)
def test_a_bad_attempt_count_raises_and_changes_nothing(
    attempts: Any, error: type[Exception], registry: CollectorRegistry
) -> None:
    """A request has at least one attempt; anything else raises, naming `attempts`."""
    with pytest.raises(error, match="attempts"):
        GatewayMetrics(registry).record_request_attempts("m", attempts)
    assert samples(registry, "gateway_request_attempts") == []


# --- who refused the request ---------------------------------------------------------------


def test_the_gateways_rejections_are_apart_from_upstream_429s_and_limit_types(
    registry: CollectorRegistry,
) -> None:
    """Own rejections count by scope and kind, upstream 429s by provider and model, and
    `record_rate_limited(limit_type)` still feeds `rate_limited_requests_total` unchanged."""
    metrics = GatewayMetrics(registry)
    metrics.record_gateway_rejection("key", "rpm")
    metrics.record_gateway_rejection("user", "credits")
    metrics.record_gateway_rejection("key", "rpm")
    metrics.record_upstream_rate_limited("openrouter", "openrouter/mixtral")
    metrics.record_rate_limited("api_key")
    assert value(registry, "gateway_rejections_total", scope="key", kind="rpm") == 2
    assert value(registry, "gateway_rejections_total", scope="user", kind="credits") == 1
    upstream = {"provider": "openrouter", "model": "openrouter/mixtral"}
    assert value(registry, "provider_rate_limited_total", **upstream) == 1
    assert value(registry, "rate_limited_requests_total", limit_type="api_key") == 1
    assert sum(v for _, _, v in samples(registry, "gateway_rejections")) == 3


@pytest.mark.parametrize("scope", REJECTION_SCOPES)
@pytest.mark.parametrize("kind", REJECTION_KINDS)
def test_every_scope_and_kind_is_accepted(
    scope: str, kind: str, registry: CollectorRegistry
) -> None:
    """Every documented (scope, kind) pair is a valid rejection."""
    GatewayMetrics(registry).record_gateway_rejection(scope, kind)
    assert value(registry, "gateway_rejections_total", scope=scope, kind=kind) == 1


@pytest.mark.parametrize(
    ("scope", "kind", "argument"),
    [("team", "rpm", "scope"), ("key", "daily", "kind"), ("key", "", "kind")],
    ids=["scope", "kind", "empty-kind"],
)
def test_an_unknown_scope_or_kind_is_refused(
    scope: str, kind: str, argument: str, registry: CollectorRegistry
) -> None:
    """Scope and kind are closed sets: anything else raises naming the argument."""
    with pytest.raises(ValueError, match=argument):
        GatewayMetrics(registry).record_gateway_rejection(scope, kind)
    assert samples(registry, "gateway_rejections") == []


# --- cost ----------------------------------------------------------------------------------


def test_provider_cost_adds_up_by_currency_and_none_counts_an_unpriced_call(
    registry: CollectorRegistry,
) -> None:
    """`record_provider_cost` adds to `provider_cost_total` (USD by default); a cost of
    None is a call without a known price, counted in `inference_unpriced_total`."""
    metrics = GatewayMetrics(registry)
    metrics.record_provider_cost("openai", "gpt-4o", 0.25)
    metrics.record_provider_cost("openai", "gpt-4o", 0.5)
    metrics.record_provider_cost("openai", "gpt-4o", 1.0, currency="EUR")
    metrics.record_provider_cost("together", "qwen", None)
    labels = {"provider": "openai", "model": "gpt-4o"}
    assert value(registry, "provider_cost_total", **labels, currency="USD") == 0.75
    assert value(registry, "provider_cost_total", **labels, currency="EUR") == 1.0
    assert value(registry, "inference_unpriced_total", provider="together", model="qwen") == 1
    assert value(registry, "provider_cost_total", provider="together", model="qwen") is None


@pytest.mark.parametrize(
    ("cost", "currency", "error", "argument"),
    [
        (-0.1, "USD", ValueError, "cost"),
        (math.nan, "USD", ValueError, "cost"),
        (math.inf, "USD", ValueError, "cost"),
        ("0.1", "USD", TypeError, "cost"),
        (0.1, "usd", ValueError, "currency"),
        (0.1, "dollars", ValueError, "currency"),
        (0.1, "", ValueError, "currency"),
    ],
    ids=["negative", "nan", "inf", "str", "lowercase", "word", "empty"],
)
def test_a_bad_cost_or_currency_raises_and_changes_nothing(
    cost: Any, currency: str, error: type[Exception], argument: str, registry: CollectorRegistry
) -> None:
    """Costs are finite and >= 0; currencies are ISO 4217 codes; else a precise error."""
    with pytest.raises(error, match=argument):
        GatewayMetrics(registry).record_provider_cost("openai", "gpt-4o", cost, currency)
    assert samples(registry, "provider_cost") == []


def test_currencies_are_capped(registry: CollectorRegistry) -> None:
    """Past `MAX_CURRENCIES` distinct codes, currencies fold into `__other__`; the total stays
    exact."""
    metrics = GatewayMetrics(registry)
    codes = [f"X{chr(65 + i // 26)}{chr(65 + i % 26)}" for i in range(15)]
    for code in codes:
        metrics.record_provider_cost("openai", "gpt-4o", 1.0, code)
    found = {labels["currency"] for _, labels, _ in samples(registry, "provider_cost")}
    assert len(found) == gatewayz_metrics._gateway.MAX_CURRENCIES + 1
    assert OVERFLOW_VALUE in found
    assert sum(v for _, _, v in samples(registry, "provider_cost")) == 15


def test_a_pricing_table_prices_the_usage_of_every_call(registry: CollectorRegistry) -> None:
    """With `set_pricing`, `set_usage` (and `record_tokens_used`) adds the call's cost from
    per-million-token prices; a pair without a price counts as unpriced; None stops it."""
    metrics = GatewayMetrics(registry)
    metrics.set_pricing(
        {
            ("openai", "gpt-4o"): ModelPrice(2.5, 10.0),
            ("mistral", "large"): ModelPrice(2.0, 6.0, currency="EUR"),
        }
    )
    with metrics.track_model_inference("openai", "gpt-4o") as call:
        call.set_usage(input_tokens=400_000, output_tokens=100_000)
    metrics.record_tokens_used("mistral", "large", 1_000_000, 0)
    metrics.record_tokens_used("together", "qwen", 10, 10)
    usd = {"provider": "openai", "model": "gpt-4o", "currency": "USD"}
    assert value(registry, "provider_cost_total", **usd) == pytest.approx(2.0)
    eur = {"provider": "mistral", "model": "large", "currency": "EUR"}
    assert value(registry, "provider_cost_total", **eur) == pytest.approx(2.0)
    assert value(registry, "inference_unpriced_total", provider="together", model="qwen") == 1
    metrics.set_pricing(None)
    metrics.record_tokens_used("together", "qwen", 10, 10)
    assert value(registry, "inference_unpriced_total", provider="together", model="qwen") == 1


def test_the_pricing_table_is_shared_and_copied(registry: CollectorRegistry) -> None:
    """Instances on one registry share the table; changing the caller's dict afterwards
    changes nothing."""
    prices = {("openai", "gpt-4o"): ModelPrice(1.0, 1.0)}
    GatewayMetrics(registry).set_pricing(prices)
    prices[("openai", "gpt-4o")] = ModelPrice(1000.0, 1000.0)
    GatewayMetrics(registry).record_tokens_used("openai", "gpt-4o", 1_000_000, 0)
    usd = {"provider": "openai", "model": "gpt-4o", "currency": "USD"}
    assert value(registry, "provider_cost_total", **usd) == 1.0


@pytest.mark.parametrize(
    ("prices", "error"),
    [
        ([("openai", "gpt-4o")], TypeError),
        ({"openai/gpt-4o": ModelPrice(1.0, 1.0)}, TypeError),
        ({("openai", "gpt-4o"): (1.0, 1.0)}, TypeError),
    ],
    ids=["not-a-mapping", "key-not-a-pair", "value-not-a-price"],
)
def test_a_bad_pricing_table_is_refused(
    prices: Any, error: type[Exception], registry: CollectorRegistry
) -> None:
    """A pricing table is `{(provider, model): ModelPrice}`; anything else raises."""
    with pytest.raises(error):
        GatewayMetrics(registry).set_pricing(prices)


@pytest.mark.parametrize(
    ("args", "error"),
    [((-1.0, 1.0), ValueError), ((1.0, math.nan), ValueError), ((1.0, 1.0, "usd"), ValueError)],
    ids=["negative", "nan", "currency"],
)
def test_a_bad_model_price_is_refused(args: tuple[Any, ...], error: type[Exception]) -> None:
    """Prices are finite and >= 0, with an ISO 4217 currency."""
    with pytest.raises(error):
        ModelPrice(*args)


def test_cost_and_unpriced_calls_of_a_model_fold_together(registry: CollectorRegistry) -> None:
    """Past the model cap, cost and unpriced calls fold into the same `__other__` model."""
    metrics = GatewayMetrics(registry, label_caps={"model": 1})
    metrics.record_provider_cost("openai", "kept", 1.0)
    metrics.record_provider_cost("openai", "folded", 1.0)
    metrics.record_provider_cost("openai", "folded-too", None)
    other = {"provider": "openai", "model": OVERFLOW_VALUE}
    assert value(registry, "provider_cost_total", **other, currency="USD") == 1.0
    assert value(registry, "inference_unpriced_total", **other) == 1


# --- the module-level helpers ----------------------------------------------------------------


def test_the_module_level_helpers_act_on_the_default_instance(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each new module-level helper forwards to the default `GatewayMetrics`."""
    from gatewayz_metrics import _domain

    monkeypatch.setattr(_domain, "_default", GatewayMetrics(registry))
    gatewayz_metrics.record_fallback("a", "b", "error")
    gatewayz_metrics.record_request_attempts("a", 2)
    gatewayz_metrics.record_gateway_rejection("org", "tpm")
    gatewayz_metrics.record_upstream_rate_limited("p", "m")
    gatewayz_metrics.record_provider_cost("p", "m", 0.5, "EUR")
    gatewayz_metrics.set_pricing({("p", "m"): ModelPrice(1.0, 0.0)})
    gatewayz_metrics.record_tokens_used("p", "m", 1_000_000, 5)
    with gatewayz_metrics.track_model_inference("p", "m", attempt=2):
        pass
    assert value(registry, "model_fallbacks_total", from_model="a", to_model="b", reason="error")
    assert value(registry, "gateway_request_attempts_count", model="a") == 1
    assert value(registry, "gateway_rejections_total", scope="org", kind="tpm") == 1
    assert value(registry, "provider_rate_limited_total", provider="p", model="m") == 1
    assert value(registry, "provider_cost_total", provider="p", model="m", currency="EUR") == 0.5
    assert value(registry, "provider_cost_total", provider="p", model="m", currency="USD") == 1.0
    assert value(registry, "model_inference_retries_total", provider="p", model="m") == 1


def test_a_registry_that_already_has_a_gateway_family_name_is_refused_cleanly() -> None:
    """A clash on a new family's name raises like the other domain families and leaves the
    registry as it was, so fixing the clash and retrying works."""
    from prometheus_client import Counter

    registry = CollectorRegistry()
    clash = Counter("provider_cost", "someone else's", registry=registry)
    with pytest.raises(ValueError, match="cannot register its domain metrics"):
        GatewayMetrics(registry)
    registry.unregister(clash)
    GatewayMetrics(registry).record_provider_cost("p", "m", 1.0)
    assert value(registry, "provider_cost_total", provider="p", model="m", currency="USD") == 1.0
