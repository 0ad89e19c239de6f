"""Secrets never become labels: secret-looking `user_id` / `api_key_id` values are replaced
by a stable `sha256:` fingerprint; plain ids stay readable; the rule is configurable."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gatewayz_metrics._domain import GatewayMetrics
from gatewayz_metrics._secrets import fingerprint, looks_like_secret

# Shaped like real credentials, but made up.
OPENAI_KEY = "sk-proj-Xq3vT8mN2pL5kR9wY1zA4bC7dE0fG6hJ"
ANTHROPIC_KEY = "sk-ant-api03-aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5bC7"
GATEWAY_KEY = "gw_live_4f9a7c2e1b8d6f3a0c5e9b7d2f4a6c8e"
RANDOM_TOKEN = "Zk29fQm7Lp4Xv8Rt1Nc6Wb3Hy5Jd0Gs"
HEX_TOKEN = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyMTIzIn0.c2lnbmF0dXJlLXZhbHVl"


@pytest.mark.parametrize(
    "value",
    [
        OPENAI_KEY,
        ANTHROPIC_KEY,
        GATEWAY_KEY,
        RANDOM_TOKEN,
        HEX_TOKEN,
        JWT,
        "Bearer " + RANDOM_TOKEN,
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
        "AKIAIOSFODNN7EXAMPLE",
    ],
    ids=["openai", "anthropic", "gateway", "base62", "hex", "jwt", "bearer", "github", "aws"],
)
def test_credentials_look_like_secrets(value: str) -> None:
    """Known key formats and long random tokens are detected."""
    assert looks_like_secret(value)


@pytest.mark.parametrize(
    "value",
    [
        "user123",
        "key_42",
        "alice@example.com",
        str(uuid.UUID(int=0x1234_5678_9ABC_DEF0_1234_5678_9ABC_DEF0)),
        "tenant_12345_project_67890",
        "customer-organization-name-42",
        "enterprise_customer_0001",
        "sha256:0123456789ab",
        "sk-short",
        "openrouter/mistralai/mixtral-8x22b-instruct",
        "meta-llama/Meta-Llama-3.1-405B-Instruct-Turbo",
    ],
    ids=[
        "user123",
        "key_42",
        "email",
        "uuid",
        "tenant",
        "org-name",
        "padded",
        "fingerprint",
        "sk",
        "model-path",
        "model-mixed-case",
    ],
)
def test_plain_ids_stay_readable(value: str) -> None:
    """Readable ids, UUIDs and our own fingerprints are not taken for secrets."""
    assert not looks_like_secret(value)


def test_fingerprint_is_sha256_prefix_and_stable() -> None:
    """The fingerprint is `sha256:` plus the first 12 hex digits of the SHA-256."""
    expected = "sha256:" + hashlib.sha256(OPENAI_KEY.encode()).hexdigest()[:12]
    assert fingerprint(OPENAI_KEY) == expected
    assert fingerprint(OPENAI_KEY) == fingerprint(OPENAI_KEY)


def test_source_document_user_id_equals_api_key_never_leaks(
    registry: CollectorRegistry,
) -> None:
    """The source document passes `user_id=api_key`: the key is nowhere in the exposition."""
    metrics = GatewayMetrics(registry)
    for key in (OPENAI_KEY, ANTHROPIC_KEY, GATEWAY_KEY, JWT):
        metrics.record_credits_used("openrouter", "gpt-4", user_id=key, credits=1.5)
        metrics.record_api_key_usage(key, "success")
        metrics.set_user_credit_balance(key, 10)
    text = generate_latest(registry).decode()
    for key in (OPENAI_KEY, ANTHROPIC_KEY, GATEWAY_KEY, JWT):
        assert key not in text
        assert key[:12] not in text
        labels = {"provider": "openrouter", "model": "gpt-4", "user_id": fingerprint(key)}
        assert registry.get_sample_value("credits_used_total", labels) == 1.5
        usage = {"api_key_id": fingerprint(key), "status": "success"}
        assert registry.get_sample_value("api_key_usage_total", usage) == 1
        assert registry.get_sample_value("user_credit_balance", {"user_id": fingerprint(key)}) == 10


def test_plain_ids_are_kept_as_labels(registry: CollectorRegistry) -> None:
    """`user123` and `key_42` appear as they are."""
    metrics = GatewayMetrics(registry)
    metrics.record_credits_used("openrouter", "gpt-4", "user123", 1.0)
    metrics.record_api_key_usage("key_42", "success")
    labels = {"provider": "openrouter", "model": "gpt-4", "user_id": "user123"}
    assert registry.get_sample_value("credits_used_total", labels) == 1.0
    usage = {"api_key_id": "key_42", "status": "success"}
    assert registry.get_sample_value("api_key_usage_total", usage) == 1


def test_only_user_and_key_labels_are_fingerprinted(registry: CollectorRegistry) -> None:
    """A model name that happens to look random is a model name, not a credential."""
    metrics = GatewayMetrics(registry)
    metrics.record_tokens_used("p", RANDOM_TOKEN, 1, 1)
    labels = {"provider": "p", "model": RANDOM_TOKEN, "token_type": "input"}
    assert registry.get_sample_value("tokens_used_total", labels) == 1


def test_the_rule_is_configurable(registry: CollectorRegistry) -> None:
    """A custom detector decides: here, every id starting with `acct_` is private."""
    metrics = GatewayMetrics(
        registry,
        secret_detector=lambda value: value.startswith("acct_") or looks_like_secret(value),
    )
    metrics.record_api_key_usage("acct_7", "success")
    metrics.record_api_key_usage("key_42", "success")
    get = registry.get_sample_value
    assert (
        get("api_key_usage_total", {"api_key_id": fingerprint("acct_7"), "status": "success"}) == 1
    )
    assert get("api_key_usage_total", {"api_key_id": "key_42", "status": "success"}) == 1


def test_a_failing_detector_fails_closed(registry: CollectorRegistry) -> None:
    """If the custom detector raises, the value is fingerprinted and the fault counted."""

    def broken(value: str) -> bool:
        raise RuntimeError("detector bug")

    metrics = GatewayMetrics(registry, secret_detector=broken)
    metrics.record_credits_used("p", "m", "user123", 1.0)
    labels = {"provider": "p", "model": "m", "user_id": fingerprint("user123")}
    assert registry.get_sample_value("credits_used_total", labels) == 1.0
    errors = {"component": "secret_detector"}
    assert registry.get_sample_value("gatewayz_metrics_internal_errors_total", errors) == 1


def test_an_over_long_user_id_is_fingerprinted_whole_without_scanning_it(
    registry: CollectorRegistry,
) -> None:
    """A `user_id` over the label cap becomes a fingerprint, and the detector never scans it."""
    scanned: list[int] = []

    def detector(value: str) -> bool:
        scanned.append(len(value))
        return looks_like_secret(value)

    metrics = GatewayMetrics(registry, secret_detector=detector)
    hidden_key = "Zk29fQm7Lp4Xv8Rt1Nc6Wb3Hy5Jd0Gs" + "a" * 1_000_000
    metrics.record_credits_used("openai", "openai/gpt-4o", hidden_key, 1.0)
    metrics.record_credits_used("openai", "openai/gpt-4o", "user123", 1.0)
    labels = {"provider": "openai", "model": "openai/gpt-4o", "user_id": fingerprint(hidden_key)}
    assert registry.get_sample_value("credits_used_total", labels) == 1.0
    assert b"Zk29fQm7" not in generate_latest(registry)
    assert scanned == [len("user123")]
