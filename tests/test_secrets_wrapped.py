"""Wrapped credentials are still credentials: auth schemes, quotes, whitespace and
punctuation around a key, or other words next to it, never let it reach a label in clear.
Property tests generate the keys and the wrappings; the example counts are fixed below."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from gatewayz_metrics._domain import GatewayMetrics
from gatewayz_metrics._labels import MAX_LABEL_LENGTH
from gatewayz_metrics._secrets import SECRET_PREFIXES, fingerprint, looks_like_secret

KEY = "sk-proj-Xq3vT8mN2pL5kR9wY1zA4bC7dE0fG6hJ"
RANDOM_TOKEN = "Zk29fQm7Lp4Xv8Rt1Nc6Wb3Hy5Jd0Gs"
PROPERTY_EXAMPLES = 400

SCHEMES = ("Bearer", "bearer", "Basic", "Token", "ApiKey", "Api-Key", "api_key", "Key", "KEY")
SEPARATORS = (" ", "  ", "\t", ": ", "=", ":")
QUOTES = (("", ""), ('"', '"'), ("'", "'"), ("`", "`"), ("<", ">"), ("(", ")"), ("[", "]"))
TRAILERS = ("", " ", "\n", "!", ".", ",", ";", "?", "!!", " .")


@pytest.mark.parametrize(
    "value",
    [
        f"ApiKey {RANDOM_TOKEN}",
        f"Api-Key {RANDOM_TOKEN}",
        f'"{RANDOM_TOKEN}"',
        f"{RANDOM_TOKEN} ",
        f"{RANDOM_TOKEN}!",
        f"Key {KEY}",
        f"token={RANDOM_TOKEN}",
        f"user {RANDOM_TOKEN} admin",
        f"'{KEY}'",
        "Api-Key abcdefgh",
    ],
    ids=[
        "apikey",
        "api-key",
        "quoted",
        "trailing-space",
        "bang",
        "key-scheme",
        "key-equals",
        "between-words",
        "single-quoted",
        "low-entropy-after-scheme",
    ],
)
def test_the_issue_s_wrapped_keys_are_secrets(value: str, registry: CollectorRegistry) -> None:
    """Each wrapping named in the issue is detected and fingerprinted in `user_id`."""
    assert looks_like_secret(value)
    GatewayMetrics(registry).record_credits_used("p", "m", value, 1.0)
    labels = {"provider": "p", "model": "m", "user_id": fingerprint(value)}
    assert registry.get_sample_value("credits_used_total", labels) == 1
    assert RANDOM_TOKEN not in generate_latest(registry).decode()


@pytest.mark.parametrize(
    "value",
    ["user123", "key_42", "Key 42", "ApiKey", "tenant_12345_project_67890", "alice@example.com",
     '"user123"', "user123!", "team: growth", "sha256:0123456789ab", "Acme Corp (EU)"],
)  # fmt: skip
def test_readable_ids_stay_readable_when_wrapped(value: str) -> None:
    """Wrapping alone does not make a readable id a secret."""
    assert not looks_like_secret(value)


_base62 = st.text(alphabet=string.ascii_letters + string.digits, min_size=8, max_size=40)
_prefixed = st.builds(lambda prefix, tail: prefix + tail, st.sampled_from(SECRET_PREFIXES), _base62)
_hex = st.text(alphabet="0123456789abcdef", min_size=24, max_size=64).filter(
    lambda t: any(c.isdigit() for c in t) and any(c.isalpha() for c in t)
)
_credentials = st.one_of(_prefixed, _hex)


@st.composite
def wrapped(draw: st.DrawFn) -> tuple[str, str]:
    """(credential, the credential wrapped the way real values arrive)."""
    key = draw(_credentials)
    scheme = draw(st.sampled_from(("", *SCHEMES)))
    separator = draw(st.sampled_from(SEPARATORS)) if scheme else ""
    left, right = draw(st.sampled_from(QUOTES))
    trailer = draw(st.sampled_from(TRAILERS))
    leading = draw(st.sampled_from(("", " ", "\t")))
    value = f"{leading}{scheme}{separator}{left}{key}{right}{trailer}"
    return key, value


@settings(
    max_examples=PROPERTY_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(wrapped())
def test_any_wrapped_credential_is_detected(case: tuple[str, str]) -> None:
    """Whatever scheme, quotes, whitespace and punctuation surround a credential, it is a
    secret."""
    _, value = case
    assert looks_like_secret(value), value


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None)
@given(wrapped())
def test_a_wrapped_credential_never_reaches_a_label(case: tuple[str, str]) -> None:
    """Recorded as `user_id` or `api_key_id`, the credential is absent from the exposition."""
    key, value = case
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    metrics.record_credits_used("p", "m", value, 1.0)
    metrics.record_api_key_usage(value, "ok")
    text = generate_latest(registry).decode()
    assert key not in text
    assert len(value) > MAX_LABEL_LENGTH or fingerprint(value) in text


_words = st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=10)
_readable = st.builds(
    lambda parts, digits, sep: sep.join(parts) + (sep + digits if digits else ""),
    st.lists(_words, min_size=1, max_size=3),
    st.text(alphabet=string.digits, max_size=6),
    st.sampled_from(("_", "-", ".")),
)


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None)
@given(_readable, st.sampled_from(QUOTES), st.sampled_from(TRAILERS))
def test_wrapped_readable_ids_stay_readable(
    ident: str, quotes: tuple[str, str], trailer: str
) -> None:
    """A readable id (words and a number) in quotes or with punctuation is not a secret,
    unless it is a scheme word followed by a credential-length token (not generated here)."""
    value = f"{quotes[0]}{ident}{quotes[1]}{trailer}"
    assert not looks_like_secret(value), value
