"""The HTTP metric families, shared by the middleware and `track_http_request`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gatewayz_metrics._cardinality import BoundedLabel
from gatewayz_metrics._internal import create_self_metrics
from gatewayz_metrics._registry import get_or_create

DEFAULT_DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
"""Request duration buckets (seconds): 5 ms API calls up to five-minute LLM streams."""

DEFAULT_TTFB_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
"""Time-to-first-byte buckets (seconds): headers of a stream can wait on a slow provider."""

DEFAULT_MAX_ENDPOINTS = 500
"""Distinct `endpoint` values admitted before new ones fold into `__other__`."""

UNMATCHED_ENDPOINT = "__unmatched__"
"""The `endpoint` of a request that matched no route (a 404), whatever its path."""

OTHER_METHOD = "OTHER"
"""The `method` of a request whose method is outside the standard set."""

STANDARD_METHODS: dict[str, str] = {
    m: m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
}
_METHOD_LABELS: dict[object, str] = {m: m for m in STANDARD_METHODS}


def method_label(method: object) -> str:
    """The `method` label of a request: the method itself if standard, else `OTHER`.

    One rule for the middleware and `track_http_request`. Methods are case-sensitive
    (RFC 9110), so `get` is `OTHER`, as the OpenTelemetry HTTP conventions have it.
    """
    try:
        return _METHOD_LABELS.get(method, OTHER_METHOD)
    except TypeError:  # unhashable: not a method
        return OTHER_METHOD


OTHER_STATUS = "other"
"""The `status_code` of a response whose integer status is outside 100-599."""

STATUS_LABELS: dict[object, str] = {code: str(code) for code in range(100, 600)}
"""The `status_code` label of every valid status: the middleware's hot path looks it up."""


def status_label(status: object) -> str:
    """The `status_code` label of a response status: the code itself if 100-599.

    One rule for the middleware and `track_http_request`. Any other integer (an upstream's
    garbage forwarded by a proxy) folds into `other`, so the label stays bounded. A status
    that is not an int at all is an application bug that no server sends on: `TypeError`.
    """
    try:
        label = STATUS_LABELS.get(status)
    except TypeError:  # unhashable
        label = None
    if label is not None:
        return label
    if isinstance(status, int) and not isinstance(status, bool):
        return OTHER_STATUS
    raise TypeError(f"the application sent a non-integer status of type {type(status).__name__}")


class Measurement:
    """One request that a middleware is measuring, as seen by code running inside it.

    `complete` turns true when the last byte of the response is sent: work the request
    spawned (a `BackgroundTask`, `asyncio.create_task`) inherits the context variable
    below but is no longer part of that request.
    """

    __slots__ = ("complete", "registry")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.complete = False


# The requests whose middleware is measuring the current code: `track_http_request`
# inside a handler does not count the request a second time when the middleware of its
# own registry measures it and the response is not complete yet.
request_measured: ContextVar[tuple[Measurement, ...]] = ContextVar(
    "gatewayz_metrics_request_measured", default=()
)

MEASURED_SCOPE_KEY = "gatewayz_metrics.measured_by"
"""Scope key holding the registries whose middleware measures this request. It travels
with the scope (and its copies) down the stack: a second middleware on the same registry
passes the request through, while a new request made in-process (`httpx.ASGITransport`
to a wrapped app) has a scope of its own and is measured."""


def measured_here(registry: CollectorRegistry) -> bool:
    """Whether `registry`'s middleware measures the running request, response not complete."""
    for measurement in request_measured.get():
        if measurement.registry is registry and not measurement.complete:
            return True
    return False


def check_buckets(name: str, buckets: Sequence[float]) -> tuple[float, ...]:
    """Validate histogram buckets and return them as a sorted tuple without +Inf."""
    try:
        values = tuple(float(b) for b in buckets)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a sequence of numbers, got {buckets!r}") from None
    finite = tuple(b for b in values if b != math.inf)
    if not finite or any(math.isnan(b) for b in finite) or list(finite) != sorted(set(finite)):
        raise ValueError(
            f"{name} must be a non-empty, strictly increasing sequence of numbers, got {buckets!r}"
        )
    return finite


class HTTPMetrics:
    """The HTTP families of one registry. Get it with `HTTPMetrics.for_registry`."""

    __slots__ = (
        "_bound",
        "_counters",
        "_in_progress",
        "_series",
        "duration",
        "duration_buckets",
        "endpoint_label",
        "in_progress",
        "registry",
        "request_size",
        "requests_total",
        "response_size",
        "ttfb",
        "ttfb_buckets",
    )

    def __init__(
        self,
        registry: CollectorRegistry,
        duration_buckets: tuple[float, ...],
        ttfb_buckets: tuple[float, ...],
        max_endpoints: int,
    ) -> None:
        self.registry = registry
        # The self-metrics exist at 0 from the start, so rate() sees the first fault.
        create_self_metrics(registry)
        self.duration_buckets = duration_buckets
        self.ttfb_buckets = ttfb_buckets
        self.endpoint_label = BoundedLabel(
            registry, "http_requests_total", "endpoint", max_endpoints
        )
        self.requests_total = Counter(
            "http_requests",
            "HTTP requests by method, route template and status code.",
            ["method", "endpoint", "status_code"],
            registry=registry,
        )
        self.duration = Histogram(
            "http_request_duration_seconds",
            "Time from receiving a request to sending the last byte of its response.",
            ["method", "endpoint"],
            buckets=duration_buckets,
            registry=registry,
        )
        self.in_progress = Gauge(
            "http_requests_in_progress",
            "HTTP requests being served right now.",
            ["method"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.request_size = Counter(
            "http_request_size_bytes",
            "Request body bytes actually received.",
            ["method", "endpoint"],
            registry=registry,
        )
        self.response_size = Counter(
            "http_response_size_bytes",
            "Response body bytes actually sent.",
            ["method", "endpoint"],
            registry=registry,
        )
        self.ttfb = Histogram(
            "http_time_to_first_byte_seconds",
            "Time from receiving a request to sending its response headers.",
            ["method", "endpoint"],
            buckets=ttfb_buckets,
            registry=registry,
        )
        # Binding label values costs more than the observation itself: bind each
        # combination once. The keys are bounded (methods, capped endpoints, statuses).
        self._bound: dict[tuple[str, str], BoundChildren] = {}
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._in_progress: dict[str, Any] = {}
        self._series: dict[tuple[str, str, str], tuple[Any, BoundChildren]] = {}

    def bound(self, method: str, endpoint: str) -> BoundChildren:
        """The duration, TTFB and size children of (method, endpoint)."""
        key = (method, endpoint)
        children = self._bound.get(key)
        if children is None:
            children = self._bound.setdefault(key, BoundChildren(self, method, endpoint))
        return children

    def request_counter(self, method: str, endpoint: str, status_code: str) -> Any:
        """The `http_requests_total` child of (method, endpoint, status_code)."""
        key = (method, endpoint, status_code)
        child = self._counters.get(key)
        if child is None:
            child = self._counters.setdefault(
                key, self.requests_total.labels(method, endpoint, status_code)
            )
        return child

    def series(self, method: str, template: str, status_code: str) -> tuple[Any, BoundChildren]:
        """The request counter and bound children of one finished request, in one look-up.

        `template` is capped here with `endpoint_label`. Only admitted templates are
        cached: a folded one must reach `endpoint_label` at every request to be counted in
        `gatewayz_metrics_label_overflow_total`.
        """
        key = (method, template, status_code)
        found = self._series.get(key)
        if found is None:
            endpoint = self.endpoint_label(template)
            found = (
                self.request_counter(method, endpoint, status_code),
                self.bound(method, endpoint),
            )
            if endpoint == template:
                found = self._series.setdefault(key, found)
        return found

    def in_progress_gauge(self, method: str) -> Any:
        """The `http_requests_in_progress` child of `method`."""
        child = self._in_progress.get(method)
        if child is None:
            child = self._in_progress.setdefault(method, self.in_progress.labels(method))
        return child

    @classmethod
    def for_registry(
        cls,
        registry: CollectorRegistry,
        *,
        duration_buckets: Sequence[float] | None = None,
        ttfb_buckets: Sequence[float] | None = None,
        max_endpoints: int | None = None,
    ) -> HTTPMetrics:
        """Return the registry's HTTP metrics, registering them on first use.

        A later caller that asks for different buckets or a different endpoint cap gets
        a `ValueError`: one registry holds one definition of each family.
        """
        duration = (
            None
            if duration_buckets is None
            else check_buckets("duration_buckets", duration_buckets)
        )
        ttfb = None if ttfb_buckets is None else check_buckets("ttfb_buckets", ttfb_buckets)
        metrics = get_or_create(
            registry,
            "http",
            lambda: cls(
                registry,
                duration or DEFAULT_DURATION_BUCKETS,
                ttfb or DEFAULT_TTFB_BUCKETS,
                DEFAULT_MAX_ENDPOINTS if max_endpoints is None else max_endpoints,
            ),
        )
        for name, asked, have in (
            ("duration_buckets", duration, metrics.duration_buckets),
            ("ttfb_buckets", ttfb, metrics.ttfb_buckets),
        ):
            if asked is not None and asked != have:
                raise ValueError(
                    f"the HTTP metrics of this registry already exist with {name}={have!r}; "
                    f"got {name}={asked!r}. Use one definition per registry."
                )
        if max_endpoints is not None and max_endpoints != metrics.endpoint_label.max_values:
            raise ValueError(
                "the HTTP metrics of this registry already exist with "
                f"max_endpoints={metrics.endpoint_label.max_values!r}; got {max_endpoints!r}"
            )
        return metrics


class BoundChildren:
    """The label children of one (method, endpoint), bound once and reused."""

    __slots__ = ("duration", "request_size", "response_size", "ttfb")

    def __init__(self, metrics: HTTPMetrics, method: str, endpoint: str) -> None:
        self.duration = metrics.duration.labels(method, endpoint)
        self.ttfb = metrics.ttfb.labels(method, endpoint)
        self.request_size = metrics.request_size.labels(method, endpoint)
        self.response_size = metrics.response_size.labels(method, endpoint)
