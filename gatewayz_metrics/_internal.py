"""Self-observation: faults inside our own bookkeeping are logged once and counted."""

from __future__ import annotations

import logging
import threading

from prometheus_client import CollectorRegistry, Counter

from gatewayz_metrics._registry import get_or_create

logger = logging.getLogger("gatewayz_metrics")

_logged: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()


def internal_errors(registry: CollectorRegistry) -> Counter:
    """The `gatewayz_metrics_internal_errors_total{component}` counter of `registry`."""
    return get_or_create(
        registry,
        "internal_errors",
        lambda: Counter(
            "gatewayz_metrics_internal_errors",
            "Faults inside gatewayz-metrics' own bookkeeping; the observed request went on.",
            ["component"],
            registry=registry,
        ),
    )


def report_internal_error(registry: CollectorRegistry, component: str, exc: BaseException) -> None:
    """Count a fault of ours and log it the first time this kind of fault is seen.

    Never raises: it runs on the error path of the code that observes the application.
    """
    try:
        internal_errors(registry).labels(component).inc()
        kind = (component, type(exc).__qualname__)
        with _logged_lock:
            if kind in _logged:
                return
            _logged.add(kind)
        logger.error(
            "gatewayz-metrics: internal error in %s (logged once per kind; the request went on)",
            component,
            exc_info=exc,
        )
    except Exception:  # pragma: no cover - last line of defence
        pass
