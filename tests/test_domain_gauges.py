"""Gauges of shared state: scrape-time callbacks (a custom collector, one family per name)
and the multiprocess mode each gauge declares."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest
from _binaries import require_binary
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from gatewayz_metrics._cardinality import OVERFLOW_VALUE
from gatewayz_metrics._domain import GAUGE_FAMILIES, GatewayMetrics
from gatewayz_metrics._secrets import fingerprint


def family_samples(registry: CollectorRegistry, name: str) -> dict[str, float]:
    """label value -> value of the one-label gauge family `name` (asserting it is unique)."""
    families = [
        f
        for f in text_string_to_metric_families(generate_latest(registry).decode())
        if f.name == name
    ]
    assert len(families) == 1
    return {next(iter(s.labels.values())): s.value for s in families[0].samples}


def test_a_callback_replaces_the_set_values_in_one_family(registry: CollectorRegistry) -> None:
    """With a callback, the exposition shows its values (once), not what set_* wrote."""
    metrics = GatewayMetrics(registry)
    metrics.set_user_credit_balance("stale-worker-view", 1.0)
    metrics.register_gauge_callback(
        "user_credit_balance", lambda: {"user123": 42.5, "user456": -3.0}
    )
    assert family_samples(registry, "user_credit_balance") == {"user123": 42.5, "user456": -3.0}
    text = generate_latest(registry).decode()
    assert text.count("# TYPE user_credit_balance gauge") == 1


def test_the_callback_runs_at_every_scrape(registry: CollectorRegistry) -> None:
    """Values come from the callback at collection time, so they are never stale."""
    metrics = GatewayMetrics(registry)
    state = {"active": 3, "inactive": 1}
    metrics.register_gauge_callback("active_api_keys", lambda: state)
    assert registry.get_sample_value("active_api_keys", {"status": "active"}) == 3
    state["active"] = 7
    assert registry.get_sample_value("active_api_keys", {"status": "active"}) == 7


def test_clearing_the_callback_shows_the_set_values_again(registry: CollectorRegistry) -> None:
    """clear_gauge_callback() goes back to the values written by set_*."""
    metrics = GatewayMetrics(registry)
    metrics.set_subscription_count("pro", 5)
    metrics.register_gauge_callback("subscription_count", lambda: {"pro": 9})
    assert registry.get_sample_value("subscription_count", {"plan": "pro"}) == 9
    metrics.clear_gauge_callback("subscription_count")
    assert registry.get_sample_value("subscription_count", {"plan": "pro"}) == 5


def test_a_failing_callback_empties_its_family_and_spares_the_scrape(
    registry: CollectorRegistry,
) -> None:
    """An exception in a callback is counted; the rest of the exposition is served."""

    def broken() -> Mapping[str, float]:
        raise ConnectionError("billing database unreachable")

    metrics = GatewayMetrics(registry)
    metrics.record_cache_hit("c")
    metrics.register_gauge_callback("trial_active", broken)
    assert family_samples(registry, "trial_active") == {}
    metrics.clear_gauge_callback("trial_active")  # reading samples collects (calls) it again
    assert registry.get_sample_value("cache_hits_total", {"cache_name": "c"}) == 1
    errors = {"component": "callback:trial_active"}
    assert registry.get_sample_value("gatewayz_metrics_internal_errors_total", errors) == 1


def test_bad_callback_entries_are_skipped_and_counted(registry: CollectorRegistry) -> None:
    """Entries with a bad label or value are dropped one by one; good ones are shown."""
    metrics = GatewayMetrics(registry)
    metrics.register_gauge_callback(
        "queue_size",
        lambda: {"inference": 4, "billing": -1, "": 3, "webhooks": math.nan, 7: 1},  # type: ignore[dict-item]
    )
    assert family_samples(registry, "queue_size") == {"inference": 4}
    metrics.clear_gauge_callback("queue_size")  # reading samples collects (calls) it again
    errors = {"component": "callback:queue_size"}
    assert registry.get_sample_value("gatewayz_metrics_internal_errors_total", errors) == 4


def test_callback_labels_are_cleaned_like_set_labels(registry: CollectorRegistry) -> None:
    """A secret-looking user id from a callback is fingerprinted too."""
    key = "sk-proj-Xq3vT8mN2pL5kR9wY1zA4bC7dE0fG6hJ"
    metrics = GatewayMetrics(registry)
    metrics.register_gauge_callback("user_credit_balance", lambda: {key: 10.0})
    assert family_samples(registry, "user_credit_balance") == {fingerprint(key): 10.0}
    assert key not in generate_latest(registry).decode()


def test_callback_values_past_the_cap_fold_by_kind(registry: CollectorRegistry) -> None:
    """Additive gauges sum the overflow into __other__; health gauges drop it."""
    metrics = GatewayMetrics(registry, label_caps={"user_id": 2, "provider": 1})
    metrics.register_gauge_callback(
        "user_credit_balance", lambda: {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
    )
    metrics.register_gauge_callback("provider_availability", lambda: {"openai": 1, "groq": 0})
    assert family_samples(registry, "user_credit_balance") == {
        "a": 1.0,
        "b": 2.0,
        OVERFLOW_VALUE: 7.0,
    }
    assert family_samples(registry, "provider_availability") == {"openai": 1.0}


def test_closed_label_sets_are_enforced_for_callbacks(registry: CollectorRegistry) -> None:
    """active_api_keys only has the statuses active and inactive."""
    metrics = GatewayMetrics(registry)
    metrics.register_gauge_callback("active_api_keys", lambda: {"active": 2, "revoked": 5})
    assert family_samples(registry, "active_api_keys") == {"active": 2.0}


@pytest.mark.parametrize(
    ("family", "callback", "error"),
    [("tokens_used_total", dict, ValueError), ("queue_size", {"q": 1}, TypeError)],
    ids=["not-a-gauge-family", "not-callable"],
)
def test_register_gauge_callback_checks_its_arguments(
    registry: CollectorRegistry, family: str, callback: object, error: type[Exception]
) -> None:
    """Only the gauge families take callbacks, and a callback must be callable."""
    with pytest.raises(error):
        GatewayMetrics(registry).register_gauge_callback(family, callback)  # type: ignore[arg-type]


def test_every_gauge_family_accepts_a_callback(registry: CollectorRegistry) -> None:
    """All eleven gauge families can be fed by a callback."""
    metrics = GatewayMetrics(registry)
    label_values = {"active_api_keys": "active"}
    for family in GAUGE_FAMILIES:
        value = label_values.get(family, "x")
        metrics.register_gauge_callback(family, lambda value=value: {value: 1})  # type: ignore[misc]
        assert family_samples(registry, family) == {value: 1.0}, family


@pytest.mark.prometheus
def test_promtool_accepts_callback_fed_families(registry: CollectorRegistry) -> None:
    """Callback families lint like the others (only the documented subscription_count lint)."""
    promtool = require_binary("promtool")
    metrics = GatewayMetrics(registry)
    metrics.set_user_credit_balance("u1", 1)
    metrics.register_gauge_callback("user_credit_balance", lambda: {"u2": 2})
    metrics.register_gauge_callback("subscription_count", lambda: {"pro": 2})
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=generate_latest(registry).decode(),
        capture_output=True,
        text=True,
        check=False,
    )
    problems = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert problems == [
        'subscription_count non-histogram and non-summary metrics should not have "_count" suffix'
    ]


WORKER = textwrap.dedent(
    """
    import sys
    from prometheus_client import CollectorRegistry
    from gatewayz_metrics._domain import GatewayMetrics

    step = int(sys.argv[1])
    m = GatewayMetrics(CollectorRegistry())
    m.set_queue_size("inference", 3 + step)
    m.set_active_connections("db", 2 - step)
    m.set_cache_size("responses", 100 // (step + 1))
    m.set_user_credit_balance("user123", 10.0 * (step + 1))
    m.set_subscription_count("pro", 5 + step)
    m.set_provider_health("openai", available=bool(step), error_rate=0.5 / (step + 1))
    m.record_tokens_used("openai", "gpt-4o", 10, 1)
    """
)


@pytest.mark.slow
def test_multiprocess_modes_sum_per_process_gauges_and_keep_the_latest_state(
    tmp_path: Path,
) -> None:
    """Under PROMETHEUS_MULTIPROC_DIR, per-process gauges add up; state gauges keep the latest."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for step in (0, 1):  # one worker after the other: the second one's state is the latest
        subprocess.run([sys.executable, "-c", WORKER, str(step)], env=env, check=True, timeout=60)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))  # type: ignore[no-untyped-call]
    get = registry.get_sample_value
    assert get("queue_size", {"queue": "inference"}) == 3 + 4
    assert get("active_connections", {"connection_type": "db"}) == 2 + 1
    assert get("cache_size_bytes", {"cache_name": "responses"}) == 100 + 50
    assert get("user_credit_balance", {"user_id": "user123"}) == 20
    assert get("subscription_count", {"plan": "pro"}) == 6
    assert get("provider_availability", {"provider": "openai"}) == 1
    assert get("provider_error_rate", {"provider": "openai"}) == 0.25
    tokens = {"provider": "openai", "model": "gpt-4o", "token_type": "input"}
    assert get("tokens_used_total", tokens) == 20
