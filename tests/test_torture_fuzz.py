"""Bad input, generated: any label value given to any helper reads back as documented, and
malformed ASGI input never makes the middleware raise where the bare application would not.

The label values are arbitrary unicode with the characters that break expositions (newline,
quote, backslash, NUL, lone surrogates) over-represented, and strings up to 1 MB. What the
package promises is computed two ways: with its own cleaning function (`clean_label`), and
from properties stated independently of it (length cap, distinctness, exact round trip of
short values). `promtool check metrics` reads one exposition holding every value tried.
"""

from __future__ import annotations

import asyncio
import gc
import re
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _asgi import RecordingSend, ScriptedReceive, http_scope
from _binaries import require_binary
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Mount

from gatewayz_metrics import (
    DEFAULT_LABEL_CAPS,
    MAX_LABEL_LENGTH,
    GatewayMetrics,
    MetricsApp,
    PrometheusMiddleware,
)
from gatewayz_metrics._http import OTHER_METHOD, STANDARD_METHODS
from gatewayz_metrics._labels import clean_label
from gatewayz_metrics._secrets import looks_like_secret

pytestmark = pytest.mark.slow

LABEL_EXAMPLES = 1500
ASGI_EXAMPLES = 4000
PROMTOOL_EXAMPLES = 300
INTERNAL_ERRORS = "gatewayz_metrics_internal_errors_total"
OPENMETRICS = b"application/openmetrics-text; version=1.0.0"
SUFFIX = re.compile(r"~sha256:[0-9a-f]{12}\Z")
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{12}\Z")
SURROGATE = re.compile("[\ud800-\udfff]")
HUGE_CAPS = dict.fromkeys(DEFAULT_LABEL_CAPS, 100_000)


def report(
    name: str, tried: int, record_property: Callable[[str, object], None], detail: str = ""
) -> None:
    """Make the number of examples tried visible (`-s`, and the JUnit XML properties)."""
    record_property(f"{name}_examples", tried)
    print(f"\n[torture-fuzz] {name}: {tried} examples tried{detail}")


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for all the examples of a test (an event loop per example is slow)."""
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.run_until_complete(event_loop.shutdown_default_executor())
    event_loop.close()


# --- 7. label values ----------------------------------------------------------------------

NASTY = ["\n", "\r", '"', "\\", "\x00", "\ud800", "\udfff", "\u2028", "\ufeff", "{", "}", "=",
         ",", "#", " ", "\t", "\x85", "é", "\u0301", "\U0001f600", "\x7f", "\x1b", "~"]  # fmt: skip
"""Characters that break naive expositions or naive cleaning; drawn far more often than chance."""

characters = st.one_of(st.sampled_from(NASTY), st.characters(exclude_categories=()))
short_values = st.text(characters, max_size=MAX_LABEL_LENGTH + 40)
huge_values = st.builds(
    lambda seed, size: (seed * (size // len(seed) + 1))[:size],
    st.text(characters, min_size=1, max_size=16),
    st.one_of(st.integers(MAX_LABEL_LENGTH - 2, MAX_LABEL_LENGTH + 2), st.integers(129, 1 << 20)),
)
label_values = st.one_of(short_values, short_values, huge_values)


@dataclass(frozen=True)
class Helper:
    """A string-label helper of `GatewayMetrics`: how to call it with `value` as `argument`."""

    name: str
    argument: str
    family: str
    """The sample name that shows the value."""
    call: Callable[[GatewayMetrics, object], None]
    secret: bool = False
    """Whether the argument is fingerprinted when it looks like a credential."""


def _with(block: Any) -> None:
    with block:
        pass


def _callback(family: str) -> Callable[[GatewayMetrics, object], None]:
    def call(metrics: GatewayMetrics, value: object) -> None:
        metrics.register_gauge_callback(family, lambda: {value: 1})  # type: ignore[dict-item]

    return call


HELPERS = [
    Helper("track_model_inference", "provider", "model_inference_requests_total",
           lambda m, v: _with(m.track_model_inference(v, "gpt-4o"))),  # type: ignore[arg-type]
    Helper("track_model_inference", "model", "model_inference_requests_total",
           lambda m, v: _with(m.track_model_inference("openai", v))),  # type: ignore[arg-type]
    Helper("record_tokens_used", "model", "tokens_used_total",
           lambda m, v: m.record_tokens_used("openai", v, 1, 1)),  # type: ignore[arg-type]
    Helper("record_credits_used", "provider", "credits_used_total",
           lambda m, v: m.record_credits_used(v, "gpt-4o", "user1", 1.0)),  # type: ignore[arg-type]
    Helper("record_credits_used", "user_id", "credits_used_total",
           lambda m, v: m.record_credits_used("openai", "gpt-4o", v, 1.0),  # type: ignore[arg-type]
           secret=True),
    Helper("track_database_query", "table", "database_queries_total",
           lambda m, v: _with(m.track_database_query(v, "select"))),  # type: ignore[arg-type]
    Helper("track_database_query", "operation", "database_queries_total",
           lambda m, v: _with(m.track_database_query("users", v))),  # type: ignore[arg-type]
    Helper("record_cache_hit", "cache_name", "cache_hits_total",
           lambda m, v: m.record_cache_hit(v)),  # type: ignore[arg-type]
    Helper("record_cache_miss", "cache_name", "cache_misses_total",
           lambda m, v: m.record_cache_miss(v)),  # type: ignore[arg-type]
    Helper("record_rate_limited", "limit_type", "rate_limited_requests_total",
           lambda m, v: m.record_rate_limited(v)),  # type: ignore[arg-type]
    Helper("record_api_key_usage", "api_key_id", "api_key_usage_total",
           lambda m, v: m.record_api_key_usage(v, "valid"),  # type: ignore[arg-type]
           secret=True),
    Helper("record_api_key_usage", "status", "api_key_usage_total",
           lambda m, v: m.record_api_key_usage("key_1", v)),  # type: ignore[arg-type]
    Helper("set_cache_size", "cache_name", "cache_size_bytes",
           lambda m, v: m.set_cache_size(v, 1)),  # type: ignore[arg-type]
    Helper("set_rate_limit_remaining", "limit_type", "current_rate_limit",
           lambda m, v: m.set_rate_limit_remaining(v, 1)),  # type: ignore[arg-type]
    Helper("set_provider_health", "provider", "provider_availability",
           lambda m, v: m.set_provider_health(v, available=True)),  # type: ignore[arg-type]
    Helper("set_user_credit_balance", "user_id", "user_credit_balance",
           lambda m, v: m.set_user_credit_balance(v, 1),  # type: ignore[arg-type]
           secret=True),
    Helper("set_trial_active", "status", "trial_active",
           lambda m, v: m.set_trial_active(v, 1)),  # type: ignore[arg-type]
    Helper("set_subscription_count", "plan", "subscription_count",
           lambda m, v: m.set_subscription_count(v, 1)),  # type: ignore[arg-type]
    Helper("set_active_connections", "connection_type", "active_connections",
           lambda m, v: m.set_active_connections(v, 1)),  # type: ignore[arg-type]
    Helper("set_queue_size", "queue", "queue_size",
           lambda m, v: m.set_queue_size(v, 1)),  # type: ignore[arg-type]
    Helper("register_gauge_callback", "queue", "queue_size", _callback("queue_size")),
    Helper("register_gauge_callback", "user_id", "user_credit_balance",
           _callback("user_credit_balance"), secret=True),
    Helper("register_gauge_callback", "provider", "provider_availability",
           _callback("provider_availability")),
    Helper("track_http_request", "endpoint", "http_requests_total",
           lambda m, v: _with(m.track_http_request("GET", v))),  # type: ignore[arg-type]
    Helper("track_http_request", "method", "http_requests_total",
           lambda m, v: _with(m.track_http_request(v, "/v1/chat"))),  # type: ignore[arg-type]
]  # fmt: skip
HELPER_IDS = [f"{h.name}:{h.argument}" for h in HELPERS]


def documented(helper: Helper, value: str) -> str:
    """The label value the package documents for `value` (its own cleaning function)."""
    detector = looks_like_secret if helper.secret else None
    cleaned = clean_label(helper.argument, value, required=True, secret_detector=detector)
    if helper.argument == "method":
        return STANDARD_METHODS.get(cleaned.upper(), OTHER_METHOD)
    return cleaned


async def served(registry: CollectorRegistry, accept: bytes = b"") -> bytes:
    """What `MetricsApp` answers a scrape with (its own fast renderer for the text format)."""
    send = RecordingSend()
    headers = [(b"accept", accept)] if accept else []
    await MetricsApp(registry)(http_scope("/metrics", headers=headers), ScriptedReceive(), send)
    assert send.status == 200, send.body
    return send.body


def read_back(
    registry: CollectorRegistry, helper: Helper, loop: asyncio.AbstractEventLoop
) -> tuple[set[str], set[str]]:
    """The values of the helper's label in the text and OpenMetrics expositions served."""
    label = helper.argument
    text = loop.run_until_complete(served(registry))
    if helper.name != "register_gauge_callback":  # a callback's faults count on each render
        assert text == generate_latest(registry), "the fast renderer must match prometheus_client"
    openmetrics = loop.run_until_complete(served(registry, OPENMETRICS))
    return (
        {
            s.labels[label]
            for family in text_string_to_metric_families(text.decode("utf-8"))
            for s in family.samples
            if s.name == helper.family
        },
        {
            s.labels[label]
            for family in parse_openmetrics(openmetrics.decode("utf-8"))  # type: ignore[no-untyped-call]
            for s in family.samples
            if s.name == helper.family
        },
    )


def check_independently(helper: Helper, value: str, label: str) -> None:
    """What holds of a label value without asking the package's cleaning function."""
    assert len(label) <= MAX_LABEL_LENGTH
    if helper.argument == "method":
        assert label in {*STANDARD_METHODS, OTHER_METHOD}
        return
    if helper.secret and FINGERPRINT.fullmatch(label) and label != value:
        return  # fingerprinted as a credential: nothing of the value is left
    clean = SURROGATE.sub("?", value)
    if len(value) <= MAX_LABEL_LENGTH:
        assert label == clean
        if not SURROGATE.search(value):
            assert label == value, "a short value without surrogates must round-trip exactly"
    else:
        assert SUFFIX.search(label), label
        kept = label[: -len("~sha256:0123456789ab")]
        assert clean.startswith(kept)
        assert len(label) == MAX_LABEL_LENGTH


def test_any_label_value_reads_back_as_documented(
    loop: asyncio.AbstractEventLoop, record_property: Callable[[str, object], None]
) -> None:
    """Every string-label helper, any value: the text and OpenMetrics expositions parse back
    to the documented value (capped at 128 with a fingerprint suffix), and two distinct
    values stay two distinct series."""
    tried: list[tuple[Helper, str]] = []
    examples = 0

    @settings(
        max_examples=LABEL_EXAMPLES,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,  # the event loop is meant to be shared
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )
    @given(st.sampled_from(HELPERS), label_values, label_values)
    def check(helper: Helper, value: str, other: str) -> None:
        nonlocal examples
        examples += 1
        registry = CollectorRegistry()
        metrics = GatewayMetrics(registry)
        if not value.strip():
            if helper.name == "register_gauge_callback":
                # A callback's values are checked at scrape time: dropped and counted.
                helper.call(metrics, value)
                assert read_back(registry, helper, loop) == (set(), set())
                errors = {"component": f"callback:{helper.family}"}
                # At least once per exposition rendered (reading the counter collects too).
                assert (registry.get_sample_value(INTERNAL_ERRORS, errors) or 0) >= 2
            else:
                with pytest.raises(ValueError, match=helper.argument):
                    helper.call(metrics, value)
            return
        tried.append((helper, value))
        helper.call(metrics, value)
        expected = documented(helper, value)
        text_values, openmetrics_values = read_back(registry, helper, loop)
        assert text_values == openmetrics_values == {expected}
        check_independently(helper, value, expected)

        if not other.strip() or other == value or helper.argument == "method":
            return
        # Two values on one registry: two series (a callback gives both at once).
        registry = CollectorRegistry()
        metrics = GatewayMetrics(registry)
        if helper.name == "register_gauge_callback":
            family = helper.family
            metrics.register_gauge_callback(family, lambda: {value: 1, other: 1})
        else:
            helper.call(metrics, value)
            helper.call(metrics, other)
        both = {expected, documented(helper, other)}
        assert read_back(registry, helper, loop) == (both, both)
        if not SURROGATE.search(value + other):
            assert len(both) == 2, "distinct values must stay distinct"

    check()
    blank = examples - len(tried)
    report("label_values", examples, record_property, f" ({blank} blank values refused)")
    assert len(tried) >= LABEL_EXAMPLES // 2


LINT_OF_A_DOCUMENTED_NAME = (
    'subscription_count non-histogram and non-summary metrics should not have "_count" suffix'
)
"""promtool's only finding on the domain metrics: a name kept from the source document."""


@pytest.mark.prometheus
def test_promtool_accepts_an_exposition_of_generated_label_values(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """One exposition holding the nasty characters one by one and a few hundred generated
    values, through every helper: `promtool check metrics` finds nothing wrong with it."""
    promtool = require_binary("promtool")
    values: list[tuple[Helper, str]] = [
        (helper, f"nasty{char}value") for char in NASTY for helper in HELPERS
    ]

    @settings(max_examples=PROMTOOL_EXAMPLES, deadline=None)
    @given(st.sampled_from(HELPERS), label_values)
    def collect(helper: Helper, value: str) -> None:
        if value.strip():
            values.append((helper, value))

    collect()
    fixed = len(NASTY) * len(HELPERS)
    report("promtool_batch", len(values) - fixed, record_property, f" (+{fixed} fixed values)")
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, label_caps=HUGE_CAPS)
    callbacks: dict[str, dict[str, float]] = {}
    for helper, value in values:
        if helper.name == "register_gauge_callback":
            callbacks.setdefault(helper.family, {})[value] = 1
        else:
            helper.call(metrics, value)
    for family, fed in callbacks.items():
        metrics.register_gauge_callback(family, lambda fed=fed: fed)  # type: ignore[misc]
    exposition = generate_latest(registry)
    path = tmp_path / "generated.prom"
    path.write_bytes(exposition)
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).decode("utf-8", "replace")
    problems = [line for line in output.splitlines() if line.strip()]
    assert problems == [LINT_OF_A_DOCUMENTED_NAME], path
    series = sum(
        len(family.samples) for family in text_string_to_metric_families(exposition.decode("utf-8"))
    )
    assert series >= len({value for _, value in values}) // 2


def test_huge_label_values_are_not_kept_in_memory() -> None:
    """32 distinct 1 MB values through helpers that cache their label children: once the
    caller drops them, the package holds on to none of them (they became 128-character
    labels), so hostile input cannot pin gigabytes under the label caps."""
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(32):
            value = f"{n:04d}" + "m" * (1 << 20)
            metrics.record_cache_hit(value)
            metrics.record_tokens_used("openai", value, 1, 1)
            _with(metrics.track_database_query(value, "select"))
            metrics.set_queue_size(value, 1)
        del value
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 4 << 20, f"{kept / (1 << 20):.0f} MB kept"
    hits = [s for f in registry.collect() for s in f.samples if s.name == "cache_hits_total"]
    assert len(hits) == 32
    assert all(len(s.labels["cache_name"]) == MAX_LABEL_LENGTH for s in hits)


# --- 8. malformed ASGI input ---------------------------------------------------------------


class ScriptError(Exception):
    """What a scripted application raises."""


class ScriptBaseError(BaseException):
    """A BaseException that is not an Exception, raised by a scripted application."""


RAISES: list[Callable[[], BaseException]] = [
    lambda: ScriptError("scripted"),
    lambda: ValueError("scripted"),
    lambda: KeyError("scripted"),
    lambda: asyncio.CancelledError(),
    lambda: ScriptBaseError("scripted"),
    lambda: KeyboardInterrupt(),
    lambda: SystemExit(3),
]
if sys.version_info >= (3, 11):
    RAISES.append(lambda: ExceptionGroup("scripted", [ValueError("a"), KeyError("b")]))  # noqa: F821

odd = st.one_of(
    st.none(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.booleans(),
    st.binary(max_size=8),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
"""Values of a type nobody expects."""

paths = st.one_of(
    st.sampled_from(["/", "/x", "/api/x", "/api", "", "x", "//", "/%ff", "/x/", "/\x00"]),
    st.text(max_size=12).map(lambda text: "/" + text),
    odd,
).filter(lambda path: not (isinstance(path, str) and path.startswith("/metrics")))
"""Request paths, well formed or not; never the metrics path, which the middleware answers."""

SCOPE_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "type": st.one_of(
        st.sampled_from(["http", "http", "http", "websocket", "lifespan", "HTTP"]), odd
    ),
    "method": st.one_of(st.sampled_from(["GET", "HEAD", "POST", "get", "BREW", ""]), odd),
    "path": paths,
    "raw_path": st.one_of(st.binary(max_size=8), odd),
    "root_path": st.one_of(st.sampled_from(["", "/api", "/api/", "/x"]), odd),
    "query_string": st.one_of(st.binary(max_size=8), odd),
    "headers": st.one_of(
        st.lists(st.tuples(st.binary(max_size=6), st.binary(max_size=6)), max_size=3),
        st.lists(st.tuples(st.text(max_size=4), st.text(max_size=4)), max_size=2),
        odd,
    ),
    "http_version": st.one_of(st.sampled_from(["1.0", "1.1", "2", "3", "0.9", "2.0"]), odd),
    "scheme": st.one_of(st.sampled_from(["http", "https", "ws"]), odd),
    "asgi": st.one_of(
        st.just({"version": "3.0"}),
        st.just({"version": "3.0", "spec_version": "2.4"}),
        st.just({}),
        odd,
    ),
    "client": st.one_of(st.just(("127.0.0.1", 1234)), odd),
    "server": st.one_of(st.just(("127.0.0.1", 80)), odd),
    "state": st.one_of(st.just({}), odd),
    "route": odd,
    "extensions": st.one_of(st.just({"http.response.trailers": {}}), odd),
}


@st.composite
def scopes(draw: st.DrawFn) -> dict[str, Any]:
    """A scope with any subset of the keys, each with a usual or an unusual value."""
    keys = draw(st.sets(st.sampled_from(sorted(SCOPE_VALUES))))
    scope = {key: draw(SCOPE_VALUES[key]) for key in sorted(keys)}
    if draw(st.integers(0, 3)) == 0:
        scope["type"] = "http"  # keep many scopes on the measured path
    return scope


body_values = st.one_of(st.binary(max_size=16), st.just(b""), odd)
messages = st.one_of(
    st.builds(
        lambda status, headers: {
            "type": "http.response.start",
            "status": status,
            "headers": headers,
        },
        st.one_of(st.sampled_from([200, 204, 404, 500, 101, 599]), odd),
        st.one_of(st.just([]), st.just([(b"content-type", b"text/plain")]), odd),
    ),
    st.builds(
        lambda body, more: {"type": "http.response.body", "body": body, "more_body": more},
        body_values,
        st.one_of(st.booleans(), odd),
    ),
    st.builds(lambda body: {"type": "http.response.body", "body": body}, body_values),
    st.just({"type": "http.response.start"}),
    st.just({"type": "http.response.body"}),
    st.just({"type": "http.response.pathsend", "path": "/dev/null"}),
    st.just({"type": "http.response.trailers", "headers": [], "more_trailers": False}),
    st.just({"type": "http.response.zerocopysend"}),
    st.just({"status": 200}),
    st.dictionaries(st.sampled_from(["type", "status", "body"]), odd, max_size=3),
    odd,
)
"""What an application sends: proper messages, messages with odd fields, and garbage."""

received = st.one_of(
    st.builds(
        lambda body, more: {"type": "http.request", "body": body, "more_body": more},
        body_values,
        st.one_of(st.booleans(), odd),
    ),
    st.just({"type": "http.disconnect"}),
    st.just({"type": "websocket.connect"}),
    st.dictionaries(st.sampled_from(["type", "body"]), odd, max_size=2),
    odd,
)
"""What a server hands `receive()` callers: proper messages and garbage."""

steps = st.lists(
    st.one_of(
        st.tuples(st.just("send"), messages),
        st.tuples(st.just("receive"), st.none()),
        st.tuples(st.just("raise"), st.sampled_from(range(len(RAISES)))),
        st.tuples(st.just("read-scope"), st.sampled_from(sorted(SCOPE_VALUES))),
    ),
    max_size=6,
)
"""An application's script: send, receive, raise, or read a scope key (and fail if absent)."""


@dataclass
class Run:
    """What one run of an application did, as the server saw it."""

    raised: BaseException | None
    sent: list[Any]
    got: list[Any]


def scripted_app(script: list[tuple[str, Any]]) -> Callable[..., Any]:
    """An ASGI application that does exactly what `script` says."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        for action, argument in script:
            if action == "send":
                await send(argument)
            elif action == "receive":
                await receive()
            elif action == "read-scope":
                scope[argument]  # a missing key raises KeyError, as apps do
            else:
                raise RAISES[argument]()

    return app


async def run(
    app: Callable[..., Any], scope: dict[str, Any], inbox: list[Any], strict: bool
) -> Run:
    """Run `app` as a server would: `receive` hands out `inbox`, then `http.disconnect`;
    a strict `send` refuses what uvicorn refuses (no start first, anything after the end)."""
    sent: list[Any] = []
    got: list[Any] = []
    pending = list(inbox)
    state = {"started": False, "done": False}

    async def receive() -> Any:
        message = pending.pop(0) if pending else {"type": "http.disconnect"}
        got.append(message)
        return message

    async def send(message: Any) -> None:
        sent.append(message)
        if not strict:
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if state["done"]:
            raise RuntimeError("response already completed")
        if not state["started"]:
            if kind != "http.response.start":
                raise RuntimeError(f"expected http.response.start, got {kind!r}")
            state["started"] = True
        elif kind == "http.response.body" and not message.get("more_body", False):
            state["done"] = True

    try:
        await app(dict(scope), receive, send)
    except BaseException as exc:  # the outcome is compared, whatever it is
        return Run(exc, sent, got)
    return Run(None, sent, got)


def metrics_root() -> Starlette:
    """An application root with a mounted `MetricsApp`, so that served prefixes exist."""
    return Starlette(routes=[Mount("/metrics", MetricsApp(CollectorRegistry()))])


def test_malformed_asgi_input_never_makes_the_middleware_raise(
    loop: asyncio.AbstractEventLoop, record_property: Callable[[str, object], None]
) -> None:
    """Scopes with missing keys or values of the wrong type, garbage messages in both
    directions, any message order, any exception: the wrapped app raises exactly when the
    bare one does, the same exception, and the server sees the same messages."""
    tried = 0

    @settings(
        max_examples=ASGI_EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        scope=scopes(),
        script=steps,
        inbox=st.lists(received, max_size=3),
        strict=st.booleans(),
        config=st.sampled_from(["default", "excluded", "mounted", "resolver"]),
    )
    def check(
        scope: dict[str, Any], script: list[Any], inbox: list[Any], strict: bool, config: str
    ) -> None:
        nonlocal tried
        tried += 1
        registry = CollectorRegistry()
        app = scripted_app(script)
        options: dict[str, Any] = {}
        if config == "excluded":
            options["exclude_paths"] = ["/x", re.compile(r"/api/.*")]
        elif config == "resolver":
            options["route_resolver"] = lambda scope: scope.get("path")
        if config == "mounted":
            scope = {**scope, "app": metrics_root()}
        wrapped = PrometheusMiddleware(app, registry=registry, **options)

        bare = loop.run_until_complete(run(app, scope, inbox, strict))
        measured = loop.run_until_complete(run(wrapped, scope, inbox, strict))

        if bare.raised is None:
            assert measured.raised is None, f"the middleware raised {measured.raised!r}"
        else:
            assert type(measured.raised) is type(bare.raised)
            assert str(measured.raised) == str(bare.raised)
        assert measured.sent == bare.sent
        assert measured.got == bare.got
        # Whatever happened, nothing is left in progress and nothing is counted twice.
        for family in registry.collect():
            for sample in family.samples:
                if sample.name == "http_requests_in_progress":
                    assert sample.value == 0
        total = sum(
            sample.value
            for family in registry.collect()
            for sample in family.samples
            if sample.name == "http_requests_total"
        )
        assert total <= 1

    check()
    report("malformed_asgi", tried, record_property)
