"""Property tests: for random registries, the fast renderer writes prometheus_client's very
bytes, in the text format and in OpenMetrics.

Random metric and label names (legacy and, where the installed prometheus_client accepts
them, UTF-8), label values with escapes and unicode, values including NaN, infinities, -0.0
and large integers, random buckets (negative ones too), units, exemplars, `_created` on and
off, and types the fast path hands to prometheus_client (Info, Enum, custom collectors,
callbacks) mixed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pytest
from _registries import created_metrics
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from gatewayz_metrics._render import OPENMETRICS, TEXT, Format, Renderer

# Surrogates cannot be encoded to UTF-8 by either encoder; everything else may appear.
TEXT_CHARS = st.characters(exclude_categories=["Cs"])
LEGACY_NAME = st.from_regex(r"[a-zA-Z_:][a-zA-Z0-9_:]{0,12}", fullmatch=True)
LEGACY_LABEL = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_]{0,8}", fullmatch=True)
NAME = st.one_of(LEGACY_NAME, st.text(TEXT_CHARS, min_size=1, max_size=8))
LABEL = st.one_of(LEGACY_LABEL, st.text(TEXT_CHARS, min_size=1, max_size=6))
LABEL_VALUE = st.one_of(
    st.text(TEXT_CHARS, max_size=12),
    st.sampled_from(['say "hi"', "back\\slash", "new\nline", "ünïcødé ✓", "", "{0}", "\x00"]),
)
NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e6, 999999.9999999999, 1e21, 2.0**63, 12345678.9]),
    st.integers(min_value=-(2**70), max_value=2**70),
)
AMOUNT = st.one_of(
    st.floats(min_value=0, allow_infinity=True, allow_nan=False),
    st.integers(min_value=0, max_value=2**64),
)
UNIT = st.sampled_from(["", "", "seconds", "bytes", "ratio"])
EXEMPLAR = st.one_of(
    st.none(),
    st.dictionaries(LEGACY_LABEL, st.text(TEXT_CHARS, max_size=10), min_size=1, max_size=2),
)
FORMATS = {"text": TEXT, "openmetrics": OPENMETRICS}
KINDS = ("counter", "gauge", "summary", "histogram", "info", "enum", "custom", "callback")


@dataclass
class Spec:
    """One metric to create: its kind, names, and what happens to its children."""

    kind: str
    name: str
    documentation: str
    unit: str
    labelnames: list[str]
    children: list[tuple[list[str], list[Any]]] = field(default_factory=list)
    buckets: list[float] = field(default_factory=list)


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    kind = draw(st.sampled_from(KINDS))
    labelnames = draw(st.lists(LABEL, max_size=3, unique=True))
    spec = Spec(
        kind=kind,
        name=draw(NAME),
        documentation=draw(st.text(TEXT_CHARS, max_size=20)),
        unit=draw(UNIT) if kind in ("counter", "gauge", "summary", "histogram") else "",
        labelnames=labelnames,
    )
    if kind == "histogram":
        bounds = draw(
            st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=5, unique=True)
        )
        spec.buckets = sorted(bounds) or [1.0]
    operation = st.tuples(NUMBER, EXEMPLAR) if kind != "counter" else st.tuples(AMOUNT, EXEMPLAR)
    count = draw(st.integers(min_value=0, max_value=4 if labelnames else 1))
    for _ in range(count):
        values = [draw(LABEL_VALUE) for _ in labelnames]
        spec.children.append((values, draw(st.lists(operation, max_size=3))))
    return spec


class CustomCollector:
    """A collector that is not one of prometheus_client's metric types."""

    def __init__(self, name: str, values: list[tuple[list[str], list[Any]]]) -> None:
        self._name = name
        self._values = values

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(self._name, "Custom.", labels=["k"])
        for index, (_, operations) in enumerate(self._values):
            family.add_metric([str(index)], float(len(operations)))
        return [family]


def build(spec: Spec, index: int, registry: CollectorRegistry) -> None:
    """Create `spec` in `registry`; names the installed release refuses are skipped."""
    name = f"{spec.name}_{index}"
    common: dict[str, Any] = {"registry": registry}
    try:
        if spec.kind == "custom":
            registry.register(CustomCollector(name, spec.children))
            return
        if spec.kind == "info":
            metric: Any = Info(name, spec.documentation, spec.labelnames, **common)
        elif spec.kind == "enum":
            metric = Enum(name, spec.documentation, spec.labelnames, states=["a", "b"], **common)
        elif spec.kind == "counter":
            metric = Counter(name, spec.documentation, spec.labelnames, unit=spec.unit, **common)
        elif spec.kind in ("gauge", "callback"):
            metric = Gauge(name, spec.documentation, spec.labelnames, unit=spec.unit, **common)
        elif spec.kind == "summary":
            metric = Summary(name, spec.documentation, spec.labelnames, unit=spec.unit, **common)
        else:
            metric = Histogram(name, spec.documentation, spec.labelnames, unit=spec.unit,
                               buckets=spec.buckets, **common)  # fmt: skip
    except ValueError:
        return  # a name or label this release refuses, or a clash with an earlier metric
    for labelvalues, operations in spec.children:
        child = metric.labels(*labelvalues) if spec.labelnames else metric
        for number, exemplar in operations:
            apply(spec.kind, child, number, exemplar)


def apply(kind: str, child: Any, number: Any, exemplar: dict[str, str] | None) -> None:
    """One update of a child; exemplars the installed release refuses are left out."""
    try:
        if kind == "counter":
            child.inc(number, exemplar=exemplar)
        elif kind == "gauge":
            child.set(number)
        elif kind == "callback":
            child.set_function(lambda: float(number))
        elif kind == "summary":
            child.observe(number)
        elif kind == "histogram":
            if math.isnan(number):
                return  # NaN fits no bucket: prometheus_client counts it nowhere
            child.observe(number, exemplar=exemplar)
        elif kind == "info":
            child.info({"version": str(number)})
        elif kind == "enum":
            child.state("b" if number else "a")
    except (ValueError, OverflowError):
        pass


def assert_both_formats_exact(registry: CollectorRegistry, renderer: Renderer) -> None:
    """Each format: the fast render is prometheus_client's encoder's bytes, or both raise.

    `_render_fast`, not `render`: the latter would hand the whole registry to
    prometheus_client should the fast path fail its first-use probe, and hide the fault.
    """
    for fmt in FORMATS.values():
        assert_exact(registry, renderer, fmt)


def assert_exact(registry: CollectorRegistry, renderer: Renderer, fmt: Format) -> None:
    try:
        expected: bytes | None = fmt.encode(registry)
    except Exception:
        expected = None  # e.g. a name that clashes once escaped: ours must fail too
    try:
        ours: bytes | None = asyncio.run(renderer._render_fast(registry, fmt))
    except Exception:
        ours = None
    assert ours == expected, fmt.name


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    metrics=st.lists(specs(), min_size=1, max_size=6),
    created=st.booleans(),
    target_info=st.one_of(st.none(), st.dictionaries(LEGACY_LABEL, LABEL_VALUE, max_size=2)),
)
def test_random_registries_render_like_prometheus_client_in_both_formats(
    metrics: list[Spec], created: bool, target_info: dict[str, str] | None
) -> None:
    """Any registry of any metric types: text and OpenMetrics bytes equal prometheus_client's."""
    registry = CollectorRegistry(target_info=target_info or None)
    for index, spec in enumerate(metrics):
        build(spec, index, registry)
    renderer = Renderer()
    with created_metrics(created):
        assert_both_formats_exact(registry, renderer)
        # A second render: the prefixes now come from the caches.
        assert_both_formats_exact(registry, renderer)


@settings(max_examples=200, deadline=None)
@given(
    labelvalues=st.lists(st.tuples(LABEL_VALUE, LABEL_VALUE), min_size=1, max_size=8),
    updates=st.lists(st.tuples(st.integers(0, 7), AMOUNT, EXEMPLAR, st.booleans()), max_size=12),
)
def test_cached_prefixes_follow_children_added_changed_and_removed(
    labelvalues: list[tuple[str, str]],
    updates: list[tuple[int, float, dict[str, str] | None, bool]],
) -> None:
    """Between renders children change, appear and disappear: every render stays exact."""
    registry = CollectorRegistry()
    counter = Counter("requests", "Requests.", ["a", "b"], registry=registry)
    histogram = Histogram("latency", "Latency.", ["a", "b"], unit="seconds", registry=registry)
    renderer = Renderer()
    for index, amount, exemplar, remove in updates:
        values = labelvalues[index % len(labelvalues)]
        if remove:
            # prometheus_client < 0.22 raises KeyError for a child that is not there.
            with contextlib.suppress(KeyError):
                counter.remove(*values)
            with contextlib.suppress(KeyError):
                histogram.remove(*values)
        else:
            apply("counter", counter.labels(*values), amount, exemplar)
            apply("histogram", histogram.labels(*values), amount, exemplar)
        assert_both_formats_exact(registry, renderer)


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=list(FORMATS))
def test_the_fast_path_is_proven_on_this_install(fmt: Format) -> None:
    """On the prometheus_client releases of the test matrix the fast path is on, not bypassed."""
    from gatewayz_metrics import _render

    assert asyncio.run(_render._fast_path_proven(fmt)) is True
