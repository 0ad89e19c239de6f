"""Cardinality is bounded by design: per-metric caps, exact sums under `__other__`, a
self-metric for folded observations, and long or malformed label values made safe."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gatewayz_metrics._cardinality import OVERFLOW_VALUE
from gatewayz_metrics._domain import DEFAULT_LABEL_CAPS, GatewayMetrics
from gatewayz_metrics._http import HTTPMetrics
from gatewayz_metrics._labels import MAX_LABEL_LENGTH


def series(registry: CollectorRegistry, family: str) -> list[dict[str, str]]:
    """The label sets of the samples named `family` in the exposition."""
    text = generate_latest(registry).decode()
    return [
        sample.labels
        for metric in text_string_to_metric_families(text)
        for sample in metric.samples
        if sample.name == family
    ]


def overflow(registry: CollectorRegistry, metric: str, label: str) -> float | None:
    """gatewayz_metrics_label_overflow_total for one metric and label."""
    return registry.get_sample_value(
        "gatewayz_metrics_label_overflow_total", {"metric": metric, "label": label}
    )


@pytest.mark.slow
def test_100k_distinct_user_ids_stay_under_the_cap_with_exact_sums(
    registry: CollectorRegistry,
) -> None:
    """100,000 user ids give at most cap + 1 series; the total and the fold count are exact."""
    metrics = GatewayMetrics(registry)
    cap = DEFAULT_LABEL_CAPS["user_id"]
    for i in range(100_000):
        metrics.record_credits_used("openrouter", "gpt-4", f"user{i}", 0.5)
    found = series(registry, "credits_used_total")
    assert len(found) == cap + 1
    assert sum(1 for labels in found if labels["user_id"] == OVERFLOW_VALUE) == 1
    text = generate_latest(registry).decode()
    (family,) = (f for f in text_string_to_metric_families(text) if f.name == "credits_used")
    assert sum(s.value for s in family.samples if s.name == "credits_used_total") == 50_000
    folded = {"provider": "openrouter", "model": "gpt-4", "user_id": OVERFLOW_VALUE}
    assert registry.get_sample_value("credits_used_total", folded) == (100_000 - cap) * 0.5
    assert overflow(registry, "credits_used_total", "user_id") == 100_000 - cap


def test_every_folded_observation_is_counted(registry: CollectorRegistry) -> None:
    """A value past the cap is folded (and counted) on each call, not only the first."""
    metrics = GatewayMetrics(registry, label_caps={"api_key_id": 1})
    metrics.record_api_key_usage("key_1", "success")
    for _ in range(3):
        metrics.record_api_key_usage("key_2", "success")
    folded = {"api_key_id": OVERFLOW_VALUE, "status": "success"}
    assert registry.get_sample_value("api_key_usage_total", folded) == 3
    assert overflow(registry, "api_key_usage_total", "api_key_id") == 3


def test_admitted_values_keep_their_own_series_after_the_cap(
    registry: CollectorRegistry,
) -> None:
    """Values admitted before the cap was reached are never folded later."""
    metrics = GatewayMetrics(registry, label_caps={"model": 2})
    for model in ("a", "b", "c", "a", "d", "b"):
        metrics.record_tokens_used("p", model, 1, 0)
    get = registry.get_sample_value
    assert get("tokens_used_total", {"provider": "p", "model": "a", "token_type": "input"}) == 2
    assert get("tokens_used_total", {"provider": "p", "model": "b", "token_type": "input"}) == 2
    other = {"provider": "p", "model": OVERFLOW_VALUE, "token_type": "input"}
    assert get("tokens_used_total", other) == 2


def test_families_recorded_together_fold_together(registry: CollectorRegistry) -> None:
    """Requests, duration and TTFT of one inference call fold the same model the same way."""
    metrics = GatewayMetrics(registry, label_caps={"model": 1})
    for model in ("kept", "folded"):
        with metrics.track_model_inference("p", model) as call:
            call.first_token()
    other = {"provider": "p", "model": OVERFLOW_VALUE}
    get = registry.get_sample_value
    assert get("model_inference_requests_total", {**other, "status": "success"}) == 1
    assert get("model_inference_duration_seconds_count", other) == 1
    assert get("model_time_to_first_token_seconds_count", other) == 1
    assert overflow(registry, "model_inference_requests_total", "model") == 1


def test_a_gauge_past_its_cap_is_dropped_not_overwritten(registry: CollectorRegistry) -> None:
    """A set gauge cannot be summed, so a folded set is dropped (and counted), never shown."""
    metrics = GatewayMetrics(registry, label_caps={"user_id": 1})
    metrics.set_user_credit_balance("alice", 10)
    metrics.set_user_credit_balance("bob", 99)
    assert registry.get_sample_value("user_credit_balance", {"user_id": "alice"}) == 10
    assert series(registry, "user_credit_balance") == [{"user_id": "alice"}]
    assert overflow(registry, "user_credit_balance", "user_id") == 1


def test_track_http_request_endpoint_shares_the_middleware_cap(
    registry: CollectorRegistry,
) -> None:
    """Endpoints recorded by track_http_request are capped by the HTTP metrics' endpoint cap."""
    HTTPMetrics.for_registry(registry, max_endpoints=2)
    metrics = GatewayMetrics(registry)
    for path in ("/a", "/b", "/c", "/d"):
        with metrics.track_http_request("GET", path):
            pass
    folded = {"method": "GET", "endpoint": OVERFLOW_VALUE, "status_code": "200"}
    assert registry.get_sample_value("http_requests_total", folded) == 2
    assert overflow(registry, "http_requests_total", "endpoint") == 2


def test_long_values_are_cut_but_stay_distinct(registry: CollectorRegistry) -> None:
    """Values over MAX_LABEL_LENGTH are truncated and suffixed with a fingerprint."""
    metrics = GatewayMetrics(registry)
    prefix = "x" * 300
    metrics.record_cache_hit(prefix + "one")
    metrics.record_cache_hit(prefix + "two")
    names = [labels["cache_name"] for labels in series(registry, "cache_hits_total")]
    assert len(names) == 2
    assert len(set(names)) == 2
    assert all(len(name) <= MAX_LABEL_LENGTH for name in names)
    assert all(name.startswith("x" * 100) for name in names)


def test_lone_surrogates_cannot_break_the_exposition(registry: CollectorRegistry) -> None:
    """A label value that is not valid UTF-8 is repaired instead of failing every scrape."""
    metrics = GatewayMetrics(registry)
    metrics.record_rate_limited("per-\ud800-minute")
    assert (
        registry.get_sample_value("rate_limited_requests_total", {"limit_type": "per-?-minute"})
        == 1
    )
    generate_latest(registry)  # would raise UnicodeEncodeError with the raw value


def test_many_admitted_values_stay_exact_beyond_the_child_cache(
    registry: CollectorRegistry,
) -> None:
    """More distinct admitted values than the internal cache holds are still counted exactly."""
    metrics = GatewayMetrics(registry, label_caps={"cache_name": 10_000})
    for _ in range(3):
        for i in range(5_000):
            metrics.record_cache_hit(f"cache{i}")
            metrics.record_cache_miss(f"cache{i % 50}")
    assert len(series(registry, "cache_hits_total")) == 5_000
    assert registry.get_sample_value("cache_hits_total", {"cache_name": "cache4999"}) == 3
    assert registry.get_sample_value("cache_misses_total", {"cache_name": "cache7"}) == 300
