"""One set of metric objects per registry, created once and shared.

prometheus_client refuses to register a metric name twice in one registry. Starlette
rebuilds its middleware stack, tests build two apps, and the HTTP metrics are shared
by the middleware and `track_http_request`: all of them ask here instead of creating
metrics themselves, so registration happens exactly once per registry and kind.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import TypeVar

from prometheus_client import REGISTRY, CollectorRegistry

T = TypeVar("T")

_lock = threading.RLock()  # factories may ask for other objects of the same registry
_per_registry: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, object]] = (
    weakref.WeakKeyDictionary()
)


def resolve_registry(registry: CollectorRegistry | None) -> CollectorRegistry:
    """Return `registry`, or prometheus_client's default one for `None`."""
    if registry is None:
        return REGISTRY
    if not isinstance(registry, CollectorRegistry):
        raise TypeError(
            f"registry must be a prometheus_client CollectorRegistry or None, got {registry!r}"
        )
    return registry


def get_or_create(registry: CollectorRegistry, key: str, factory: Callable[[], T]) -> T:
    """Return the object stored under `key` for `registry`, creating it with `factory` once."""
    with _lock:
        objects = _per_registry.setdefault(registry, {})
        try:
            existing = objects[key]
        except KeyError:
            created = factory()
            objects[key] = created
            return created
    return existing  # type: ignore[return-value]
