"""A fast text-format (0.0.4) encoder for a `CollectorRegistry`, sliced to run on the event loop.

`generate_latest` spends most of its time re-validating and re-escaping the labels of every
sample line, although a child's labels never change. `TextRenderer` reads prometheus_client's
own `Counter`, `Gauge`, `Summary` and `Histogram` children directly and caches, per child,
the escaped line prefixes (`name{label="value",...} `), so a render only formats values.

The rendering runs on the event loop in slices of about a millisecond, so requests served
by the same loop wait at most one slice; anything that may run user code or block (custom
collectors, `Gauge.set_function` callbacks) goes to a worker thread through prometheus_client's
own encoder. The output is byte-identical to `generate_latest(registry)`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from time import perf_counter
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
)
from prometheus_client import metrics as _metrics
from prometheus_client import utils as _utils
from prometheus_client import values as _values
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import escape_label_name, escape_metric_name
from prometheus_client.registry import Collector

from gatewayz_metrics._aio import checkpoint, run_sync

_SLICE_SECONDS = 0.001
"""Work done on the event loop between two yields to other tasks."""
_CHECK_EVERY = 32
"""Children rendered between two reads of the clock (at most ~0.1 ms of work)."""
_OVERRIDABLE = frozenset(("collect", "_samples", "_multi_samples", "_child_samples", "_get_metric"))
_INF = float("inf")
_Children = dict[tuple[str, ...], Any]
_float_to_go_string: Callable[[float], str] = _utils.floatToGoString


def format_value(value: float) -> str:
    """`prometheus_client.utils.floatToGoString(value)`, faster for the common values."""
    # For a float in (-inf, 1e6) floatToGoString returns repr(value): it only rewrites
    # infinities, NaN (both fail this test) and positive numbers of 7 or more integer digits.
    if value < 1e6 and value > -_INF and value.__class__ is float:
        return repr(value)
    return _float_to_go_string(value)


def _escape_help(documentation: str) -> str:
    return documentation.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Fixed:
    """A collector yielding the given metric families, to reuse `generate_latest` on them."""

    def __init__(self, metrics: Iterable[Metric]) -> None:
        self._metrics = list(metrics)

    def collect(self) -> Iterable[Metric]:
        return self._metrics


class _Chain:
    """The collectors one after the other, in order, as `CollectorRegistry.collect` does."""

    def __init__(self, collectors: Sequence[Collector]) -> None:
        self._collectors = collectors

    def collect(self) -> Iterable[Metric]:
        for collector in self._collectors:
            yield from collector.collect()


class CollectorError(Exception):
    """A collector rendered by prometheus_client's encoder raised; `__cause__` is what it raised.

    Not a fault of the fast path: rendering again with prometheus_client's encoder would run
    the failing collector a second time and fail the same way.
    """


def _encode(source: Collector) -> bytes:
    try:
        return generate_latest(source)
    except Exception as exc:
        raise CollectorError(type(exc).__name__) from exc


def _render_fallback(collectors: Sequence[Collector]) -> bytes:
    return _encode(_Chain(collectors))


class _Plan:
    """What never changes in the exposition of one metric: its header and line prefixes."""

    suffixes: tuple[str, ...] = ()
    has_created = False

    def __init__(self, metric: MetricWrapperBase) -> None:
        self.name: str = metric._name
        self.labelnames: tuple[str, ...] = metric._labelnames
        # Names are escaped once per metric; per child only the label values are.
        self.names = {suffix: escape_metric_name(self.name + suffix) for suffix in self.suffixes}
        self.label_keys = {name: escape_label_name(name) for name in (*self.labelnames, "le")}
        family: Metric = metric._get_metric()  # type: ignore[no-untyped-call]
        self.header = generate_latest(_Fixed([family])).decode()
        created = escape_metric_name(self.name + "_created")
        self.created_header = (
            f"# HELP {created} {_escape_help(metric._documentation)}\n# TYPE {created} gauge\n"
        )
        self.prefixes: dict[tuple[str, ...], tuple[str, ...]] = {}
        # `_created` is set once per child and slow to format (a large float): its
        # whole line is kept, with the value it was made from.
        self.created: dict[tuple[str, ...], tuple[float, str]] = {}

    def add(self, labelvalues: tuple[str, ...]) -> tuple[str, ...]:
        escaped = (_escape_label_value(value) for value in labelvalues)
        prefixes = self.line_prefixes(dict(zip(self.labelnames, escaped, strict=True)))
        self.prefixes[labelvalues] = prefixes
        return prefixes

    def line_prefixes(self, labels: dict[str, str]) -> tuple[str, ...]:
        return tuple(self.line_prefix(suffix, labels) for suffix in self.suffixes)

    def line_prefix(self, suffix: str, labels: dict[str, str]) -> str:
        """What `generate_latest` writes before a sample's value; `labels` are escaped."""
        if not labels:
            return f"{self.names[suffix]} "
        keys = self.label_keys
        pairs = ",".join([f'{keys[key]}="{value}"' for key, value in sorted(labels.items())])
        return f"{self.names[suffix]}{{{pairs}}} "

    def prune(self, children: _Children) -> None:
        # Children removed (remove(), clear()) leave prefixes behind; drop them once they
        # outnumber the live children, so the cache never outgrows the metric.
        if len(self.prefixes) > len(children):
            live = self.prefixes
            self.prefixes = {key: live[key] for key in children if key in live}
        if len(self.created) > len(children):
            lines = self.created
            self.created = {key: lines[key] for key in children if key in lines}

    def write(self, child: Any, prefixes: tuple[str, ...], out: list[str]) -> None:
        """Append the sample lines of `child` but its `_created` line to `out`."""
        raise NotImplementedError


class _CounterPlan(_Plan):
    suffixes = ("_total", "_created")
    has_created = True

    def write(self, child: Any, prefixes: tuple[str, ...], out: list[str]) -> None:
        out.append(prefixes[0] + format_value(child._value.get()) + "\n")


class _GaugePlan(_Plan):
    suffixes = ("",)

    def write(self, child: Any, prefixes: tuple[str, ...], out: list[str]) -> None:
        out.append(prefixes[0] + format_value(child._value.get()) + "\n")


class _SummaryPlan(_Plan):
    suffixes = ("_count", "_sum", "_created")
    has_created = True

    def write(self, child: Any, prefixes: tuple[str, ...], out: list[str]) -> None:
        out.append(prefixes[0] + format_value(child._count.get()) + "\n")
        out.append(prefixes[1] + format_value(child._sum.get()) + "\n")


class _HistogramPlan(_Plan):
    suffixes = ("_bucket", "_count", "_sum", "_created")
    has_created = True

    def __init__(self, metric: MetricWrapperBase) -> None:
        super().__init__(metric)
        bounds: list[float] = metric._upper_bounds  # type: ignore[attr-defined]
        self.bounds = tuple(_float_to_go_string(bound) for bound in bounds)
        # prometheus_client leaves `_sum` out when a bucket bound is negative.
        self.with_sum = bounds[0] >= 0

    def line_prefixes(self, labels: dict[str, str]) -> tuple[str, ...]:
        buckets = [self.line_prefix("_bucket", {**labels, "le": le}) for le in self.bounds]
        tail = ("_count", "_sum", "_created")
        return (*buckets, *(self.line_prefix(suffix, labels) for suffix in tail))

    def write(self, child: Any, prefixes: tuple[str, ...], out: list[str]) -> None:
        count = 0.0
        index = 0
        for bucket in child._buckets:
            count += bucket.get()
            out.append(prefixes[index] + format_value(count) + "\n")
            index += 1
        out.append(prefixes[index] + format_value(count) + "\n")
        if self.with_sum:
            out.append(prefixes[index + 1] + format_value(child._sum.get()) + "\n")


_PLANS: dict[type[Any], type[_Plan]] = {
    Counter: _CounterPlan,
    Gauge: _GaugePlan,
    Summary: _SummaryPlan,
    Histogram: _HistogramPlan,
}


class _NeedsThreadError(Exception):
    """A child turned out to need prometheus_client's own sampling (a callback)."""


class _Clock:
    """Tells when the current slice of work on the event loop is used up."""

    def __init__(self) -> None:
        self.deadline = perf_counter() + _SLICE_SECONDS

    def due(self) -> bool:
        return perf_counter() >= self.deadline

    async def pause(self) -> None:
        await checkpoint()
        self.restart()

    def restart(self) -> None:
        self.deadline = perf_counter() + _SLICE_SECONDS


class TextRenderer:
    """Renders registries like `generate_latest(registry)`, faster and without blocking the loop.

    Keeps per-metric caches between renders; one renderer can serve any number of
    registries and event loops.
    """

    def __init__(self) -> None:
        self._plans: weakref.WeakKeyDictionary[Collector, _Plan | None] = (
            weakref.WeakKeyDictionary()
        )

    async def render(self, registry: CollectorRegistry) -> bytes:
        """The text exposition (0.0.4) of `registry`, byte for byte `generate_latest`'s.

        A collector handed to prometheus_client's encoder that raises comes out as a
        `CollectorError` with the collector's exception as its cause.
        """
        if not _plain_registry(registry):
            return await run_sync(_encode, registry)
        with registry._lock:
            collectors = list(registry._collector_to_names)
            target_info: Metric | None = (
                registry._target_info_metric()  # type: ignore[no-untyped-call]
                if registry._target_info
                else None
            )
        chunks: list[bytes] = []
        if target_info is not None:
            chunks.append(generate_latest(_Fixed([target_info])))
        clock = _Clock()
        pending: list[Collector] = []  # consecutive collectors for one trip to a thread
        for collector in collectors:
            plan = self._plan(collector)
            if plan is not None:
                if pending:
                    chunks.append(await run_sync(_render_fallback, pending))
                    pending = []
                    clock.restart()
                try:
                    chunks.extend(await _render_metric(plan, collector, clock))
                    continue
                except _NeedsThreadError:
                    pass
            pending.append(collector)
        if pending:
            chunks.append(await run_sync(_render_fallback, pending))
        return b"".join(chunks)

    def _plan(self, collector: Collector) -> _Plan | None:
        try:
            return self._plans[collector]
        except KeyError:
            pass
        except TypeError:  # pragma: no cover - a collector that cannot be weakly referenced
            return None
        kind = _PLANS.get(type(collector))
        plan = None
        if kind is not None and not _OVERRIDABLE.intersection(vars(collector)):
            assert isinstance(collector, MetricWrapperBase)
            plan = kind(collector)
        self._plans[collector] = plan
        return plan


def _plain_registry(registry: CollectorRegistry) -> bool:
    """A registry whose `collect()` is prometheus_client's own, in single-process mode."""
    return (
        type(registry) is CollectorRegistry
        and "collect" not in vars(registry)
        and _values.ValueClass is _values.MutexValue
    )


async def _render_metric(plan: _Plan, metric: Any, clock: _Clock) -> list[bytes]:
    """The exposition of one metric, rendered on the loop, pausing whenever `clock` says."""
    if metric._is_parent():
        with metric._lock:
            # A copy of the dict, not a list of its items: one object for the garbage
            # collector instead of one tuple per child, all surviving into its oldest
            # generation (a full collection stalls the loop for tens of milliseconds).
            children: _Children = metric._metrics.copy()
    else:
        children = {(): metric}
    created = plan.has_created and _metrics._use_created
    out: list[str] = [plan.header]
    created_out: list[str] = []
    chunks: list[bytes] = []
    created_chunks: list[bytes] = []
    prefixes_of = plan.prefixes
    created_of = plan.created
    write = plan.write
    items = iter(children.items())
    for _ in range(0, len(children), _CHECK_EVERY):
        for labelvalues, child in islice(items, _CHECK_EVERY):
            if "_child_samples" in child.__dict__:
                # Gauge.set_function: a callback, which may block; prometheus_client's
                # own encoder calls it from a worker thread.
                raise _NeedsThreadError
            prefixes = prefixes_of.get(labelvalues)
            if prefixes is None:
                prefixes = plan.add(labelvalues)
            write(child, prefixes, out)
            if created:
                stamp = child._created
                line = created_of.get(labelvalues)
                if line is None or line[0] != stamp:
                    line = created_of[labelvalues] = (
                        stamp,
                        prefixes[-1] + format_value(stamp) + "\n",
                    )
                created_out.append(line[1])
        if clock.due():
            # Encoding per slice keeps the final join a copy of bytes, not a big encode.
            chunks.append("".join(out).encode())
            out.clear()
            if created_out:
                created_chunks.append("".join(created_out).encode())
                created_out.clear()
            await clock.pause()
            prefixes_of, created_of = plan.prefixes, plan.created
    plan.prune(children)
    chunks.append("".join(out).encode())
    if created_out:
        created_chunks.append("".join(created_out).encode())
    if created_chunks:
        chunks.append(plan.created_header.encode())
        chunks.extend(created_chunks)
    return chunks
