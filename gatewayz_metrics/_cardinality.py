"""Bounded label values: a hostile or buggy caller cannot explode the series count."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry

from gatewayz_metrics._internal import label_overflow_total

__all__ = ["OVERFLOW_VALUE", "BoundedLabel", "label_overflow_total"]

OVERFLOW_VALUE = "__other__"
"""The label value that every value past a label's cap folds into."""


class BoundedLabel:
    """Admits the first `max_values` distinct values of one label, folds the rest.

    Values already admitted pass through unchanged, so sums over the label stay exact:
    an overflowing value is still counted, under `__other__`.
    """

    __slots__ = ("_lock", "_max_values", "_overflow", "_seen", "label", "metric")

    def __init__(
        self, registry: CollectorRegistry, metric: str, label: str, max_values: int
    ) -> None:
        if isinstance(max_values, bool) or not isinstance(max_values, int) or max_values < 1:
            raise ValueError(
                f"the cap on distinct {label!r} values of {metric!r} must be a positive "
                f"integer, got {max_values!r}"
            )
        self.metric = metric
        self.label = label
        self._max_values = max_values
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._overflow = label_overflow_total(registry).labels(metric, label)

    @property
    def max_values(self) -> int:
        """How many distinct values this label admits before folding."""
        return self._max_values

    def __call__(self, value: str) -> str:
        # The unlocked membership test is the hot path; the lock only guards admission.
        if value in self._seen:
            return value
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self._max_values:
                self._seen.add(value)
                return value
        self._overflow.inc()
        return OVERFLOW_VALUE
