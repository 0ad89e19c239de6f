"""Bad input gets a clear TypeError/ValueError naming the argument and value, and changes
nothing: the exposition is byte-for-byte the same before and after the failed call."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gatewayz_metrics._domain import GatewayMetrics

# The calls pass wrong types on purpose: the helpers are typed, their callers may not be.
Call = Callable[[Any], object]


CASES: list[tuple[str, Call, type[Exception], str]] = [
    # tokens: negative or not an integer
    ("tokens-negative", lambda m: m.record_tokens_used("p", "m", -1, 5), ValueError, "input_tokens must be >= 0, got -1"),  # noqa: E501
    ("tokens-float", lambda m: m.record_tokens_used("p", "m", 1.5, 5), TypeError, "input_tokens must be an int, got float 1.5"),  # noqa: E501
    ("tokens-integral-float", lambda m: m.record_tokens_used("p", "m", 10, 5.0), TypeError, "output_tokens must be an int, got float 5.0"),  # noqa: E501
    ("tokens-bool", lambda m: m.record_tokens_used("p", "m", True, 5), TypeError, "input_tokens must be an int, got bool True"),  # noqa: E501
    ("tokens-str", lambda m: m.record_tokens_used("p", "m", 3, "7"), TypeError, "output_tokens must be an int, got str '7'"),  # noqa: E501
    # credits: negative, NaN, infinite, not a number
    ("credits-negative", lambda m: m.record_credits_used("p", "m", "u1", -0.5), ValueError, "credits must be >= 0, got -0.5"),  # noqa: E501
    ("credits-nan", lambda m: m.record_credits_used("p", "m", "u1", math.nan), ValueError, "credits must be finite, got nan"),  # noqa: E501
    ("credits-inf", lambda m: m.record_credits_used("p", "m", "u1", math.inf), ValueError, "credits must be finite, got inf"),  # noqa: E501
    ("credits-str", lambda m: m.record_credits_used("p", "m", "u1", "1.5"), TypeError, "credits must be a number, got str '1.5'"),  # noqa: E501
    # empty or non-string provider / model
    ("provider-empty", lambda m: m.record_tokens_used("", "m", 1, 1), ValueError, "provider must be a non-empty string, got ''"),  # noqa: E501
    ("provider-blank", lambda m: m.track_model_inference("  ", "m"), ValueError, "provider must be a non-empty string, got '  '"),  # noqa: E501
    ("model-empty", lambda m: m.track_model_inference("p", ""), ValueError, "model must be a non-empty string, got ''"),  # noqa: E501
    ("model-not-str", lambda m: m.record_credits_used("p", 4, "u1", 1.0), TypeError, "model must be a str, got int 4"),  # noqa: E501
    ("provider-none", lambda m: m.set_provider_health(None, available=True), TypeError, "provider must be a str, got NoneType None"),  # noqa: E501
    # provider health: availability in {0, 1}, error rate in [0, 1]
    ("availability-half", lambda m: m.set_provider_health("p", available=0.5), ValueError, "available must be 0 or 1 (or a bool), got 0.5"),  # noqa: E501
    ("availability-two", lambda m: m.set_provider_health("p", available=2), ValueError, "available must be 0 or 1 (or a bool), got 2"),  # noqa: E501
    ("availability-str", lambda m: m.set_provider_health("p", available="up"), TypeError, "available must be a number, got str 'up'"),  # noqa: E501
    ("error-rate-above-1", lambda m: m.set_provider_health("p", available=1, error_rate=1.5), ValueError, "error_rate must be <= 1, got 1.5"),  # noqa: E501
    ("error-rate-negative", lambda m: m.set_provider_health("p", available=1, error_rate=-0.1), ValueError, "error_rate must be >= 0, got -0.1"),  # noqa: E501
    ("error-rate-nan", lambda m: m.set_provider_health("p", available=1, error_rate=math.nan), ValueError, "error_rate must be finite, got nan"),  # noqa: E501
    ("response-time-negative", lambda m: m.set_provider_health("p", available=1, response_time=-1), ValueError, "response_time must be >= 0, got -1"),  # noqa: E501
    # other gauges and counters
    ("active-keys-negative", lambda m: m.set_active_api_keys(active=3, inactive=-1), ValueError, "inactive must be >= 0, got -1"),  # noqa: E501
    ("balance-nan", lambda m: m.set_user_credit_balance("u1", math.nan), ValueError, "balance must be finite, got nan"),  # noqa: E501
    ("cache-size-negative", lambda m: m.set_cache_size("c", -1), ValueError, "size_bytes must be >= 0, got -1"),  # noqa: E501
    ("queue-size-float", lambda m: m.set_queue_size("q", 2.5), TypeError, "size must be an int, got float 2.5"),  # noqa: E501
    ("remaining-inf", lambda m: m.set_rate_limit_remaining("rpm", math.inf), ValueError, "remaining must be finite, got inf"),  # noqa: E501
    ("trial-count-negative", lambda m: m.set_trial_active("active", -3), ValueError, "count must be >= 0, got -3"),  # noqa: E501
    ("cache-name-empty", lambda m: m.record_cache_hit(""), ValueError, "cache_name must be a non-empty string, got ''"),  # noqa: E501
    ("table-not-str", lambda m: m.track_database_query(b"users", "select"), TypeError, "table must be a str, got bytes b'users'"),  # noqa: E501
    ("http-method-not-str", lambda m: m.track_http_request(None, "/x"), TypeError, "method must be a str, got NoneType None"),  # noqa: E501
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [pytest.param(call, error, message, id=case_id) for case_id, call, error, message in CASES],
)
def test_bad_input_is_rejected_clearly_and_changes_nothing(
    registry: CollectorRegistry, call: Call, error: type[Exception], message: str
) -> None:
    """The error names the argument and the value; no sample, series or cap slot changes."""
    metrics = GatewayMetrics(registry)
    # Make sure every family (and the HTTP ones) already has series to compare.
    metrics.record_tokens_used("p", "m", 1, 1)
    metrics.set_provider_health("p", available=True, error_rate=0.5, response_time=1.0)
    metrics.set_active_api_keys(active=1, inactive=1)
    with metrics.track_http_request("GET", "/v1/models"):
        pass
    before = generate_latest(registry)
    with pytest.raises(error, match=re.escape(message)):
        call(metrics)
    assert generate_latest(registry) == before


@pytest.mark.parametrize(
    ("input_tokens", "output_tokens", "message"),
    [(3, -2, "output_tokens must be >= 0, got -2"), (2.5, 3, "input_tokens must be an int")],
    ids=["negative-output", "float-input"],
)
def test_bad_usage_inside_a_block_changes_nothing(
    registry: CollectorRegistry, input_tokens: object, output_tokens: object, message: str
) -> None:
    """A rejected set_usage() records no tokens and leaves the call free to report again."""
    metrics = GatewayMetrics(registry)
    with metrics.track_model_inference("p", "m") as call:
        with pytest.raises((TypeError, ValueError), match=re.escape(message)):
            call.set_usage(input_tokens=input_tokens, output_tokens=output_tokens)  # type: ignore[arg-type]
        call.set_usage(input_tokens=1, output_tokens=2)
    labels = {"provider": "p", "model": "m"}
    get = registry.get_sample_value
    assert get("tokens_used_total", {**labels, "token_type": "input"}) == 1
    assert get("tokens_used_total", {**labels, "token_type": "output"}) == 2


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (700, ValueError, "status_code must be an HTTP status between 100 and 599, got 700"),
        ("200", TypeError, "status_code must be an int, got str '200'"),
        (True, TypeError, "status_code must be an int, got bool True"),
    ],
    ids=["out-of-range", "str", "bool"],
)
def test_bad_http_status_is_rejected_and_the_default_kept(
    registry: CollectorRegistry, status: object, error: type[Exception], message: str
) -> None:
    """A rejected set_status() leaves the status the block would have recorded (200)."""
    metrics = GatewayMetrics(registry)
    with (
        metrics.track_http_request("GET", "/v1/models") as request,
        pytest.raises(error, match=re.escape(message)),
    ):
        request.set_status(status)  # type: ignore[arg-type]
    labels = {"method": "GET", "endpoint": "/v1/models", "status_code": "200"}
    assert registry.get_sample_value("http_requests_total", labels) == 1


def test_a_secret_never_appears_in_an_error_message(registry: CollectorRegistry) -> None:
    """A user id of the wrong type that may be a key is not echoed in the TypeError."""
    key = b"sk-live-0123456789abcdefghijklmnop"
    with pytest.raises(TypeError) as raised:
        GatewayMetrics(registry).record_credits_used("p", "m", key, 1.0)  # type: ignore[arg-type]
    assert "user_id must be a str, got bytes" in str(raised.value)
    assert "sk-live" not in str(raised.value)


def test_bad_input_does_not_use_up_a_cap_slot(registry: CollectorRegistry) -> None:
    """Values of a call rejected for a bad number are never admitted under the label cap."""
    metrics = GatewayMetrics(registry, label_caps={"user_id": 1})
    with pytest.raises(ValueError, match="credits"):
        metrics.record_credits_used("p", "m", "first", -1)
    metrics.record_credits_used("p", "m", "second", 1)
    labels = {"provider": "p", "model": "m", "user_id": "second"}
    assert registry.get_sample_value("credits_used_total", labels) == 1


def test_numbers_of_other_numeric_types_are_accepted(registry: CollectorRegistry) -> None:
    """Decimal-like and int-like values (bools excluded) are accepted as numbers."""
    from decimal import Decimal
    from fractions import Fraction

    metrics = GatewayMetrics(registry)
    metrics.record_credits_used("p", "m", "u1", Decimal("0.25"))  # type: ignore[arg-type]
    metrics.record_credits_used("p", "m", "u1", Fraction(1, 4))  # type: ignore[arg-type]
    labels = {"provider": "p", "model": "m", "user_id": "u1"}
    assert registry.get_sample_value("credits_used_total", labels) == 0.5
