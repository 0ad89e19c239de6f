"""Recording never turns a request into a failure (the OpenTelemetry API rule).

Lenient mode (the default): a call with an invalid value records nothing of that call, does
not raise, counts the drop in `gatewayz_metrics_invalid_values_total{metric, argument}` and
logs it once per kind with the message strict mode raises. Strict mode (`strict=True` or
`GATEWAYZ_METRICS_STRICT=1`, which this test suite sets) raises that message. `None` for a
count means "not reported" in both modes.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from test_domain_validation import CASES

from gatewayz_metrics import _internal
from gatewayz_metrics._domain import GatewayMetrics
from gatewayz_metrics._middleware import PrometheusMiddleware

Call = Callable[[Any], object]
INVALID = "gatewayz_metrics_invalid_values_total"
INTERNAL = "gatewayz_metrics_internal_errors_total"
LABELS = {"provider": "openrouter", "model": "gpt-4o"}

EXTRA_CASES: list[tuple[str, Call, type[Exception], str]] = [
    ("credits-beyond-float", lambda m: m.record_credits_used("p", "m", "u1", 10**400), ValueError, "credits must be finite, got an int of 401 digits"),  # noqa: E501
    ("tokens-beyond-float", lambda m: m.record_tokens_used("p", "m", 10**400, 1), ValueError, "input_tokens must be finite, got an int of 401 digits"),  # noqa: E501
    ("queue-size-beyond-float", lambda m: m.set_queue_size("q", 10**309), ValueError, "size must be finite, got an int of 310 digits"),  # noqa: E501
    ("credits-bool", lambda m: m.record_credits_used("p", "m", "u1", True), TypeError, "credits must be a number, got bool True"),  # noqa: E501
    ("tokens-nan", lambda m: m.record_tokens_used("p", "m", math.nan, 1), TypeError, "input_tokens must be an int, got float nan"),  # noqa: E501
    ("tokens-inf", lambda m: m.record_tokens_used("p", "m", 1, math.inf), TypeError, "output_tokens must be an int, got float inf"),  # noqa: E501
    ("balance-beyond-float", lambda m: m.set_user_credit_balance("u1", -(10**400)), ValueError, "balance must be finite"),  # noqa: E501
    ("api-key-status-empty", lambda m: m.record_api_key_usage("key-1", ""), ValueError, "status must be a non-empty string, got ''"),  # noqa: E501
    ("database-operation-none", lambda m: m.track_database_query("users", None), TypeError, "operation must be a str, got NoneType None"),  # noqa: E501
]  # fmt: skip
ALL_CASES = [*CASES, *EXTRA_CASES]


@pytest.fixture
def lenient(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment of an application in production: no strict switch."""
    monkeypatch.delenv("GATEWAYZ_METRICS_STRICT", raising=False)
    # Log-once is per process: start from a process that has logged nothing yet.
    monkeypatch.setattr(_internal, "_logged", set())


def invalid_counts(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """Non-zero `invalid_values_total` by (metric, argument)."""
    return {
        (sample.labels["metric"], sample.labels["argument"]): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == INVALID and sample.value
    }


def without_self_metrics(exposition: bytes) -> list[bytes]:
    """The exposition lines of the observed metrics (the self-metrics are compared apart)."""
    return [line for line in exposition.splitlines() if b"gatewayz_metrics_" not in line]


def prime(metrics: GatewayMetrics) -> None:
    """Give every family series, so that a stray write would show as a changed line."""
    metrics.record_tokens_used("p", "m", 1, 1)
    metrics.set_provider_health("p", available=True, error_rate=0.5, response_time=1.0)
    metrics.set_active_api_keys(active=1, inactive=1)
    with metrics.track_http_request("GET", "/v1/models"):
        pass


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [pytest.param(call, error, message, id=case_id) for case_id, call, error, message in ALL_CASES],
)
def test_lenient_mode_drops_counts_and_logs_an_invalid_call(
    registry: CollectorRegistry,
    lenient: None,
    caplog: pytest.LogCaptureFixture,
    call: Call,
    error: type[Exception],
    message: str,
) -> None:
    """No exception; nothing of the call is recorded; one drop is counted under the argument
    that strict mode names; the log carries strict mode's message."""
    metrics = GatewayMetrics(registry)
    assert not metrics.strict
    prime(metrics)
    before = without_self_metrics(generate_latest(registry))
    caplog.set_level(logging.WARNING, logger="gatewayz_metrics")
    call(metrics)
    assert without_self_metrics(generate_latest(registry)) == before
    counts = invalid_counts(registry)
    assert list(counts.values()) == [1.0], counts
    ((metric, argument),) = counts
    assert message.startswith(argument + " "), (argument, message)
    assert metric in {family.name + "_total" for family in registry.collect()} | {
        family.name for family in registry.collect()
    }
    logged = [r.getMessage() for r in caplog.records if r.name == "gatewayz_metrics"]
    assert any(message in text for text in logged), logged


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        pytest.param(call, error, message, id=case_id)
        for case_id, call, error, message in EXTRA_CASES
    ],
)
def test_strict_mode_raises_a_clear_error(
    registry: CollectorRegistry, lenient: None, call: Call, error: type[Exception], message: str
) -> None:
    """`strict=True` raises the precise ValueError/TypeError (never OverflowError), and the
    call changes nothing."""
    metrics = GatewayMetrics(registry, strict=True)
    prime(metrics)
    before = generate_latest(registry)
    with pytest.raises(error, match=re.escape(message)):
        call(metrics)
    assert generate_latest(registry) == before


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_the_environment_switches_strict_mode_on(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """GATEWAYZ_METRICS_STRICT=1 makes an instance built without `strict` raise."""
    monkeypatch.setenv("GATEWAYZ_METRICS_STRICT", value)
    metrics = GatewayMetrics(registry)
    assert metrics.strict
    with pytest.raises(ValueError, match="input_tokens must be >= 0"):
        metrics.record_tokens_used("p", "m", -1, 1)


def test_the_project_tests_run_strict(registry: CollectorRegistry) -> None:
    """tests/conftest.py sets GATEWAYZ_METRICS_STRICT, so validation tests see the errors."""
    assert GatewayMetrics(registry).strict


def test_each_kind_of_drop_is_logged_once(
    registry: CollectorRegistry, lenient: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A hot loop of the same invalid call logs one line and counts every drop."""
    metrics = GatewayMetrics(registry)
    caplog.set_level(logging.WARNING, logger="gatewayz_metrics")
    for _ in range(50):
        metrics.record_credits_used("p", "m", "u1", -3.25)
    assert invalid_counts(registry) == {("credits_used_total", "credits"): 50.0}
    lines = [r for r in caplog.records if "credits must be >= 0, got -3.25" in r.getMessage()]
    assert len(lines) == 1


def test_an_invalid_inference_status_keeps_the_outcome(
    registry: CollectorRegistry, lenient: None
) -> None:
    """Lenient: an unknown status given to set_status() is dropped; the block's own outcome
    is recorded."""
    metrics = GatewayMetrics(registry)
    with metrics.track_model_inference("openrouter", "gpt-4o") as call:
        call.set_status("ok")
    get = registry.get_sample_value
    assert get("model_inference_requests_total", {**LABELS, "status": "success"}) == 1
    assert invalid_counts(registry) == {("model_inference_requests_total", "status"): 1.0}


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
def test_a_count_the_provider_did_not_report_is_not_recorded(
    registry: CollectorRegistry, lenient: None, strict: bool
) -> None:
    """`None` tokens mean "not reported": the other count is recorded, no error, no drop."""
    metrics = GatewayMetrics(registry, strict=strict)
    metrics.record_tokens_used("openrouter", "gpt-4o", 12, None)
    metrics.record_tokens_used("openrouter", "gpt-4o", None, 7)
    metrics.record_tokens_used("openrouter", "gpt-4o", None, None)
    metrics.record_credits_used("openrouter", "gpt-4o", "u1", None)
    get = registry.get_sample_value
    assert get("tokens_used_total", {**LABELS, "token_type": "input"}) == 12
    assert get("tokens_used_total", {**LABELS, "token_type": "output"}) == 7
    assert not get("credits_used_total", {**LABELS, "user_id": "u1"})
    assert invalid_counts(registry) == {}


def test_set_usage_with_an_unreported_count_records_the_other(
    registry: CollectorRegistry,
) -> None:
    """A provider that omits completion tokens: the paid-for call records its input tokens
    and its outcome, and raises nothing, in strict mode too."""
    metrics = GatewayMetrics(registry, strict=True)
    with metrics.track_model_inference("openrouter", "gpt-4o") as call:
        call.first_token()
        call.set_usage(input_tokens=40, output_tokens=None)
    get = registry.get_sample_value
    assert get("tokens_used_total", {**LABELS, "token_type": "input"}) == 40
    assert not get("tokens_used_total", {**LABELS, "token_type": "output"})
    assert get("model_inference_requests_total", {**LABELS, "status": "success"}) == 1
    assert not get("model_time_per_output_token_seconds_count", LABELS)


def test_gauge_setters_leave_an_unreported_value_alone(registry: CollectorRegistry) -> None:
    """`None` for a gauge value keeps the value last set; strict mode does not object."""
    metrics = GatewayMetrics(registry, strict=True)
    metrics.set_queue_size("jobs", 4)
    metrics.set_queue_size("jobs", None)
    metrics.set_active_api_keys(active=3, inactive=None)
    get = registry.get_sample_value
    assert get("queue_size", {"queue": "jobs"}) == 4
    assert get("active_api_keys", {"status": "active"}) == 3
    assert get("active_api_keys", {"status": "inactive"}) is None


def test_a_tracker_with_invalid_labels_runs_the_block_and_records_nothing(
    registry: CollectorRegistry, lenient: None
) -> None:
    """Lenient: the block runs, its own exception propagates unchanged, nothing is recorded,
    and the drop is counted once."""
    metrics = GatewayMetrics(registry)
    failure = LookupError("the app's own")

    def block() -> None:
        with metrics.track_model_inference("", "m") as call:
            call.first_token()
            call.set_status("error")
            raise failure

    with pytest.raises(LookupError) as raised:
        block()
    assert raised.value is failure
    with metrics.track_database_query("users", 42):  # type: ignore[arg-type]
        pass

    @metrics.track_http_request(None, "/x")  # type: ignore[arg-type]
    def handler() -> str:
        return "ok"

    assert handler() == "ok"
    text = generate_latest(registry).decode()
    assert "model_inference_requests_total{" not in text
    assert "database_queries_total{" not in text
    assert "http_requests_total{" not in text
    assert invalid_counts(registry) == {
        ("model_inference_requests_total", "provider"): 1.0,
        ("database_queries_total", "operation"): 1.0,
        ("http_requests_total", "method"): 1.0,
    }


def test_overlapping_use_of_one_tracker_is_counted_in_lenient_mode(
    registry: CollectorRegistry, lenient: None
) -> None:
    """Lenient: the outer block is measured, the overlapping inner one is counted as a drop."""
    metrics = GatewayMetrics(registry)
    tracker = metrics.track_database_query("users", "select")
    with tracker, tracker:
        pass
    labels = {"table": "users", "operation": "select"}
    assert registry.get_sample_value("database_queries_total", labels) == 1
    assert invalid_counts(registry) == {("database_queries_total", "tracker"): 1.0}


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
def test_a_fault_of_ours_while_recording_never_raises(
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    lenient: None,
    strict: bool,
) -> None:
    """A counter that cannot be written (a full disk in multiprocess mode) is counted as an
    internal error; the application's call returns normally, in both modes."""
    metrics = GatewayMetrics(registry, strict=strict)
    child = metrics._families.tokens.get(("p", "m"))[0]

    def full_disk(amount: float = 1) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(child, "inc", full_disk)
    metrics.record_tokens_used("p", "m", 5, 0)
    assert registry.get_sample_value(INTERNAL, {"component": "recording"}) == 1


def test_self_metrics_exist_at_zero_from_the_start(registry: CollectorRegistry) -> None:
    """Before any fault, the known self-metric series are exposed at 0, so that rate() and
    increase() see the first fault."""
    GatewayMetrics(registry)
    PrometheusMiddleware(lambda scope, receive, send: None, registry=registry)  # type: ignore[arg-type, return-value]
    get = registry.get_sample_value
    for component in ("middleware.in_progress", "middleware.record", "tracker.inference"):
        assert get(INTERNAL, {"component": component}) == 0, component
    for metric, argument in (
        ("tokens_used_total", "output_tokens"),
        ("credits_used_total", "credits"),
        ("http_requests_total", "status_code"),
    ):
        assert get(INVALID, {"metric": metric, "argument": argument}) == 0, (metric, argument)
    overflow = {"metric": "http_requests_total", "label": "endpoint"}
    assert get("gatewayz_metrics_label_overflow_total", overflow) == 0
    overflow = {"metric": "credits_used_total", "label": "user_id"}
    assert get("gatewayz_metrics_label_overflow_total", overflow) == 0
