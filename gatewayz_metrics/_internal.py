"""Self-observation: faults inside our own bookkeeping are logged once and counted.

One logger, one log-once, and the three self-metrics:
`gatewayz_metrics_internal_errors_total{component}` (a fault of ours, the request went on),
`gatewayz_metrics_label_overflow_total{metric, label}` (a value folded into `__other__`) and
`gatewayz_metrics_invalid_values_total{metric, argument}` (a recording call dropped because
the application passed an invalid value; for `argument="exemplar"`, only the exemplar).
Their known series are created at 0 with the metrics they watch, so that `rate()` and
`increase()` see the very first fault.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter

from gatewayz_metrics._registry import get_or_create

logger = logging.getLogger("gatewayz_metrics")

KNOWN_COMPONENTS: tuple[str, ...] = (
    "middleware.in_progress",
    "middleware.receive",
    "middleware.send",
    "middleware.record",
    "middleware.discover",
    "middleware.routes",
    "tracker.inference",
    "tracker.http",
    "tracker.database",
    "recording",
    "secret_detector",
    "render.fast",
    "multiprocess.fast",
    "multiprocess.retire",
    "multiprocess.unreadable",
    "exemplar",
)
"""Components whose `internal_errors_total` series exist from the start: every component
string the package reports (a test greps the source to keep this complete). Per-callback
components (`callback:<name>`) are named by the application and created with their callback."""

_logged: set[tuple[str, ...]] = set()
_logged_lock = threading.Lock()


def log_once(kind: tuple[str, ...]) -> bool:
    """True the first time `kind` is seen in this process: the caller logs it then."""
    if kind in _logged:  # unlocked fast path: set membership is atomic under the GIL
        return False
    with _logged_lock:
        if kind in _logged:
            return False
        _logged.add(kind)
    return True


def _self_counter(
    registry: CollectorRegistry, key: str, name: str, documentation: str, labels: list[str]
) -> Counter:
    return get_or_create(
        registry,
        key,
        lambda: Counter(name, documentation, labels, registry=registry),
    )


def internal_errors(registry: CollectorRegistry) -> Counter:
    """The `gatewayz_metrics_internal_errors_total{component}` counter of `registry`."""
    return _self_counter(
        registry,
        "internal_errors",
        "gatewayz_metrics_internal_errors",
        "Faults inside gatewayz-metrics' own bookkeeping; the observed request went on.",
        ["component"],
    )


def label_overflow_total(registry: CollectorRegistry) -> Counter:
    """The `gatewayz_metrics_label_overflow_total{metric, label}` counter of `registry`."""
    return _self_counter(
        registry,
        "label_overflow",
        "gatewayz_metrics_label_overflow",
        "Observations whose label value was folded into __other__ because the label "
        "reached its cap of distinct values.",
        ["metric", "label"],
    )


def invalid_values_total(registry: CollectorRegistry) -> Counter:
    """The `gatewayz_metrics_invalid_values_total{metric, argument}` counter of `registry`."""
    return _self_counter(
        registry,
        "invalid_values",
        "gatewayz_metrics_invalid_values",
        "Recording calls dropped because the application passed an invalid value "
        "(strict mode raises instead); nothing of the call was recorded, except for "
        'argument="exemplar": the observation was recorded without its exemplar.',
        ["metric", "argument"],
    )


def create_self_metrics(
    registry: CollectorRegistry,
    *,
    components: Iterable[str] = KNOWN_COMPONENTS,
    invalid: Iterable[tuple[str, str]] = (),
) -> None:
    """Create the self-metric series that can be named in advance, at 0."""
    errors = internal_errors(registry)
    for component in components:
        errors.labels(component)
    label_overflow_total(registry)
    dropped = invalid_values_total(registry)
    for metric, argument in invalid:
        dropped.labels(metric, argument)


def report_internal_error(registry: CollectorRegistry, component: str, exc: BaseException) -> None:
    """Count a fault of ours and log it the first time this kind of fault is seen.

    Never raises: it runs on the error path of the code that observes the application.
    """
    try:
        internal_errors(registry).labels(component).inc()
        if log_once(("internal", component, type(exc).__qualname__)):
            logger.error(
                "gatewayz-metrics: internal error in %s (logged once per kind; the request "
                "went on)",
                component,
                exc_info=exc,
            )
    except Exception:  # pragma: no cover - last line of defence
        pass


def report_invalid_value(
    registry: CollectorRegistry, metric: str, argument: str, exc: BaseException
) -> None:
    """Count a recording call dropped for an invalid value; log it once per kind.

    The log line carries the message strict mode would raise. Never raises.
    """
    try:
        invalid_values_total(registry).labels(metric, argument).inc()
        if log_once(("invalid", metric, argument, type(exc).__qualname__)):
            logger.warning(
                "gatewayz-metrics: dropped a %s recording: %s (logged once per kind; counted "
                "in gatewayz_metrics_invalid_values_total; set GATEWAYZ_METRICS_STRICT=1 to "
                "raise instead)",
                metric,
                exc,
            )
    except Exception:  # pragma: no cover - last line of defence
        pass


def report_dropped_exemplar(registry: CollectorRegistry, metric: str, exc: BaseException) -> None:
    """Count an application exemplar that was unusable (invalid, or its function raised).

    The observation itself is recorded, without an exemplar; the exemplar is counted in
    `invalid_values_total{metric, argument="exemplar"}`. Never raises.
    """
    try:
        invalid_values_total(registry).labels(metric, "exemplar").inc()
        if log_once(("exemplar", metric, type(exc).__qualname__)):
            logger.warning(
                "gatewayz-metrics: dropped the exemplar of a %s observation, recorded without "
                "it: %s: %s (logged once per kind; counted in "
                "gatewayz_metrics_invalid_values_total)",
                metric,
                type(exc).__name__,
                exc,
            )
    except Exception:  # pragma: no cover - last line of defence
        pass
