"""A dropped inference call (an invalid argument, lenient mode) records nothing at all."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from test_recording_modes import invalid_counts, without_self_metrics

from gatewayz_metrics import GatewayMetrics, ModelPrice


@pytest.fixture
def lenient(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of an application in production: no strict switch."""
    monkeypatch.delenv("GATEWAYZ_METRICS_STRICT", raising=False)


@pytest.mark.parametrize(
    ("provider", "attempt", "argument"),
    [("openai", 0, "attempt"), ("openai", "2", "attempt"), ("", 1, "provider")],
    ids=["attempt-zero", "attempt-str", "provider-empty"],
)
def test_a_dropped_inference_call_records_no_usage_or_cost(
    lenient: None, provider: str, attempt: int, argument: str
) -> None:
    """Invalid `attempt=` or provider: no request, tokens or cost; the drop counted once."""
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, strict=False)
    metrics.set_pricing({(provider, "gpt-4o"): ModelPrice(2.5, 10.0)})
    before = without_self_metrics(generate_latest(registry))
    with metrics.track_model_inference(provider, "gpt-4o", attempt=attempt) as call:
        call.first_token()
        call.set_usage(input_tokens=1000, output_tokens=500)
    assert without_self_metrics(generate_latest(registry)) == before
    assert invalid_counts(registry) == {("model_inference_requests_total", argument): 1.0}


def test_a_valid_call_still_records_its_usage_and_cost(lenient: None) -> None:
    """The control: the same call with `attempt=2` records tokens and the priced cost."""
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, strict=False)
    metrics.set_pricing({("openai", "gpt-4o"): ModelPrice(2.5, 10.0)})
    with metrics.track_model_inference("openai", "gpt-4o", attempt=2) as call:
        call.set_usage(input_tokens=1000, output_tokens=500)
    labels = {"provider": "openai", "model": "gpt-4o"}
    tokens = registry.get_sample_value("tokens_used_total", {**labels, "token_type": "input"})
    cost = registry.get_sample_value("provider_cost_total", {**labels, "currency": "USD"})
    assert tokens == 1000.0
    assert cost == pytest.approx((1000 * 2.5 + 500 * 10.0) / 1_000_000)
    assert invalid_counts(registry) == {}
