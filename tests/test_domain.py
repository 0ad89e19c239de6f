"""Domain metrics: every family of the source document, its exact names and labels, lint
cleanliness, registry sharing with the HTTP metrics, configuration, the default instance."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from _binaries import require_binary
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gatewayz_metrics._domain import (
    DEFAULT_INFERENCE_DURATION_BUCKETS,
    DEFAULT_LABEL_CAPS,
    DEFAULT_TIME_TO_FIRST_TOKEN_BUCKETS,
    GatewayMetrics,
)
from gatewayz_metrics._http import HTTPMetrics

# family -> (type, label names), exactly as the table has them.
EXPECTED_FAMILIES: dict[str, tuple[str, frozenset[str]]] = {
    "http_requests": ("counter", frozenset({"method", "endpoint", "status_code"})),
    "http_request_duration_seconds": ("histogram", frozenset({"method", "endpoint"})),
    "model_inference_requests": ("counter", frozenset({"provider", "model", "status"})),
    "model_inference_duration_seconds": ("histogram", frozenset({"provider", "model"})),
    "model_time_to_first_token_seconds": ("histogram", frozenset({"provider", "model"})),
    "model_time_per_output_token_seconds": ("histogram", frozenset({"provider", "model"})),
    "tokens_used": ("counter", frozenset({"provider", "model", "token_type"})),
    "credits_used": ("counter", frozenset({"provider", "model", "user_id"})),
    "database_queries": ("counter", frozenset({"table", "operation"})),
    "database_query_duration_seconds": ("histogram", frozenset({"table", "operation"})),
    "cache_hits": ("counter", frozenset({"cache_name"})),
    "cache_misses": ("counter", frozenset({"cache_name"})),
    "cache_size_bytes": ("gauge", frozenset({"cache_name"})),
    "rate_limited_requests": ("counter", frozenset({"limit_type"})),
    "current_rate_limit": ("gauge", frozenset({"limit_type"})),
    "provider_availability": ("gauge", frozenset({"provider"})),
    "provider_error_rate": ("gauge", frozenset({"provider"})),
    "provider_response_time_seconds": ("gauge", frozenset({"provider"})),
    "api_key_usage": ("counter", frozenset({"api_key_id", "status"})),
    "active_api_keys": ("gauge", frozenset({"status"})),
    "user_credit_balance": ("gauge", frozenset({"user_id"})),
    "trial_active": ("gauge", frozenset({"status"})),
    "subscription_count": ("gauge", frozenset({"plan"})),
    "active_connections": ("gauge", frozenset({"connection_type"})),
    "queue_size": ("gauge", frozenset({"queue"})),
}


def call_every_helper(metrics: GatewayMetrics) -> None:
    """Call each helper once, the way the source document's gateway would."""
    with metrics.track_http_request("POST", "/v1/chat/completions"):
        pass
    with metrics.track_model_inference("openrouter", "openrouter/gpt-4") as call:
        call.first_token()
        call.set_usage(input_tokens=100, output_tokens=50)
    metrics.record_tokens_used("openrouter", "openrouter/gpt-4", 10, 5)
    metrics.record_credits_used("openrouter", "openrouter/gpt-4", "user123", 1.5)
    with metrics.track_database_query("users", "select"):
        pass
    metrics.record_cache_hit("responses")
    metrics.record_cache_miss("responses")
    metrics.set_cache_size("responses", 2048)
    metrics.record_rate_limited("requests_per_minute")
    metrics.set_rate_limit_remaining("requests_per_minute", 42)
    metrics.set_provider_health("openrouter", available=True, error_rate=0.02, response_time=0.8)
    metrics.record_api_key_usage("key_42", "success")
    metrics.set_active_api_keys(active=10, inactive=3)
    metrics.set_user_credit_balance("user123", 12.5)
    metrics.set_trial_active("active", 4)
    metrics.set_subscription_count("pro", 7)
    metrics.set_active_connections("db", 5)
    metrics.set_queue_size("inference", 2)


def exposition(registry: CollectorRegistry) -> str:
    """The registry in the Prometheus text format."""
    return generate_latest(registry).decode()


def test_every_family_has_its_exact_name_type_and_labels(registry: CollectorRegistry) -> None:
    """After each helper is called, every family of the table is exposed as specified."""
    call_every_helper(GatewayMetrics(registry))
    found = {
        family.name: (family.type, frozenset(k for s in family.samples for k in s.labels) - {"le"})
        for family in text_string_to_metric_families(exposition(registry))
    }
    for name, expected in EXPECTED_FAMILIES.items():
        assert found.get(name) == expected, name


def test_no_family_appears_twice_in_the_exposition(registry: CollectorRegistry) -> None:
    """Custom gauge collectors and plain metrics never produce duplicate HELP/TYPE lines."""
    call_every_helper(GatewayMetrics(registry))
    type_lines = [line for line in exposition(registry).splitlines() if line.startswith("# TYPE")]
    assert len(type_lines) == len(set(type_lines))


@pytest.mark.prometheus
def test_promtool_lints_clean_but_for_subscription_count(registry: CollectorRegistry) -> None:
    """`promtool check metrics` only reports the documented `_count` suffix of that gauge."""
    promtool = require_binary("promtool")
    call_every_helper(GatewayMetrics(registry))
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition(registry),
        capture_output=True,
        text=True,
        check=False,
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert problems == [
        'subscription_count non-histogram and non-summary metrics should not have "_count" suffix'
    ]


def test_samples_after_every_helper(registry: CollectorRegistry) -> None:
    """Each helper records the value it was given under the labels it was given."""
    call_every_helper(GatewayMetrics(registry))
    get = registry.get_sample_value
    model = {"provider": "openrouter", "model": "openrouter/gpt-4"}
    request = {"method": "POST", "endpoint": "/v1/chat/completions", "status_code": "200"}
    query = {"table": "users", "operation": "select"}
    assert get("http_requests_total", request) == 1
    assert get("model_inference_requests_total", {**model, "status": "success"}) == 1
    assert get("model_inference_duration_seconds_count", model) == 1
    assert get("model_time_to_first_token_seconds_count", model) == 1
    assert get("model_time_per_output_token_seconds_count", model) == 1
    assert get("tokens_used_total", {**model, "token_type": "input"}) == 110
    assert get("tokens_used_total", {**model, "token_type": "output"}) == 55
    assert get("credits_used_total", {**model, "user_id": "user123"}) == 1.5
    assert get("database_queries_total", query) == 1
    assert get("database_query_duration_seconds_count", query) == 1
    assert get("cache_hits_total", {"cache_name": "responses"}) == 1
    assert get("cache_misses_total", {"cache_name": "responses"}) == 1
    assert get("cache_size_bytes", {"cache_name": "responses"}) == 2048
    assert get("rate_limited_requests_total", {"limit_type": "requests_per_minute"}) == 1
    assert get("current_rate_limit", {"limit_type": "requests_per_minute"}) == 42
    assert get("provider_availability", {"provider": "openrouter"}) == 1
    assert get("provider_error_rate", {"provider": "openrouter"}) == 0.02
    assert get("provider_response_time_seconds", {"provider": "openrouter"}) == 0.8
    assert get("api_key_usage_total", {"api_key_id": "key_42", "status": "success"}) == 1
    assert get("active_api_keys", {"status": "active"}) == 10
    assert get("active_api_keys", {"status": "inactive"}) == 3
    assert get("user_credit_balance", {"user_id": "user123"}) == 12.5
    assert get("trial_active", {"status": "active"}) == 4
    assert get("subscription_count", {"plan": "pro"}) == 7
    assert get("active_connections", {"connection_type": "db"}) == 5
    assert get("queue_size", {"queue": "inference"}) == 2


def test_default_buckets_reach_minutes() -> None:
    """Inference duration reaches 10 minutes and time to first token 5 minutes."""
    assert DEFAULT_INFERENCE_DURATION_BUCKETS[-1] >= 600
    assert DEFAULT_TIME_TO_FIRST_TOKEN_BUCKETS[-1] >= 300


def test_buckets_can_be_overridden_per_family(registry: CollectorRegistry) -> None:
    """A family built with custom buckets exposes exactly those `le` bounds."""
    metrics = GatewayMetrics(registry, time_to_first_token_buckets=[1, 10, 100])
    with metrics.track_model_inference("p", "m") as call:
        call.first_token()
    labels = {"provider": "p", "model": "m"}
    for le in ("1.0", "10.0", "100.0", "+Inf"):
        assert (
            registry.get_sample_value(
                "model_time_to_first_token_seconds_bucket", {**labels, "le": le}
            )
            == 1
        )
    assert (
        registry.get_sample_value(
            "model_time_to_first_token_seconds_bucket", {**labels, "le": "0.5"}
        )
        is None
    )


@pytest.mark.parametrize("domain_first", [True, False], ids=["domain-first", "http-first"])
def test_http_and_domain_metrics_share_one_registry_in_any_order(
    registry: CollectorRegistry, domain_first: bool
) -> None:
    """Creating the middleware's HTTP metrics and the domain metrics in either order works."""
    if domain_first:
        metrics = GatewayMetrics(registry)
        http = HTTPMetrics.for_registry(registry)
    else:
        http = HTTPMetrics.for_registry(registry)
        metrics = GatewayMetrics(registry)
    with metrics.track_http_request("GET", "/v1/models"):
        pass
    http.requests_total.labels("GET", "/v1/models", "200").inc()
    labels = {"method": "GET", "endpoint": "/v1/models", "status_code": "200"}
    assert registry.get_sample_value("http_requests_total", labels) == 2


def test_two_instances_on_one_registry_share_the_families(registry: CollectorRegistry) -> None:
    """A second `GatewayMetrics` on the same registry raises nothing and adds to the same series."""
    GatewayMetrics(registry).record_cache_hit("c")
    GatewayMetrics(registry).record_cache_hit("c")
    assert registry.get_sample_value("cache_hits_total", {"cache_name": "c"}) == 2


@pytest.mark.parametrize(
    ("first", "second", "named"),
    [
        ({}, {"inference_duration_buckets": [1, 2]}, "inference_duration_buckets"),
        ({"label_caps": {"user_id": 10}}, {"label_caps": {"user_id": 20}}, "label_caps['user_id']"),
        ({}, {"secret_detector": lambda value: False}, "secret_detector"),
    ],
    ids=["buckets", "label-cap", "secret-detector"],
)
def test_conflicting_second_configuration_raises_naming_the_difference(
    registry: CollectorRegistry, first: dict[str, object], second: dict[str, object], named: str
) -> None:
    """One registry holds one definition: a different second one is a ValueError naming it."""
    GatewayMetrics(registry, **first)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("]", r"\]")):
        GatewayMetrics(registry, **second)  # type: ignore[arg-type]


def test_same_explicit_configuration_twice_is_accepted(registry: CollectorRegistry) -> None:
    """Asking again for the configuration the registry already has is not a conflict."""
    GatewayMetrics(registry, label_caps={"model": 20}, inference_duration_buckets=[1, 5])
    again = GatewayMetrics(registry, label_caps={"model": 20}, inference_duration_buckets=[1, 5])
    assert again.label_caps["model"] == 20


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"label_caps": {"colour": 3}}, ValueError),
        ({"label_caps": {"user_id": 0}}, ValueError),
        ({"label_caps": [("user_id", 3)]}, TypeError),
        ({"time_per_output_token_buckets": [3, 2, 1]}, ValueError),
        ({"secret_detector": "sk-"}, TypeError),
        ({"registry": "default"}, TypeError),
    ],
    ids=[
        "unknown-label",
        "zero-cap",
        "caps-not-mapping",
        "unsorted-buckets",
        "detector",
        "registry",
    ],
)
def test_bad_configuration_fails_loudly(kwargs: dict[str, object], error: type[Exception]) -> None:
    """Invalid configuration is a ValueError/TypeError at construction."""
    with pytest.raises(error):
        GatewayMetrics(**kwargs)  # type: ignore[arg-type]


def test_default_label_caps_are_the_documented_ones() -> None:
    """The caps the docs promise: 1000 users and keys, 200 models, 50 providers, 100 others."""
    assert DEFAULT_LABEL_CAPS["user_id"] == 1000
    assert DEFAULT_LABEL_CAPS["api_key_id"] == 1000
    assert DEFAULT_LABEL_CAPS["model"] == 200
    assert DEFAULT_LABEL_CAPS["provider"] == 50
    others = set(DEFAULT_LABEL_CAPS) - {"user_id", "api_key_id", "model", "provider"}
    assert {DEFAULT_LABEL_CAPS[name] for name in others} == {100}


def test_a_name_clash_leaves_the_registry_untouched(registry: CollectorRegistry) -> None:
    """If another metric owns one of our names, construction fails, registers none of our
    families, and succeeds once the clash is gone."""
    theirs = Counter("cache_misses", "someone else's", registry=registry)
    with pytest.raises(ValueError, match="cache_misses"):
        GatewayMetrics(registry)
    assert "# TYPE tokens_used_total" not in exposition(registry)
    registry.unregister(theirs)
    GatewayMetrics(registry).record_cache_miss("c")
    assert registry.get_sample_value("cache_misses_total", {"cache_name": "c"}) == 1


def test_source_document_import_works_verbatim_and_lazily() -> None:
    """The source document's import works; nothing is registered until a helper is used."""
    script = textwrap.dedent(
        """
        import asyncio
        from prometheus_client import REGISTRY
        from gatewayz_metrics import (
            track_model_inference,
            record_tokens_used,
            record_credits_used,
            track_http_request,
        )

        assert REGISTRY.get_sample_value("tokens_used_total", {}) is None
        assert not any(family.name == "tokens_used" for family in REGISTRY.collect())

        async def create_completion():
            await asyncio.sleep(0)

        async def main():
            with track_model_inference("openrouter", "gpt-4"):
                await create_completion()

        asyncio.run(main())
        record_tokens_used(provider="openrouter", model="gpt-4", input_tokens=100, output_tokens=50)
        record_credits_used(provider="openrouter", model="gpt-4", user_id="user123", credits=1.5)
        with track_http_request("POST", "/v1/chat/completions"):
            pass
        get = REGISTRY.get_sample_value
        model = {"provider": "openrouter", "model": "gpt-4"}
        assert get("model_inference_requests_total", {**model, "status": "success"}) == 1
        assert get("tokens_used_total", {**model, "token_type": "output"}) == 50
        assert get("credits_used_total", {**model, "user_id": "user123"}) == 1.5
        labels = {"method": "POST", "endpoint": "/v1/chat/completions", "status_code": "200"}
        assert get("http_requests_total", labels) == 1
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_module_level_helpers_act_on_the_default_instance(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every module-level helper forwards to the default `GatewayMetrics`, same arguments."""
    import gatewayz_metrics
    from gatewayz_metrics import _domain

    monkeypatch.setattr(_domain, "_default", GatewayMetrics(registry))
    call_every_helper(gatewayz_metrics)  # type: ignore[arg-type]
    found = {f.name for f in text_string_to_metric_families(exposition(registry))}
    assert set(EXPECTED_FAMILIES) <= found
    assert registry.get_sample_value("queue_size", {"queue": "inference"}) == 2
