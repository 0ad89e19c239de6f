"""Domain metrics of an AI gateway: inference, tokens, credits, database, cache, rate
limits, provider health, API keys, billing state, connections and queues.

`GatewayMetrics(registry)` holds every family of one registry and records them; the
module-level functions of the same names act on a lazily created default instance in
prometheus_client's default registry. Every user-supplied label value is cleaned
(`_labels.clean_label`), fingerprinted when it looks like a secret (`user_id`,
`api_key_id`) and capped (`BoundedLabel`) before it becomes a series.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from gatewayz_metrics._cardinality import OVERFLOW_VALUE, BoundedLabel
from gatewayz_metrics._exemplars import (
    ExemplarOption,
    check_exemplar,
    check_option,
    exemplar_for,
)
from gatewayz_metrics._http import (
    HTTPMetrics,
    check_buckets,
    measured_here,
    method_label,
    status_label,
)
from gatewayz_metrics._internal import (
    create_self_metrics,
    log_once,
    logger,
    report_dropped_exemplar,
    report_internal_error,
    report_invalid_value,
)
from gatewayz_metrics._labels import MAX_LABEL_LENGTH, clean_label
from gatewayz_metrics._registry import get_or_create, resolve_registry
from gatewayz_metrics._secrets import SecretDetector, looks_like_secret
from gatewayz_metrics._tracking import OUTCOMES, SUCCESS, Tracker, outcome_of
from gatewayz_metrics._validation import (
    MAX_COUNT,
    InvalidArgumentError,
    InvalidCallError,
    InvalidTypeError,
    InvalidValueError,
    strict_from_env,
)
from gatewayz_metrics._validation import availability as _availability
from gatewayz_metrics._validation import count as _count
from gatewayz_metrics._validation import fraction as _fraction
from gatewayz_metrics._validation import number as _number
from gatewayz_metrics._validation import signed as _signed
from gatewayz_metrics._validation import status_code as _status_code

if TYPE_CHECKING:
    from gatewayz_metrics._gateway import GatewayFamilies, Pricing

T = TypeVar("T")
H = TypeVar("H")

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


def _warn_once(message: str) -> None:
    if log_once(("warning", message)):
        logger.warning("gatewayz-metrics: %s", message)


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

# (metric, argument) of every drop a helper can count in invalid_values_total: created
# at 0 with the domain metrics, so that increase() sees the first one.
_INVALID_SERIES: tuple[tuple[str, str], ...] = (
    *(("model_inference_requests_total", a) for a in ("provider", "model", "status", "tracker")),
    ("model_inference_duration_seconds", "exemplar"),
    ("model_time_to_first_token_seconds", "exemplar"),
    *(
        ("tokens_used_total", a)
        for a in ("provider", "model", "input_tokens", "output_tokens", "set_usage")
    ),
    *(("credits_used_total", a) for a in ("provider", "model", "user_id", "credits")),
    *(("database_queries_total", a) for a in ("table", "operation", "tracker")),
    ("cache_hits_total", "cache_name"),
    ("cache_misses_total", "cache_name"),
    ("rate_limited_requests_total", "limit_type"),
    ("api_key_usage_total", "api_key_id"),
    ("api_key_usage_total", "status"),
    *(("http_requests_total", a) for a in ("method", "endpoint", "status_code", "tracker")),
    ("cache_size_bytes", "cache_name"),
    ("cache_size_bytes", "size_bytes"),
    ("current_rate_limit", "limit_type"),
    ("current_rate_limit", "remaining"),
    *(
        ("provider_availability", a)
        for a in ("provider", "available", "error_rate", "response_time")
    ),
    ("active_api_keys", "active"),
    ("active_api_keys", "inactive"),
    ("user_credit_balance", "user_id"),
    ("user_credit_balance", "balance"),
    ("trial_active", "status"),
    ("trial_active", "count"),
    ("subscription_count", "plan"),
    ("subscription_count", "count"),
    ("active_connections", "connection_type"),
    ("active_connections", "count"),
    ("queue_size", "queue"),
    ("queue_size", "size"),
    ("model_inference_requests_total", "attempt"),
    *(("model_fallbacks_total", a) for a in ("from_model", "to_model", "reason")),
    ("gateway_request_attempts", "model"),
    ("gateway_request_attempts", "attempts"),
    ("gateway_rejections_total", "scope"),
    ("gateway_rejections_total", "kind"),
    *(("provider_rate_limited_total", a) for a in ("provider", "model")),
    *(("provider_cost_total", a) for a in ("provider", "model", "cost", "currency")),
)


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
                raise InvalidValueError(
                    self.label_name,
                    f"{self.label_name} must be one of {self.allowed}, got {text!r}",
                )
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
            except Exception as exc:
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
        return _HTTPSeries(http, method_label(verb), bounded), folded


class _HTTPSeries:
    """The middleware's bound children of one (method, endpoint): one cache serves both."""

    __slots__ = ("duration", "endpoint", "http", "method")

    def __init__(self, http: HTTPMetrics, method: str, endpoint: str) -> None:
        self.http = http
        self.method = method
        self.endpoint = endpoint
        self.duration = http.bound(method, endpoint).duration

    def requests(self, status_code: int) -> Counter:
        child: Counter = self.http.request_counter(
            self.method, self.endpoint, status_label(status_code)
        )
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
        "_exemplar",
        "_metrics",
        "_model",
        "_output_tokens",
        "_provider",
        "_series",
        "_start",
        "_status",
        "_ttft",
        "_usage_set",
    )

    def __init__(
        self,
        metrics: GatewayMetrics,
        series: _InferenceSeries | None,
        provider: str,
        model: str,
        start: float,
        exemplar: ExemplarOption = True,
    ) -> None:
        self._metrics = metrics
        self._exemplar = exemplar
        # None: the call's labels were invalid (lenient mode), so nothing is recorded.
        self._series = series
        self._provider = provider
        self._model = model
        self._start = start
        self._ttft: float | None = None
        self._output_tokens: int | None = None
        self._usage_set = False
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
        if self._series is not None:
            try:
                exemplar = exemplar_for(
                    self._metrics.registry, "model_time_to_first_token_seconds", self._exemplar
                )
                self._series.ttft.observe(self._ttft, exemplar)
            except Exception as exc:
                report_internal_error(self._metrics.registry, "tracker.inference", exc)

    def set_usage(self, *, input_tokens: int | None, output_tokens: int | None) -> None:
        """Record the call's tokens (`tokens_used_total`) and, for a stream that
        succeeded, its time per output token. Call it once per block.

        `None` means the provider did not report that count: it is not recorded. A call
        that records nothing (its arguments were invalid, already counted as dropped, or
        its tracker was re-entered) records no usage or cost either.
        """
        if self._series is None:
            return
        metrics = self._metrics
        try:
            if self._usage_set:
                raise InvalidCallError(
                    "set_usage", "set_usage() was already called for this inference call"
                )
            output = None if output_tokens is None else _count("output_tokens", output_tokens)
            if input_tokens is not None:
                _count("input_tokens", input_tokens)
        except Exception as exc:
            metrics._dropped("tokens_used_total", exc)
            return
        self._usage_set = True
        metrics.record_tokens_used(self._provider, self._model, input_tokens, output)
        self._output_tokens = output
        if self._duration is not None and self._status == SUCCESS:
            self._observe_tpot(self._duration)

    def set_status(self, status: str) -> None:
        """Outcome to record if the block ends without an exception (an escaping
        exception always decides: error, timeout or cancelled)."""
        if status not in INFERENCE_STATUSES:
            error = InvalidValueError(
                "status", f"status must be one of {INFERENCE_STATUSES}, got {status!r}"
            )
            self._metrics._dropped("model_inference_requests_total", error)
            return
        self._status = status

    def _observe_tpot(self, duration: float) -> None:
        ttft, output, series = self._ttft, self._output_tokens, self._series
        if series is not None and ttft is not None and output is not None and output > 1:
            try:
                series.tpot.observe(max(duration - ttft, 0.0) / (output - 1))
            except Exception as exc:
                report_internal_error(self._metrics.registry, "tracker.inference", exc)

    def _finish(self, duration: float, exc: BaseException | None) -> None:
        status = outcome_of(exc) if exc is not None else (self._status or SUCCESS)
        self._status = status
        self._duration = duration
        series = self._series
        if series is None:
            return
        series.requests[status].inc()
        exemplar = exemplar_for(
            self._metrics.registry, "model_inference_duration_seconds", self._exemplar
        )
        series.duration.observe(duration, exemplar)
        if status == SUCCESS:
            self._observe_tpot(duration)


class _DomainTracker(Tracker[H]):
    """A tracker whose misuse follows its `GatewayMetrics`' mode (strict or lenient)."""

    __slots__ = ("_metrics",)
    _metric = ""

    def __init__(self, metrics: GatewayMetrics) -> None:
        super().__init__(metrics.registry)
        self._metrics = metrics

    def _misuse(self, error: InvalidArgumentError) -> None:
        self._metrics._dropped(self._metric, error)


class _InferenceTracker(_DomainTracker[InferenceHandle]):
    __slots__ = ("_exemplar", "_model", "_provider", "_retry", "_series")
    _component = "tracker.inference"
    _metric = "model_inference_requests_total"

    def __init__(
        self,
        metrics: GatewayMetrics,
        provider: str,
        model: str,
        attempt: int = 1,
        exemplar: object = True,
    ) -> None:
        super().__init__(metrics)
        self._provider = provider
        self._model = model
        self._exemplar = _exemplar_option(metrics, exemplar)
        # Resolved now, so bad input is reported at the call, before anything is measured.
        series: _InferenceSeries | None = None
        retry: Counter | None = None
        try:
            is_retry = type(attempt) is not int or attempt != 1
            if is_retry:
                from gatewayz_metrics._gateway import check_attempt

                check_attempt(attempt)
            series = metrics._families.inference.get((provider, model))
            if is_retry:
                retry = metrics._families.gateway.retry.get((provider, model))
        except Exception as exc:
            metrics._dropped(self._metric, exc)
        self._series = series
        self._retry = retry

    def _open(self) -> InferenceHandle:
        return InferenceHandle(
            self._metrics, self._series, self._provider, self._model, self._start, self._exemplar
        )

    def _detached(self) -> InferenceHandle:
        return InferenceHandle(self._metrics, None, self._provider, self._model, self._start)

    def _close(self, handle: InferenceHandle, duration: float, exc: BaseException | None) -> None:
        handle._finish(duration, exc)
        if self._retry is not None:
            self._retry.inc()


def _exemplar_option(metrics: GatewayMetrics, exemplar: object) -> ExemplarOption:
    """`exemplar=` of a tracker, checked at the call: a mapping once, a function at each
    observation. Invalid: strict mode raises, lenient records without an exemplar."""
    if exemplar is True:
        return True
    try:
        try:
            option = check_option("exemplar", exemplar, mapping=True)
        except TypeError as exc:
            raise InvalidTypeError("exemplar", str(exc)) from None
        if isinstance(option, bool) or callable(option):
            return option
        return check_exemplar(option) or False
    except InvalidArgumentError as exc:
        if metrics.strict:
            raise
        report_dropped_exemplar(metrics.registry, "model_inference_duration_seconds", exc)
        return False


class HTTPRequestHandle:
    """What `with track_http_request(...) as request:` gives the block."""

    __slots__ = ("_metrics", "_status_code", "measured_by_middleware")

    def __init__(self, metrics: GatewayMetrics, measured_by_middleware: bool) -> None:
        self._metrics = metrics
        self.measured_by_middleware = measured_by_middleware
        """True when nothing is recorded: the middleware of the same registry measures
        this request (response not complete yet), or the call's labels were invalid."""
        self._status_code: int | None = None

    def set_status(self, status_code: int) -> None:
        """The status to record if the block ends without an exception (default 200)."""
        try:
            self._status_code = _status_code(status_code)
        except Exception as exc:
            self._metrics._dropped("http_requests_total", exc)


class _HTTPTracker(_DomainTracker[HTTPRequestHandle]):
    __slots__ = ("_endpoint", "_method", "_valid")
    _component = "tracker.http"
    _metric = "http_requests_total"

    def __init__(self, metrics: GatewayMetrics, method: str, endpoint: str) -> None:
        super().__init__(metrics)
        self._valid = True
        try:
            clean_label("method", method, required=True)
            clean_label("endpoint", endpoint, required=True)
        except Exception as exc:
            self._valid = False
            metrics._dropped(self._metric, exc)
        self._method = method
        self._endpoint = endpoint

    def _open(self) -> HTTPRequestHandle:
        skip = not self._valid or measured_here(self._registry)
        return HTTPRequestHandle(self._metrics, skip)

    def _detached(self) -> HTTPRequestHandle:
        return HTTPRequestHandle(self._metrics, True)

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
        series = self._metrics._families.http.get((self._method, self._endpoint))
        series.requests(code).inc()
        series.duration.observe(
            duration, exemplar_for(self._registry, "http_request_duration_seconds", True)
        )


class _DatabaseTracker(_DomainTracker[None]):
    __slots__ = ("_children",)
    _component = "tracker.database"
    _metric = "database_queries_total"

    def __init__(self, metrics: GatewayMetrics, table: str, operation: str) -> None:
        super().__init__(metrics)
        children: tuple[Counter, Histogram] | None = None
        try:
            children = metrics._families.database.get((table, operation))
        except Exception as exc:
            metrics._dropped(self._metric, exc)
        self._children = children

    def _open(self) -> None:
        return None

    def _detached(self) -> None:
        return None

    def _close(self, handle: None, duration: float, exc: BaseException | None) -> None:
        if self._children is None:
            return
        count, histogram = self._children
        count.inc()
        histogram.observe(duration)


# --- the public object -----------------------------------------------------------------


class GatewayMetrics:
    """The domain metrics of one registry, and the helpers that record them.

    Several instances on one registry share the same families (and caps, and
    callbacks); an instance asking for a different configuration than the one the
    registry already has raises `ValueError` naming the difference.

    Recording never raises at run time (the OpenTelemetry API rule): a call with an
    invalid value records nothing of that call, counts the drop in
    `gatewayz_metrics_invalid_values_total{metric, argument}` and logs it once per kind.
    With `strict=True`, or `GATEWAYZ_METRICS_STRICT=1` in the environment, it raises the
    `ValueError`/`TypeError` instead: use it in test suites. `None` for a token count
    (or any other recorded value) means "not reported": that part is not recorded, in
    both modes. Configuration errors always raise here, at construction.
    """

    __slots__ = ("_families", "_strict", "registry")

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
        strict: bool = False,
    ) -> None:
        self.registry = resolve_registry(registry)
        if not isinstance(strict, bool):
            raise TypeError(f"strict must be a bool, got {strict!r}")
        self._strict = strict or strict_from_env()
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
        # The self-metrics exist at 0 from the start, so rate() sees the first fault.
        create_self_metrics(self.registry, invalid=_INVALID_SERIES)

    @property
    def strict(self) -> bool:
        """Whether an invalid value raises (True) or is dropped and counted (False)."""
        return self._strict

    def _dropped(self, metric: str, exc: Exception) -> None:
        """A recording call failed: an invalid value raises in strict mode and is
        counted otherwise; a fault of ours is counted and never raised."""
        if isinstance(exc, InvalidArgumentError):
            if self._strict:
                raise exc
            report_invalid_value(self.registry, metric, exc.argument, exc)
        else:
            report_internal_error(self.registry, "recording", exc)

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
        return _HTTPTracker(self, method, endpoint)

    def track_model_inference(
        self,
        provider: str,
        model: str,
        *,
        attempt: int = 1,
        exemplar: bool | Mapping[str, str] | Callable[[], Mapping[str, str] | None] = True,
    ) -> Tracker[InferenceHandle]:
        """Time an inference call and record its outcome; see `InferenceHandle`.

        `attempt` numbers the upstream calls of one request from 1: every attempt counts
        in `model_inference_requests_total`, and those after the first (retries and
        fallbacks) also in `model_inference_retries_total`.

        `exemplar`: the duration and time-to-first-token observations carry the trace of
        the active, sampled OpenTelemetry span (`True`, the default), none (`False`), the
        given labels (a mapping, checked now), or what `exemplar()` returns at each
        observation (a mapping or None; a function that raises or returns an invalid
        exemplar is counted, never raised).
        """
        return _InferenceTracker(self, provider, model, attempt, exemplar)

    def track_database_query(self, table: str, operation: str) -> Tracker[None]:
        """Count and time a database query (failed ones included)."""
        return _DatabaseTracker(self, table, operation)

    # --- record_* ------------------------------------------------------------------

    def record_tokens_used(
        self, provider: str, model: str, input_tokens: int | None, output_tokens: int | None
    ) -> None:
        """Add to `tokens_used_total{token_type="input"|"output"}`; a `None` count was not
        reported by the provider and is not recorded."""
        try:
            # The common case (a plain, sane int) costs two comparisons; None is "not reported".
            if input_tokens is not None and not (
                type(input_tokens) is int and 0 <= input_tokens <= MAX_COUNT
            ):
                input_tokens = _count("input_tokens", input_tokens)
            if output_tokens is not None and not (
                type(output_tokens) is int and 0 <= output_tokens <= MAX_COUNT
            ):
                output_tokens = _count("output_tokens", output_tokens)
            input_child, output_child = self._families.tokens.get((provider, model))
            if input_tokens:
                input_child.inc(input_tokens)
            if output_tokens:
                output_child.inc(output_tokens)
            if input_tokens is not None or output_tokens is not None:
                # The cost of what the provider reported (a `None` part costs nothing).
                self._families.gateway.charge_tokens(
                    provider, model, input_tokens or 0, output_tokens or 0
                )
        except Exception as exc:
            self._dropped("tokens_used_total", exc)

    def record_credits_used(
        self, provider: str, model: str, user_id: str, credits: float | None
    ) -> None:
        """Add to `credits_used_total`; a secret-looking `user_id` is fingerprinted.
        `credits=None` (not reported) records nothing."""
        try:
            amount = None if credits is None else _number("credits", credits)
            child = self._families.credits.get((provider, model, user_id))
            if amount:
                child.inc(amount)
        except Exception as exc:
            self._dropped("credits_used_total", exc)

    def record_cache_hit(self, cache_name: str) -> None:
        """Add one to `cache_hits_total`."""
        try:
            self._families.hits.get((cache_name,)).inc()
        except Exception as exc:
            self._dropped("cache_hits_total", exc)

    def record_cache_miss(self, cache_name: str) -> None:
        """Add one to `cache_misses_total`."""
        try:
            self._families.misses.get((cache_name,)).inc()
        except Exception as exc:
            self._dropped("cache_misses_total", exc)

    def record_rate_limited(self, limit_type: str) -> None:
        """Add one to `rate_limited_requests_total`."""
        try:
            self._families.limited.get((limit_type,)).inc()
        except Exception as exc:
            self._dropped("rate_limited_requests_total", exc)

    def record_api_key_usage(self, api_key_id: str, status: str) -> None:
        """Add one to `api_key_usage_total`; a secret-looking key id is fingerprinted."""
        try:
            self._families.key_usage.get((api_key_id, status)).inc()
        except Exception as exc:
            self._dropped("api_key_usage_total", exc)

    # --- gateway-native: fallbacks, attempts, who refused, cost (see _gateway.py) -----

    def record_fallback(self, from_model: str, to_model: str, reason: str) -> None:
        """Add one to `model_fallbacks_total`; `reason` is one of `FALLBACK_REASONS`."""
        try:
            self._families.gateway.record_fallback(from_model, to_model, reason)
        except Exception as exc:
            self._dropped("model_fallbacks_total", exc)

    def record_request_attempts(self, model: str, attempts: int) -> None:
        """Observe the upstream attempts (>= 1) one request took, by the model asked for,
        in `gateway_request_attempts`."""
        try:
            self._families.gateway.record_request_attempts(model, attempts)
        except Exception as exc:
            self._dropped("gateway_request_attempts", exc)

    def record_gateway_rejection(self, scope: str, kind: str) -> None:
        """Add one to `gateway_rejections_total`: a request the gateway's own limit
        refused (`scope` in `REJECTION_SCOPES`, `kind` in `REJECTION_KINDS`)."""
        try:
            self._families.gateway.record_gateway_rejection(scope, kind)
        except Exception as exc:
            self._dropped("gateway_rejections_total", exc)

    def record_upstream_rate_limited(self, provider: str, model: str) -> None:
        """Add one to `provider_rate_limited_total`: the provider refused a call (429)."""
        try:
            self._families.gateway.record_upstream_rate_limited(provider, model)
        except Exception as exc:
            self._dropped("provider_rate_limited_total", exc)

    def record_provider_cost(
        self, provider: str, model: str, cost: float | None, currency: str = "USD"
    ) -> None:
        """Add `cost` to `provider_cost_total`; `None` (price unknown) adds one to
        `inference_unpriced_total` instead."""
        try:
            self._families.gateway.record_provider_cost(provider, model, cost, currency)
        except Exception as exc:
            self._dropped("provider_cost_total", exc)

    def set_pricing(self, prices: Pricing | None) -> None:
        """Price every `record_tokens_used` (and `set_usage`) from `{(provider, model):
        ModelPrice}` into `provider_cost_total`; calls of a pair without a price count in
        `inference_unpriced_total`. `None` stops pricing. Shared by the registry's instances."""
        from gatewayz_metrics._gateway import check_pricing

        self._families.gateway.pricing = check_pricing(prices)

    # --- set_* ---------------------------------------------------------------------

    def _set(
        self,
        family: str,
        label_value: object,
        argument: str,
        value: object,
        check: Callable[[str, object], float],
    ) -> None:
        """Set one gauge child; `None` (not reported) leaves it as it is."""
        try:
            if value is None:
                return
            self._families.gauges[family].set(label_value, check(argument, value))
        except Exception as exc:
            self._dropped(family, exc)

    def set_cache_size(self, cache_name: str, size_bytes: int | None) -> None:
        """Set `cache_size_bytes` (this process's share; summed over live processes)."""
        self._set("cache_size_bytes", cache_name, "size_bytes", size_bytes, _count)

    def set_rate_limit_remaining(self, limit_type: str, remaining: float | None) -> None:
        """Set `current_rate_limit`, the requests left in the current window."""
        self._set("current_rate_limit", limit_type, "remaining", remaining, _number)

    def set_provider_health(
        self,
        provider: str,
        *,
        available: bool | float | None,
        error_rate: float | None = None,
        response_time: float | None = None,
    ) -> None:
        """Set the provider health gauges (all arguments are checked before any is set;
        a `None` value is left as it is).

        These are snapshots of whoever set them last; for the error ratio prefer
        `rate(model_inference_requests_total{status!="success"}[5m])`, which every
        worker contributes to.
        """
        try:
            up = None if available is None else _availability("available", available)
            errors = None if error_rate is None else _fraction("error_rate", error_rate)
            seconds = None if response_time is None else _number("response_time", response_time)
            gauges = self._families.gauges
            # Resolving the label first validates `provider`, so bad input changes nothing.
            gauges["provider_availability"].children.get((provider,))
            if up is not None:
                gauges["provider_availability"].set(provider, up)
            if errors is not None:
                gauges["provider_error_rate"].set(provider, errors)
            if seconds is not None:
                gauges["provider_response_time_seconds"].set(provider, seconds)
        except Exception as exc:
            self._dropped("provider_availability", exc)

    def set_active_api_keys(self, *, active: int | None, inactive: int | None) -> None:
        """Set `active_api_keys{status="active"}` and `{status="inactive"}`."""
        try:
            on = None if active is None else _count("active", active)
            off = None if inactive is None else _count("inactive", inactive)
            family = self._families.gauges["active_api_keys"]
            if on is not None:
                family.set("active", on)
            if off is not None:
                family.set("inactive", off)
        except Exception as exc:
            self._dropped("active_api_keys", exc)

    def set_user_credit_balance(self, user_id: str, balance: float | None) -> None:
        """Set `user_credit_balance` (may be negative); a secret-looking id is fingerprinted."""
        self._set("user_credit_balance", user_id, "balance", balance, _signed)

    def set_trial_active(self, status: str, count: int | None) -> None:
        """Set `trial_active{status}`."""
        self._set("trial_active", status, "count", count, _count)

    def set_subscription_count(self, plan: str, count: int | None) -> None:
        """Set `subscription_count{plan}` (name kept from the source document)."""
        self._set("subscription_count", plan, "count", count, _count)

    def set_active_connections(self, connection_type: str, count: int | None) -> None:
        """Set `active_connections{connection_type}` (summed over live processes)."""
        self._set("active_connections", connection_type, "count", count, _count)

    def set_queue_size(self, queue: str, size: int | None) -> None:
        """Set `queue_size{queue}` (summed over live processes)."""
        self._set("queue_size", queue, "size", size, _count)

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
        # Its fault series exists at 0 from now on, so that rate() sees the first fault.
        create_self_metrics(self.registry, components=(f"callback:{family}",))
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
                try:
                    _default = GatewayMetrics()
                except Exception as exc:
                    # The default registry refuses our families (a metric of the same name
                    # is already there): the module-level helpers would raise into every
                    # request that records. Strict mode raises; otherwise they record into
                    # a private registry that nothing exposes, and the fault is logged.
                    if strict_from_env():
                        raise
                    report_internal_error(REGISTRY, "recording", exc)
                    _default = GatewayMetrics(CollectorRegistry())
            metrics = _default
    return metrics


def track_http_request(method: str, endpoint: str) -> Tracker[HTTPRequestHandle]:
    """`GatewayMetrics.track_http_request` on the default registry."""
    return (_default or default_metrics()).track_http_request(method, endpoint)


def track_model_inference(
    provider: str,
    model: str,
    *,
    attempt: int = 1,
    exemplar: bool | Mapping[str, str] | Callable[[], Mapping[str, str] | None] = True,
) -> Tracker[InferenceHandle]:
    """`GatewayMetrics.track_model_inference` on the default registry."""
    return (_default or default_metrics()).track_model_inference(
        provider, model, attempt=attempt, exemplar=exemplar
    )


def track_database_query(table: str, operation: str) -> Tracker[None]:
    """`GatewayMetrics.track_database_query` on the default registry."""
    return (_default or default_metrics()).track_database_query(table, operation)


def record_tokens_used(
    provider: str, model: str, input_tokens: int | None, output_tokens: int | None
) -> None:
    """`GatewayMetrics.record_tokens_used` on the default registry."""
    (_default or default_metrics()).record_tokens_used(provider, model, input_tokens, output_tokens)


def record_credits_used(provider: str, model: str, user_id: str, credits: float | None) -> None:
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


def set_cache_size(cache_name: str, size_bytes: int | None) -> None:
    """`GatewayMetrics.set_cache_size` on the default registry."""
    (_default or default_metrics()).set_cache_size(cache_name, size_bytes)


def set_rate_limit_remaining(limit_type: str, remaining: float | None) -> None:
    """`GatewayMetrics.set_rate_limit_remaining` on the default registry."""
    (_default or default_metrics()).set_rate_limit_remaining(limit_type, remaining)


def set_provider_health(
    provider: str,
    *,
    available: bool | float | None,
    error_rate: float | None = None,
    response_time: float | None = None,
) -> None:
    """`GatewayMetrics.set_provider_health` on the default registry."""
    (_default or default_metrics()).set_provider_health(
        provider, available=available, error_rate=error_rate, response_time=response_time
    )


def set_active_api_keys(*, active: int | None, inactive: int | None) -> None:
    """`GatewayMetrics.set_active_api_keys` on the default registry."""
    (_default or default_metrics()).set_active_api_keys(active=active, inactive=inactive)


def set_user_credit_balance(user_id: str, balance: float | None) -> None:
    """`GatewayMetrics.set_user_credit_balance` on the default registry."""
    (_default or default_metrics()).set_user_credit_balance(user_id, balance)


def set_trial_active(status: str, count: int | None) -> None:
    """`GatewayMetrics.set_trial_active` on the default registry."""
    (_default or default_metrics()).set_trial_active(status, count)


def set_subscription_count(plan: str, count: int | None) -> None:
    """`GatewayMetrics.set_subscription_count` on the default registry."""
    (_default or default_metrics()).set_subscription_count(plan, count)


def set_active_connections(connection_type: str, count: int | None) -> None:
    """`GatewayMetrics.set_active_connections` on the default registry."""
    (_default or default_metrics()).set_active_connections(connection_type, count)


def set_queue_size(queue: str, size: int | None) -> None:
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
