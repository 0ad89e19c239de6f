"""Domain metrics of an AI gateway: inference, tokens, credits, database, cache, rate
limits, provider health, API keys, billing state, connections and queues.

`GatewayMetrics(registry)` holds every family of one registry and records them; the
module-level functions of the same names act on a lazily created default instance in
prometheus_client's default registry. Every user-supplied label value is cleaned
(`_labels.clean_label`), fingerprinted when it looks like a secret (`user_id`,
`api_key_id`) and capped (`BoundedLabel`) before it becomes a series.
"""

from __future__ import annotations

import logging
import math
import operator
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from gatewayz_metrics._cardinality import OVERFLOW_VALUE, BoundedLabel
from gatewayz_metrics._http import (
    OTHER_METHOD,
    STANDARD_METHODS,
    HTTPMetrics,
    check_buckets,
    request_measured,
)
from gatewayz_metrics._internal import report_internal_error
from gatewayz_metrics._labels import MAX_LABEL_LENGTH, clean_label
from gatewayz_metrics._registry import get_or_create, resolve_registry
from gatewayz_metrics._secrets import SecretDetector, looks_like_secret
from gatewayz_metrics._tracking import OUTCOMES, SUCCESS, Tracker, outcome_of

if TYPE_CHECKING:
    from gatewayz_metrics._gateway import GatewayFamilies, Pricing

T = TypeVar("T")

logger = logging.getLogger("gatewayz_metrics")

# --- defaults ------------------------------------------------------------------------

DEFAULT_INFERENCE_DURATION_BUCKETS: tuple[float, ...] = (
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0, 300.0, 600.0,
)  # fmt: skip
"""Whole inference call (seconds): cached answers to ten-minute reasoning runs."""

DEFAULT_TIME_TO_FIRST_TOKEN_BUCKETS: tuple[float, ...] = (
    0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
"""Time to first token (seconds): reasoning models think for minutes before the first
token; the OpenTelemetry and vLLM ceilings (10 s) hide exactly those."""

DEFAULT_TIME_PER_OUTPUT_TOKEN_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip
"""Time per output token after the first (seconds): 1 ms (batched fast models) to 2.5 s."""

DEFAULT_DATABASE_QUERY_DURATION_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
"""Database query duration (seconds): sub-millisecond lookups to 30 s reports."""

DEFAULT_LABEL_CAPS: Mapping[str, int] = MappingProxyType(
    {
        "provider": 50,
        "model": 200,
        "user_id": 1000,
        "api_key_id": 1000,
        "table": 100,
        "operation": 100,
        "cache_name": 100,
        "limit_type": 100,
        "status": 100,
        "plan": 100,
        "connection_type": 100,
        "queue": 100,
    }
)
"""Distinct values each user-supplied label admits per metric before folding into
`__other__`. `status` is the free-text status of `api_key_usage_total` and
`trial_active`; the `endpoint` cap belongs to the HTTP metrics (`DEFAULT_MAX_ENDPOINTS`)."""

INFERENCE_STATUSES: tuple[str, ...] = OUTCOMES
"""The values of `model_inference_requests_total{status}`."""

GaugeCallback = Callable[[], Mapping[str, float]]
"""Returns the current value per label value of a one-label gauge family."""

_MAX_CACHED_CHILDREN = 4096
_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logger.warning("gatewayz-metrics: %s", message)


# --- input checks: cheap on the hot path, precise in their messages -----------------


def _count(argument: str, value: object) -> int:
    """A non-negative integer (bools and floats rejected), or a precise error."""
    if type(value) is int and value >= 0:
        return value
    if isinstance(value, bool):
        raise TypeError(f"{argument} must be an int, got bool {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{argument} must be an int, got {type(value).__name__} {value!r}"
        ) from None
    if number < 0:
        raise ValueError(f"{argument} must be >= 0, got {value!r}")
    return number


def _number(
    argument: str,
    value: object,
    *,
    minimum: float | None = 0.0,
    maximum: float | None = None,
) -> float:
    """A finite real number within [minimum, maximum], or a precise error."""
    if type(value) is float or type(value) is int:
        number = float(value)
    elif isinstance(value, (bool, str, bytes)):
        raise TypeError(f"{argument} must be a number, got {type(value).__name__} {value!r}")
    else:
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise TypeError(
                f"{argument} must be a number, got {type(value).__name__} {value!r}"
            ) from None
    if not math.isfinite(number):
        raise ValueError(f"{argument} must be finite, got {value!r}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{argument} must be >= {minimum:g}, got {value!r}")
    if maximum is not None and number > maximum:
        raise ValueError(f"{argument} must be <= {maximum:g}, got {value!r}")
    return number


def _availability(argument: str, value: object) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    number = _number(argument, value, minimum=None)
    if number not in (0.0, 1.0):
        raise ValueError(f"{argument} must be 0 or 1 (or a bool), got {value!r}")
    return number


def _status_code(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"status_code must be an int, got {type(value).__name__} {value!r}")
    if not 100 <= value <= 599:
        raise ValueError(f"status_code must be an HTTP status between 100 and 599, got {value!r}")
    return int(value)


def _buckets(name: str, value: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if value is None else check_buckets(name, value)


# --- label resolution ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Label:
    """How one user-supplied label is cleaned and capped within one metric group."""

    argument: str
    bound: BoundedLabel
    detector: SecretDetector | None

    def clean(self, value: object) -> str:
        return clean_label(self.argument, value, required=True, secret_detector=self.detector)


def _resolve(labels: Sequence[_Label], values: Sequence[object]) -> tuple[list[str], bool]:
    """Clean every value first (so bad input changes nothing), then cap each.

    Returns the label values to use and whether any of them was folded.
    """
    cleaned = [label.clean(value) for label, value in zip(labels, values, strict=True)]
    bounded = [label.bound(value) for label, value in zip(labels, cleaned, strict=True)]
    folded = any(
        b == OVERFLOW_VALUE and c != OVERFLOW_VALUE for b, c in zip(bounded, cleaned, strict=True)
    )
    return bounded, folded


class _ChildCache(Generic[T]):
    """Raw caller values -> what they resolve to, so repeat calls skip all checks.

    Folded values are not cached: each of their observations must reach the
    `BoundedLabel`, which counts it in `gatewayz_metrics_label_overflow_total`. Nor are
    values longer than a label can be: the cache would keep the caller's whole string
    (megabytes, if hostile) to save one hash of it.
    """

    __slots__ = ("_entries", "_resolve")

    def __init__(self, resolve: Callable[..., tuple[T, bool]]) -> None:
        self._entries: dict[tuple[object, ...], T] = {}
        self._resolve = resolve

    def get(self, key: tuple[object, ...]) -> T:
        try:
            return self._entries[key]
        except (KeyError, TypeError):  # TypeError: unhashable input, rejected below
            pass
        value, folded = self._resolve(*key)
        if not folded and not any(
            type(part) is str and len(part) > MAX_LABEL_LENGTH for part in key
        ):
            if len(self._entries) >= _MAX_CACHED_CHILDREN:
                self._entries.clear()
            self._entries[key] = value
        return value


# --- gauges that a scrape-time callback can feed -------------------------------------


@dataclass(frozen=True, slots=True)
class _GaugeSpec:
    name: str
    label: str
    documentation: str
    multiprocess_mode: Literal["livesum", "mostrecent"]
    check: Callable[[str, object], float]
    additive: bool = True
    """Whether values of several label values may be summed (into `__other__`)."""
    allowed: tuple[str, ...] = ()
    """A closed set of label values; empty for free text (capped)."""


def _fraction(argument: str, value: object) -> float:
    return _number(argument, value, maximum=1.0)


def _signed(argument: str, value: object) -> float:
    return _number(argument, value, minimum=None)


# Per-process quantities are summed over live processes (livesum); shared state
# is whatever was set last, by any process (mostrecent).
_GAUGES: tuple[_GaugeSpec, ...] = (
    _GaugeSpec(
        "cache_size_bytes",
        "cache_name",
        "Size of a cache in bytes, summed over live processes.",
        "livesum",
        _count,
    ),
    _GaugeSpec(
        "current_rate_limit",
        "limit_type",
        "Requests remaining in the current rate-limit window, as last set.",
        "mostrecent",
        _number,
    ),
    _GaugeSpec(
        "provider_availability",
        "provider",
        "Whether a provider is available (1) or not (0), as last set.",
        "mostrecent",
        _availability,
        additive=False,
    ),
    _GaugeSpec(
        "provider_error_rate",
        "provider",
        "Error ratio (0-1) of a provider as last set; prefer the rate() of "
        "model_inference_requests_total by status.",
        "mostrecent",
        _fraction,
        additive=False,
    ),
    _GaugeSpec(
        "provider_response_time_seconds",
        "provider",
        "Response time of a provider as last set.",
        "mostrecent",
        _number,
        additive=False,
    ),
    _GaugeSpec(
        "active_api_keys",
        "status",
        "API keys by status (active, inactive).",
        "mostrecent",
        _count,
        allowed=("active", "inactive"),
    ),
    _GaugeSpec(
        "user_credit_balance",
        "user_id",
        "Credit balance of a user; secret-looking ids appear as sha256: fingerprints.",
        "mostrecent",
        _signed,
    ),
    _GaugeSpec("trial_active", "status", "Trials by status.", "mostrecent", _count),
    _GaugeSpec("subscription_count", "plan", "Active subscriptions by plan.", "mostrecent", _count),
    _GaugeSpec(
        "active_connections",
        "connection_type",
        "Open connections by type (db, redis, provider), summed over live processes.",
        "livesum",
        _count,
    ),
    _GaugeSpec(
        "queue_size",
        "queue",
        "Items waiting in a queue, summed over live processes.",
        "livesum",
        _count,
    ),
)

GAUGE_FAMILIES: tuple[str, ...] = tuple(spec.name for spec in _GAUGES)
"""Gauge families that accept a scrape-time callback (`register_gauge_callback`)."""


class _GaugeFamily:
    """One single-label gauge family: set by helpers, or fed by a callback at scrape time.

    It is a custom collector around an unregistered `Gauge`, so that a callback can
    replace the set values without a second family of the same name in the exposition.
    The inner gauge keeps its multiprocess mode: in multiprocess mode its values reach
    the `MultiProcessCollector` as usual.
    """

    def __init__(self, spec: _GaugeSpec, label: _Label | None, registry: CollectorRegistry) -> None:
        self.name = spec.name
        self.documentation = spec.documentation
        self.label = label
        self.label_name = spec.label
        self.check = spec.check
        self.additive = spec.additive
        self.allowed = spec.allowed
        self.registry = registry
        self.callback: GaugeCallback | None = None
        self.gauge = Gauge(
            spec.name,
            spec.documentation,
            [spec.label],
            multiprocess_mode=spec.multiprocess_mode,
            registry=None,
        )
        self.children: _ChildCache[Gauge | None] = _ChildCache(self._resolve_child)

    def _clean(self, value: object) -> tuple[str, bool]:
        if self.label is None:
            text = clean_label(self.label_name, value, required=True)
            if text not in self.allowed:
                raise ValueError(f"{self.label_name} must be one of {self.allowed}, got {text!r}")
            return text, False
        bounded, folded = _resolve((self.label,), (value,))
        return bounded[0], folded

    def _resolve_child(self, value: object) -> tuple[Gauge | None, bool]:
        text, folded = self._clean(value)
        # A set value has no meaningful fold (the last writer would masquerade as the
        # whole overflow), so a folded `set` is dropped; the overflow counter shows it.
        return (None if folded else self.gauge.labels(text)), folded

    def set(self, label_value: object, value: float) -> None:
        child = self.children.get((label_value,))
        if child is not None:
            child.set(value)

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.name, self.documentation, labels=[self.label_name])]

    def collect(self) -> Iterator[Metric]:
        callback = self.callback
        if callback is None:
            yield from self.gauge.collect()
            return
        family = GaugeMetricFamily(self.name, self.documentation, labels=[self.label_name])
        try:
            values = dict(callback())
        except Exception as exc:
            # A failing callback must not fail the whole scrape: the family goes empty
            # (visible as absent series) and the fault is counted.
            report_internal_error(self.registry, f"callback:{self.name}", exc)
            yield family
            return
        totals: dict[str, float] = {}
        for raw, raw_value in values.items():
            try:
                text, folded = self._clean(raw)
                value = self.check(f"the value of a {self.name} callback", raw_value)
            except (TypeError, ValueError) as exc:
                report_internal_error(self.registry, f"callback:{self.name}", exc)
                continue
            if folded and not self.additive:
                continue
            totals[text] = totals.get(text, 0.0) + value
        for text, value in totals.items():
            family.add_metric([text], value)
        yield family


# --- the metric objects of one registry ----------------------------------------------


@dataclass(frozen=True, slots=True)
class _Config:
    inference_duration_buckets: tuple[float, ...]
    time_to_first_token_buckets: tuple[float, ...]
    time_per_output_token_buckets: tuple[float, ...]
    database_query_duration_buckets: tuple[float, ...]
    label_caps: Mapping[str, int]
    secret_detector: SecretDetector


class _Slot:
    """Where the families of one registry live once built."""

    __slots__ = ("families",)

    def __init__(self) -> None:
        self.families: _Families | None = None


# Building the families creates other per-registry objects (the shared overflow counter)
# through `get_or_create`, which holds its lock while a factory runs: so `get_or_create`
# only hands out an empty slot, and the families are built under a lock of our own.
_create_lock = threading.Lock()


def _families_of(registry: CollectorRegistry, create: Callable[[], _Families]) -> _Families:
    slot = get_or_create(registry, "domain", _Slot)
    families = slot.families
    if families is None:
        with _create_lock:
            families = slot.families
            if families is None:
                families = slot.families = create()
    return families


class _InferenceSeries:
    """The bound children of one (provider, model) in the inference families."""

    __slots__ = ("duration", "requests", "tpot", "ttft")

    def __init__(self, families: _Families, provider: str, model: str) -> None:
        self.requests = {
            status: families.inference_requests.labels(provider, model, status)
            for status in INFERENCE_STATUSES
        }
        self.duration = families.inference_duration.labels(provider, model)
        self.ttft = families.time_to_first_token.labels(provider, model)
        self.tpot = families.time_per_output_token.labels(provider, model)


class _Families:
    """Every domain family of one registry, registered once (see `get_or_create`)."""

    def __init__(self, registry: CollectorRegistry, config: _Config) -> None:
        self.registry = registry
        self.config = config
        self.detector = self._safe_detector(config.secret_detector)
        caps = config.label_caps

        def label(metric: str, argument: str, *, secret: bool = False) -> _Label:
            return _Label(
                argument,
                BoundedLabel(registry, metric, argument, caps[argument]),
                self.detector if secret else None,
            )

        # Families recorded by one helper share one cap per label, so their series
        # line up (requests, duration, TTFT and TPOT of a model fold together).
        self.inference_labels = (
            label("model_inference_requests_total", "provider"),
            label("model_inference_requests_total", "model"),
        )
        self.tokens_labels = (
            label("tokens_used_total", "provider"),
            label("tokens_used_total", "model"),
        )
        self.credits_labels = (
            label("credits_used_total", "provider"),
            label("credits_used_total", "model"),
            label("credits_used_total", "user_id", secret=True),
        )
        self.database_labels = (
            label("database_queries_total", "table"),
            label("database_queries_total", "operation"),
        )
        self.cache_hit_labels = (label("cache_hits_total", "cache_name"),)
        self.cache_miss_labels = (label("cache_misses_total", "cache_name"),)
        self.rate_limited_labels = (label("rate_limited_requests_total", "limit_type"),)
        self.api_key_labels = (
            label("api_key_usage_total", "api_key_id", secret=True),
            label("api_key_usage_total", "status"),
        )
        self.inference_requests = Counter(
            "model_inference_requests",
            "Inference calls to upstream providers by outcome "
            "(success, error, timeout, cancelled).",
            ["provider", "model", "status"],
            registry=None,
        )
        self.inference_duration = Histogram(
            "model_inference_duration_seconds",
            "Duration of inference calls, whole stream included, every outcome.",
            ["provider", "model"],
            buckets=config.inference_duration_buckets,
            registry=None,
        )
        self.time_to_first_token = Histogram(
            "model_time_to_first_token_seconds",
            "Time from the start of a streamed inference call to its first token.",
            ["provider", "model"],
            buckets=config.time_to_first_token_buckets,
            registry=None,
        )
        self.time_per_output_token = Histogram(
            "model_time_per_output_token_seconds",
            "Time per output token after the first of successful streamed calls: "
            "(duration - time to first token) / (output tokens - 1).",
            ["provider", "model"],
            buckets=config.time_per_output_token_buckets,
            registry=None,
        )
        self.tokens_used = Counter(
            "tokens_used",
            "Tokens consumed, by token_type (input, output).",
            ["provider", "model", "token_type"],
            registry=None,
        )
        self.credits_used = Counter(
            "credits_used",
            "Credits consumed; secret-looking user ids appear as sha256: fingerprints.",
            ["provider", "model", "user_id"],
            registry=None,
        )
        self.database_queries = Counter(
            "database_queries",
            "Database queries by table and operation, failed ones included.",
            ["table", "operation"],
            registry=None,
        )
        self.database_query_duration = Histogram(
            "database_query_duration_seconds",
            "Database query duration.",
            ["table", "operation"],
            buckets=config.database_query_duration_buckets,
            registry=None,
        )
        self.cache_hits = Counter(
            "cache_hits", "Cache lookups that found a value.", ["cache_name"], registry=None
        )
        self.cache_misses = Counter(
            "cache_misses", "Cache lookups that found nothing.", ["cache_name"], registry=None
        )
        self.rate_limited = Counter(
            "rate_limited_requests",
            "Requests refused by a rate limit.",
            ["limit_type"],
            registry=None,
        )
        self.api_key_usage = Counter(
            "api_key_usage",
            "API key uses by outcome; secret-looking key ids appear as sha256: fingerprints.",
            ["api_key_id", "status"],
            registry=None,
        )

        provider_health = label("provider_availability", "provider")
        self.gauges: dict[str, _GaugeFamily] = {}
        for spec in _GAUGES:
            if spec.allowed:
                bound = None
            elif spec.label == "provider":
                bound = provider_health  # the three health gauges fold together
            else:
                bound = label(spec.name, spec.label, secret=spec.label == "user_id")
            self.gauges[spec.name] = _GaugeFamily(spec, bound, registry)
        # Imported here: the gateway module builds on this one's checks and label types.
        from gatewayz_metrics._gateway import GatewayFamilies

        self.gateway: GatewayFamilies = GatewayFamilies(self)
        self._register_all()

        self.inference: _ChildCache[_InferenceSeries] = _ChildCache(self._inference_series)
        self.tokens: _ChildCache[tuple[Counter, Counter]] = _ChildCache(self._token_children)
        self.credits: _ChildCache[Counter] = _ChildCache(
            self._children(self.credits_used, self.credits_labels)
        )
        self.database: _ChildCache[tuple[Counter, Histogram]] = _ChildCache(self._database)
        self.hits: _ChildCache[Counter] = _ChildCache(
            self._children(self.cache_hits, self.cache_hit_labels)
        )
        self.misses: _ChildCache[Counter] = _ChildCache(
            self._children(self.cache_misses, self.cache_miss_labels)
        )
        self.limited: _ChildCache[Counter] = _ChildCache(
            self._children(self.rate_limited, self.rate_limited_labels)
        )
        self.key_usage: _ChildCache[Counter] = _ChildCache(
            self._children(self.api_key_usage, self.api_key_labels)
        )
        self._http: HTTPMetrics | None = None
        self.http: _ChildCache[_HTTPSeries] = _ChildCache(self._http_series)

    def _register_all(self) -> None:
        collectors: list[Counter | Histogram | _GaugeFamily] = [
            self.inference_requests,
            self.inference_duration,
            self.time_to_first_token,
            self.time_per_output_token,
            self.tokens_used,
            self.credits_used,
            self.database_queries,
            self.database_query_duration,
            self.cache_hits,
            self.cache_misses,
            self.rate_limited,
            self.api_key_usage,
            *self.gauges.values(),
            *self.gateway.collectors,
        ]
        done: list[Counter | Histogram | _GaugeFamily] = []
        try:
            for collector in collectors:
                self.registry.register(collector)
                done.append(collector)
        except ValueError as exc:
            # Leave the registry as we found it, so that fixing the clash and retrying works.
            for collector in done:
                self.registry.unregister(collector)
            raise ValueError(
                f"gatewayz-metrics cannot register its domain metrics: {exc}. Another "
                "metric of the same name is already registered in this registry."
            ) from exc

    def _safe_detector(self, detector: SecretDetector) -> SecretDetector:
        if detector is looks_like_secret:
            return detector
        registry = self.registry

        def guarded(value: str) -> bool:
            try:
                return bool(detector(value))
            except Exception as exc:
                # Fail closed: a value we could not classify is treated as a secret.
                report_internal_error(registry, "secret_detector", exc)
                return True

        return guarded

    @staticmethod
    def _children(metric: Counter, labels: Sequence[_Label]) -> Callable[..., tuple[Counter, bool]]:
        def resolve(*values: object) -> tuple[Counter, bool]:
            bounded, folded = _resolve(labels, values)
            return metric.labels(*bounded), folded

        return resolve

    def _inference_series(self, provider: object, model: object) -> tuple[_InferenceSeries, bool]:
        (p, m), folded = _resolve(self.inference_labels, (provider, model))
        return _InferenceSeries(self, p, m), folded

    def _token_children(
        self, provider: object, model: object
    ) -> tuple[tuple[Counter, Counter], bool]:
        (p, m), folded = _resolve(self.tokens_labels, (provider, model))
        return (
            self.tokens_used.labels(p, m, "input"),
            self.tokens_used.labels(p, m, "output"),
        ), folded

    def _database(self, table: object, operation: object) -> tuple[tuple[Counter, Histogram], bool]:
        (t, o), folded = _resolve(self.database_labels, (table, operation))
        return (
            self.database_queries.labels(t, o),
            self.database_query_duration.labels(t, o),
        ), folded

    def http_metrics(self) -> HTTPMetrics:
        # Fetched on first use, not at construction: the middleware may be configured
        # (buckets, endpoint cap) after the domain metrics exist, and the first
        # creator of the HTTP families fixes their definition.
        http = self._http
        if http is None:
            http = self._http = HTTPMetrics.for_registry(self.registry)
        return http

    def _http_series(self, method: object, endpoint: object) -> tuple[_HTTPSeries, bool]:
        http = self.http_metrics()
        verb = clean_label("method", method, required=True)
        path = clean_label("endpoint", endpoint, required=True)
        bounded = http.endpoint_label(path)
        folded = bounded == OVERFLOW_VALUE and path != OVERFLOW_VALUE
        return _HTTPSeries(http, STANDARD_METHODS.get(verb.upper(), OTHER_METHOD), bounded), folded


class _HTTPSeries:
    """The middleware's bound children of one (method, endpoint): one cache serves both."""

    __slots__ = ("duration", "endpoint", "http", "method")

    def __init__(self, http: HTTPMetrics, method: str, endpoint: str) -> None:
        self.http = http
        self.method = method
        self.endpoint = endpoint
        self.duration = http.bound(method, endpoint).duration

    def requests(self, status_code: int) -> Counter:
        child: Counter = self.http.request_counter(self.method, self.endpoint, str(status_code))
        return child


# --- handles and trackers ------------------------------------------------------------


class InferenceHandle:
    """What `with track_model_inference(...) as call:` gives the block.

    Call `first_token()` when the first token of a stream arrives, `set_usage(...)`
    when the provider reports usage, and `set_status(...)` to override the outcome of
    a block that ends normally (e.g. a 200 response whose body is an error).
    """

    __slots__ = (
        "_duration",
        "_metrics",
        "_model",
        "_output_tokens",
        "_provider",
        "_series",
        "_start",
        "_status",
        "_ttft",
    )

    def __init__(
        self,
        metrics: GatewayMetrics,
        series: _InferenceSeries,
        provider: str,
        model: str,
        start: float,
    ) -> None:
        self._metrics = metrics
        self._series = series
        self._provider = provider
        self._model = model
        self._start = start
        self._ttft: float | None = None
        self._output_tokens: int | None = None
        self._status: str | None = None
        self._duration: float | None = None

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from the start of the call to `first_token()`, if it was called."""
        return self._ttft

    def first_token(self) -> None:
        """Mark the arrival of the first token; observed at once. Later calls are no-ops."""
        if self._ttft is not None:
            return
        if self._duration is not None:
            _warn_once(
                "first_token() after the track_model_inference block ended is ignored; "
                "keep the iteration of the stream inside the block"
            )
            return
        self._ttft = time.perf_counter() - self._start
        self._series.ttft.observe(self._ttft)

    def set_usage(self, *, input_tokens: int, output_tokens: int) -> None:
        """Record the call's tokens (`tokens_used_total`) and, for a stream that
        succeeded, its time per output token. Call it once per block."""
        if self._output_tokens is not None:
            raise RuntimeError("set_usage() was already called for this inference call")
        output = _count("output_tokens", output_tokens)
        self._metrics.record_tokens_used(self._provider, self._model, input_tokens, output)
        self._output_tokens = output
        if self._duration is not None and self._status == SUCCESS:
            self._observe_tpot(self._duration)

    def set_status(self, status: str) -> None:
        """Outcome to record if the block ends without an exception (an escaping
        exception always decides: error, timeout or cancelled)."""
        if status not in INFERENCE_STATUSES:
            raise ValueError(f"status must be one of {INFERENCE_STATUSES}, got {status!r}")
        self._status = status

    def _observe_tpot(self, duration: float) -> None:
        ttft, output = self._ttft, self._output_tokens
        if ttft is not None and output is not None and output > 1:
            self._series.tpot.observe(max(duration - ttft, 0.0) / (output - 1))

    def _finish(self, duration: float, exc: BaseException | None) -> None:
        status = outcome_of(exc) if exc is not None else (self._status or SUCCESS)
        self._status = status
        self._duration = duration
        self._series.requests[status].inc()
        self._series.duration.observe(duration)
        if status == SUCCESS:
            self._observe_tpot(duration)


class _InferenceTracker(Tracker[InferenceHandle]):
    __slots__ = ("_metrics", "_model", "_provider", "_retry", "_series")

    def __init__(
        self, metrics: GatewayMetrics, provider: str, model: str, attempt: int = 1
    ) -> None:
        super().__init__(metrics.registry)
        self._metrics = metrics
        self._provider = provider
        self._model = model
        retry = type(attempt) is not int or attempt != 1
        if retry:
            from gatewayz_metrics._gateway import check_attempt

            check_attempt(attempt)
        # Resolved now, so bad input raises at the call, before anything is measured.
        self._series = metrics._families.inference.get((provider, model))
        self._retry: Counter | None = (
            metrics._families.gateway.retry.get((provider, model)) if retry else None
        )

    def _open(self) -> InferenceHandle:
        return InferenceHandle(
            self._metrics, self._series, self._provider, self._model, self._start
        )

    def _close(self, handle: InferenceHandle, duration: float, exc: BaseException | None) -> None:
        handle._finish(duration, exc)
        if self._retry is not None:
            self._retry.inc()


class HTTPRequestHandle:
    """What `with track_http_request(...) as request:` gives the block."""

    __slots__ = ("_status_code", "measured_by_middleware")

    def __init__(self, measured_by_middleware: bool) -> None:
        self.measured_by_middleware = measured_by_middleware
        """True when the middleware already measures this request: nothing is recorded."""
        self._status_code: int | None = None

    def set_status(self, status_code: int) -> None:
        """The status to record if the block ends without an exception (default 200)."""
        self._status_code = _status_code(status_code)


class _HTTPTracker(Tracker[HTTPRequestHandle]):
    __slots__ = ("_endpoint", "_families", "_method")

    def __init__(self, families: _Families, method: str, endpoint: str) -> None:
        super().__init__(families.registry)
        self._families = families
        clean_label("method", method, required=True)
        clean_label("endpoint", endpoint, required=True)
        self._method = method
        self._endpoint = endpoint

    def _open(self) -> HTTPRequestHandle:
        return HTTPRequestHandle(bool(request_measured.get()))

    def _close(self, handle: HTTPRequestHandle, duration: float, exc: BaseException | None) -> None:
        if handle.measured_by_middleware:
            return
        if exc is None:
            code = handle._status_code or 200
        else:
            # An HTTPException-like error carries the status the client will see.
            carried = getattr(exc, "status_code", None)
            code = 500
            if isinstance(carried, int) and not isinstance(carried, bool) and 100 <= carried <= 599:
                code = int(carried)
        series = self._families.http.get((self._method, self._endpoint))
        series.requests(code).inc()
        series.duration.observe(duration)


class _DatabaseTracker(Tracker[None]):
    __slots__ = ("_children",)

    def __init__(self, families: _Families, table: str, operation: str) -> None:
        super().__init__(families.registry)
        self._children = families.database.get((table, operation))

    def _open(self) -> None:
        return None

    def _close(self, handle: None, duration: float, exc: BaseException | None) -> None:
        count, histogram = self._children
        count.inc()
        histogram.observe(duration)


# --- the public object -----------------------------------------------------------------


class GatewayMetrics:
    """The domain metrics of one registry, and the helpers that record them.

    Several instances on one registry share the same families (and caps, and
    callbacks); an instance asking for a different configuration than the one the
    registry already has raises `ValueError` naming the difference.
    """

    __slots__ = ("_families", "registry")

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        inference_duration_buckets: Sequence[float] | None = None,
        time_to_first_token_buckets: Sequence[float] | None = None,
        time_per_output_token_buckets: Sequence[float] | None = None,
        database_query_duration_buckets: Sequence[float] | None = None,
        label_caps: Mapping[str, int] | None = None,
        secret_detector: SecretDetector | None = None,
    ) -> None:
        self.registry = resolve_registry(registry)
        asked_buckets = {
            "inference_duration_buckets": _buckets(
                "inference_duration_buckets", inference_duration_buckets
            ),
            "time_to_first_token_buckets": _buckets(
                "time_to_first_token_buckets", time_to_first_token_buckets
            ),
            "time_per_output_token_buckets": _buckets(
                "time_per_output_token_buckets", time_per_output_token_buckets
            ),
            "database_query_duration_buckets": _buckets(
                "database_query_duration_buckets", database_query_duration_buckets
            ),
        }
        asked_caps = self._check_caps(label_caps)
        if secret_detector is not None and not callable(secret_detector):
            raise TypeError(f"secret_detector must be callable or None, got {secret_detector!r}")

        def create() -> _Families:
            b = asked_buckets
            config = _Config(
                inference_duration_buckets=b["inference_duration_buckets"]
                or DEFAULT_INFERENCE_DURATION_BUCKETS,
                time_to_first_token_buckets=b["time_to_first_token_buckets"]
                or DEFAULT_TIME_TO_FIRST_TOKEN_BUCKETS,
                time_per_output_token_buckets=b["time_per_output_token_buckets"]
                or DEFAULT_TIME_PER_OUTPUT_TOKEN_BUCKETS,
                database_query_duration_buckets=b["database_query_duration_buckets"]
                or DEFAULT_DATABASE_QUERY_DURATION_BUCKETS,
                label_caps=MappingProxyType({**DEFAULT_LABEL_CAPS, **asked_caps}),
                secret_detector=secret_detector or looks_like_secret,
            )
            return _Families(self.registry, config)

        families = _families_of(self.registry, create)
        have = families.config
        for name, asked in asked_buckets.items():
            if asked is not None and asked != getattr(have, name):
                raise ValueError(
                    f"the domain metrics of this registry already exist with "
                    f"{name}={getattr(have, name)!r}; got {name}={asked!r}. "
                    "Use one definition per registry."
                )
        for key, cap in asked_caps.items():
            if have.label_caps[key] != cap:
                raise ValueError(
                    f"the domain metrics of this registry already exist with "
                    f"label_caps[{key!r}]={have.label_caps[key]}; got {cap}. "
                    "Use one definition per registry."
                )
        if secret_detector is not None and secret_detector is not have.secret_detector:
            raise ValueError(
                "the domain metrics of this registry already exist with "
                f"secret_detector={have.secret_detector!r}; got {secret_detector!r}. "
                "Use one definition per registry."
            )
        self._families = families

    @staticmethod
    def _check_caps(label_caps: Mapping[str, int] | None) -> dict[str, int]:
        if label_caps is None:
            return {}
        if not isinstance(label_caps, Mapping):
            raise TypeError(
                f"label_caps must be a mapping of label name to int, got {label_caps!r}"
            )
        caps: dict[str, int] = {}
        for key, cap in label_caps.items():
            if key not in DEFAULT_LABEL_CAPS:
                raise ValueError(
                    f"label_caps has unknown label {key!r}; known: {sorted(DEFAULT_LABEL_CAPS)}"
                )
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                raise ValueError(f"label_caps[{key!r}] must be a positive int, got {cap!r}")
            caps[key] = cap
        return caps

    @property
    def label_caps(self) -> Mapping[str, int]:
        """The cap on distinct values of each user-supplied label, per metric."""
        return self._families.config.label_caps

    # --- track_* -------------------------------------------------------------------

    def track_http_request(self, method: str, endpoint: str) -> Tracker[HTTPRequestHandle]:
        """Time a request handled outside the middleware: `http_requests_total` and
        `http_request_duration_seconds`. Inside a request the middleware already
        measures, it records nothing, so the request is never counted twice."""
        return _HTTPTracker(self._families, method, endpoint)

    def track_model_inference(
        self, provider: str, model: str, *, attempt: int = 1
    ) -> Tracker[InferenceHandle]:
        """Time an inference call and record its outcome; see `InferenceHandle`.

        `attempt` numbers the upstream calls of one request from 1: every attempt counts
        in `model_inference_requests_total`, and those after the first (retries and
        fallbacks) also in `model_inference_retries_total`."""
        return _InferenceTracker(self, provider, model, attempt)

    def track_database_query(self, table: str, operation: str) -> Tracker[None]:
        """Count and time a database query (failed ones included)."""
        return _DatabaseTracker(self._families, table, operation)

    # --- record_* ------------------------------------------------------------------

    def record_tokens_used(
        self, provider: str, model: str, input_tokens: int, output_tokens: int
    ) -> None:
        """Add to `tokens_used_total{token_type="input"|"output"}`."""
        if not (type(input_tokens) is int and input_tokens >= 0):
            input_tokens = _count("input_tokens", input_tokens)
        if not (type(output_tokens) is int and output_tokens >= 0):
            output_tokens = _count("output_tokens", output_tokens)
        input_child, output_child = self._families.tokens.get((provider, model))
        if input_tokens:
            input_child.inc(input_tokens)
        if output_tokens:
            output_child.inc(output_tokens)
        self._families.gateway.charge_tokens(provider, model, input_tokens, output_tokens)

    def record_credits_used(self, provider: str, model: str, user_id: str, credits: float) -> None:
        """Add to `credits_used_total`; a secret-looking `user_id` is fingerprinted."""
        amount = _number("credits", credits)
        self._families.credits.get((provider, model, user_id)).inc(amount)

    def record_cache_hit(self, cache_name: str) -> None:
        """Add one to `cache_hits_total`."""
        self._families.hits.get((cache_name,)).inc()

    def record_cache_miss(self, cache_name: str) -> None:
        """Add one to `cache_misses_total`."""
        self._families.misses.get((cache_name,)).inc()

    def record_rate_limited(self, limit_type: str) -> None:
        """Add one to `rate_limited_requests_total`."""
        self._families.limited.get((limit_type,)).inc()

    def record_api_key_usage(self, api_key_id: str, status: str) -> None:
        """Add one to `api_key_usage_total`; a secret-looking key id is fingerprinted."""
        self._families.key_usage.get((api_key_id, status)).inc()

    # --- gateway-native: fallbacks, attempts, who refused, cost (see _gateway.py) -----

    def record_fallback(self, from_model: str, to_model: str, reason: str) -> None:
        """Add one to `model_fallbacks_total`; `reason` is one of `FALLBACK_REASONS`."""
        self._families.gateway.record_fallback(from_model, to_model, reason)

    def record_request_attempts(self, model: str, attempts: int) -> None:
        """Observe the upstream attempts (>= 1) one request took, by the model asked for,
        in `gateway_request_attempts`."""
        self._families.gateway.record_request_attempts(model, attempts)

    def record_gateway_rejection(self, scope: str, kind: str) -> None:
        """Add one to `gateway_rejections_total`: a request the gateway's own limit
        refused (`scope` in `REJECTION_SCOPES`, `kind` in `REJECTION_KINDS`)."""
        self._families.gateway.record_gateway_rejection(scope, kind)

    def record_upstream_rate_limited(self, provider: str, model: str) -> None:
        """Add one to `provider_rate_limited_total`: the provider refused a call (429)."""
        self._families.gateway.record_upstream_rate_limited(provider, model)

    def record_provider_cost(
        self, provider: str, model: str, cost: float | None, currency: str = "USD"
    ) -> None:
        """Add `cost` to `provider_cost_total`; `None` (price unknown) adds one to
        `inference_unpriced_total` instead."""
        self._families.gateway.record_provider_cost(provider, model, cost, currency)

    def set_pricing(self, prices: Pricing | None) -> None:
        """Price every `record_tokens_used` (and `set_usage`) from `{(provider, model):
        ModelPrice}` into `provider_cost_total`; calls of a pair without a price count in
        `inference_unpriced_total`. `None` stops pricing. Shared by the registry's instances."""
        from gatewayz_metrics._gateway import check_pricing

        self._families.gateway.pricing = check_pricing(prices)

    # --- set_* ---------------------------------------------------------------------

    def set_cache_size(self, cache_name: str, size_bytes: int) -> None:
        """Set `cache_size_bytes` (this process's share; summed over live processes)."""
        self._families.gauges["cache_size_bytes"].set(cache_name, _count("size_bytes", size_bytes))

    def set_rate_limit_remaining(self, limit_type: str, remaining: float) -> None:
        """Set `current_rate_limit`, the requests left in the current window."""
        self._families.gauges["current_rate_limit"].set(limit_type, _number("remaining", remaining))

    def set_provider_health(
        self,
        provider: str,
        *,
        available: bool | float,
        error_rate: float | None = None,
        response_time: float | None = None,
    ) -> None:
        """Set the provider health gauges (all arguments are checked before any is set).

        These are snapshots of whoever set them last; for the error ratio prefer
        `rate(model_inference_requests_total{status!="success"}[5m])`, which every
        worker contributes to.
        """
        up = _availability("available", available)
        errors = None if error_rate is None else _number("error_rate", error_rate, maximum=1.0)
        seconds = None if response_time is None else _number("response_time", response_time)
        gauges = self._families.gauges
        # The first set validates `provider`, so bad input still changes nothing.
        gauges["provider_availability"].set(provider, up)
        if errors is not None:
            gauges["provider_error_rate"].set(provider, errors)
        if seconds is not None:
            gauges["provider_response_time_seconds"].set(provider, seconds)

    def set_active_api_keys(self, *, active: int, inactive: int) -> None:
        """Set `active_api_keys{status="active"}` and `{status="inactive"}`."""
        on, off = _count("active", active), _count("inactive", inactive)
        family = self._families.gauges["active_api_keys"]
        family.set("active", on)
        family.set("inactive", off)

    def set_user_credit_balance(self, user_id: str, balance: float) -> None:
        """Set `user_credit_balance` (may be negative); a secret-looking id is fingerprinted."""
        self._families.gauges["user_credit_balance"].set(
            user_id, _number("balance", balance, minimum=None)
        )

    def set_trial_active(self, status: str, count: int) -> None:
        """Set `trial_active{status}`."""
        self._families.gauges["trial_active"].set(status, _count("count", count))

    def set_subscription_count(self, plan: str, count: int) -> None:
        """Set `subscription_count{plan}` (name kept from the source document)."""
        self._families.gauges["subscription_count"].set(plan, _count("count", count))

    def set_active_connections(self, connection_type: str, count: int) -> None:
        """Set `active_connections{connection_type}` (summed over live processes)."""
        self._families.gauges["active_connections"].set(connection_type, _count("count", count))

    def set_queue_size(self, queue: str, size: int) -> None:
        """Set `queue_size{queue}` (summed over live processes)."""
        self._families.gauges["queue_size"].set(queue, _count("size", size))

    # --- scrape-time callbacks -------------------------------------------------------

    def register_gauge_callback(self, family: str, callback: GaugeCallback) -> None:
        """Feed gauge `family` at scrape time from `callback() -> {label value: value}`.

        From then on the exposition shows the callback's values for that family, not
        the values set by `set_*`; the label values go through the same cleaning,
        fingerprinting and cap. A callback that raises leaves the family empty for
        that scrape and is counted in `gatewayz_metrics_internal_errors_total`.
        """
        if family not in self._families.gauges:
            raise ValueError(f"family must be one of {GAUGE_FAMILIES}, got {family!r}")
        if not callable(callback):
            raise TypeError(f"callback must be callable, got {callback!r}")
        self._families.gauges[family].callback = callback

    def clear_gauge_callback(self, family: str) -> None:
        """Stop feeding `family` from a callback; the set values show again."""
        if family not in self._families.gauges:
            raise ValueError(f"family must be one of {GAUGE_FAMILIES}, got {family!r}")
        self._families.gauges[family].callback = None


# --- module-level helpers on a default instance ----------------------------------------

_default: GatewayMetrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> GatewayMetrics:
    """The `GatewayMetrics` of prometheus_client's default registry, created on first use."""
    global _default
    metrics = _default
    if metrics is None:
        with _default_lock:
            if _default is None:
                _default = GatewayMetrics()
            metrics = _default
    return metrics


def track_http_request(method: str, endpoint: str) -> Tracker[HTTPRequestHandle]:
    """`GatewayMetrics.track_http_request` on the default registry."""
    return (_default or default_metrics()).track_http_request(method, endpoint)


def track_model_inference(
    provider: str, model: str, *, attempt: int = 1
) -> Tracker[InferenceHandle]:
    """`GatewayMetrics.track_model_inference` on the default registry."""
    return (_default or default_metrics()).track_model_inference(provider, model, attempt=attempt)


def track_database_query(table: str, operation: str) -> Tracker[None]:
    """`GatewayMetrics.track_database_query` on the default registry."""
    return (_default or default_metrics()).track_database_query(table, operation)


def record_tokens_used(provider: str, model: str, input_tokens: int, output_tokens: int) -> None:
    """`GatewayMetrics.record_tokens_used` on the default registry."""
    (_default or default_metrics()).record_tokens_used(provider, model, input_tokens, output_tokens)


def record_credits_used(provider: str, model: str, user_id: str, credits: float) -> None:
    """`GatewayMetrics.record_credits_used` on the default registry."""
    (_default or default_metrics()).record_credits_used(provider, model, user_id, credits)


def record_cache_hit(cache_name: str) -> None:
    """`GatewayMetrics.record_cache_hit` on the default registry."""
    (_default or default_metrics()).record_cache_hit(cache_name)


def record_cache_miss(cache_name: str) -> None:
    """`GatewayMetrics.record_cache_miss` on the default registry."""
    (_default or default_metrics()).record_cache_miss(cache_name)


def record_rate_limited(limit_type: str) -> None:
    """`GatewayMetrics.record_rate_limited` on the default registry."""
    (_default or default_metrics()).record_rate_limited(limit_type)


def record_api_key_usage(api_key_id: str, status: str) -> None:
    """`GatewayMetrics.record_api_key_usage` on the default registry."""
    (_default or default_metrics()).record_api_key_usage(api_key_id, status)


def set_cache_size(cache_name: str, size_bytes: int) -> None:
    """`GatewayMetrics.set_cache_size` on the default registry."""
    (_default or default_metrics()).set_cache_size(cache_name, size_bytes)


def set_rate_limit_remaining(limit_type: str, remaining: float) -> None:
    """`GatewayMetrics.set_rate_limit_remaining` on the default registry."""
    (_default or default_metrics()).set_rate_limit_remaining(limit_type, remaining)


def set_provider_health(
    provider: str,
    *,
    available: bool | float,
    error_rate: float | None = None,
    response_time: float | None = None,
) -> None:
    """`GatewayMetrics.set_provider_health` on the default registry."""
    (_default or default_metrics()).set_provider_health(
        provider, available=available, error_rate=error_rate, response_time=response_time
    )


def set_active_api_keys(*, active: int, inactive: int) -> None:
    """`GatewayMetrics.set_active_api_keys` on the default registry."""
    (_default or default_metrics()).set_active_api_keys(active=active, inactive=inactive)


def set_user_credit_balance(user_id: str, balance: float) -> None:
    """`GatewayMetrics.set_user_credit_balance` on the default registry."""
    (_default or default_metrics()).set_user_credit_balance(user_id, balance)


def set_trial_active(status: str, count: int) -> None:
    """`GatewayMetrics.set_trial_active` on the default registry."""
    (_default or default_metrics()).set_trial_active(status, count)


def set_subscription_count(plan: str, count: int) -> None:
    """`GatewayMetrics.set_subscription_count` on the default registry."""
    (_default or default_metrics()).set_subscription_count(plan, count)


def set_active_connections(connection_type: str, count: int) -> None:
    """`GatewayMetrics.set_active_connections` on the default registry."""
    (_default or default_metrics()).set_active_connections(connection_type, count)


def set_queue_size(queue: str, size: int) -> None:
    """`GatewayMetrics.set_queue_size` on the default registry."""
    (_default or default_metrics()).set_queue_size(queue, size)


def record_fallback(from_model: str, to_model: str, reason: str) -> None:
    """`GatewayMetrics.record_fallback` on the default registry."""
    (_default or default_metrics()).record_fallback(from_model, to_model, reason)


def record_request_attempts(model: str, attempts: int) -> None:
    """`GatewayMetrics.record_request_attempts` on the default registry."""
    (_default or default_metrics()).record_request_attempts(model, attempts)


def record_gateway_rejection(scope: str, kind: str) -> None:
    """`GatewayMetrics.record_gateway_rejection` on the default registry."""
    (_default or default_metrics()).record_gateway_rejection(scope, kind)


def record_upstream_rate_limited(provider: str, model: str) -> None:
    """`GatewayMetrics.record_upstream_rate_limited` on the default registry."""
    (_default or default_metrics()).record_upstream_rate_limited(provider, model)


def record_provider_cost(
    provider: str, model: str, cost: float | None, currency: str = "USD"
) -> None:
    """`GatewayMetrics.record_provider_cost` on the default registry."""
    (_default or default_metrics()).record_provider_cost(provider, model, cost, currency)


def set_pricing(prices: Pricing | None) -> None:
    """`GatewayMetrics.set_pricing` on the default registry."""
    (_default or default_metrics()).set_pricing(prices)
