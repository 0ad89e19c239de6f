"""Every prometheus_client internal the package reads, in one place, checked once.

The fast renderer's (below), and multiprocess mode's (at the end): the value class chosen
at import, the `MmapedDict` file format (read by `_mpread`, written by the worker retirement
in `_multiprocess`) and `MultiProcessCollector.merge`.

prometheus_client has no public API for "the children of a metric" or "the value of a child";
the fast renderer (`_render.py`) reads its private attributes instead. Each one is named
here, and `STRUCTURE_PROBLEM` checks at import, on a throwaway registry, that every one
still exists *and still means what the renderer assumes* (types, lengths, values), not only
that an attribute of that name is there: a field that keeps its name but changes meaning
would otherwise give silently wrong output.

On top of that the fast path is enabled only for the prometheus_client releases the test
matrix proved byte-identical (`PROVEN`), and the first render of each format compares a
probe registry rendered both ways (`_render.Renderer`). Anything else renders through
prometheus_client's own encoders: slower, never wrong.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client import exposition as _exposition
from prometheus_client import metrics as _metrics
from prometheus_client import mmap_dict as _mmap_dict
from prometheus_client import utils as _utils
from prometheus_client import values as _values
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as _openmetrics

PROVEN = ((0, 20), (0, 26))
"""Lowest and highest prometheus_client release (major, minor) whose output the test matrix
proved byte-identical to the fast renderer's, both formats. Raise the upper bound only
after the byte-for-byte tests pass on the new release."""

Children = dict[tuple[str, ...], Any]


def _dist_info_version() -> str | None:
    """The version in the name of prometheus_client's `.dist-info` beside the package: what
    `importlib.metadata` would read, without its import (~8 ms of every start-up)."""
    try:
        site = os.path.dirname(os.path.dirname(os.path.abspath(_utils.__file__)))
        names = os.listdir(site)
    except OSError:  # pragma: no cover - a zip import or an unreadable directory
        return None
    found = [
        name[len("prometheus_client-") : -len(".dist-info")]
        for name in names
        if name.startswith("prometheus_client-") and name.endswith(".dist-info")
    ]
    return found[0] if len(found) == 1 else None


def _installed_version() -> tuple[int, ...]:
    text = _dist_info_version()
    if text is None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as distribution_version

        try:
            text = distribution_version("prometheus-client")
        except PackageNotFoundError:  # pragma: no cover - vendored or renamed distribution
            return ()
    parts: list[int] = []
    for part in text.split("."):
        digits = "".join(char for char in part if char.isdigit())
        if not digits:
            break
        parts.append(int(digits))
        if digits != part:
            break  # "1rc2": a pre-release of this number, not later parts
    return tuple(parts)


VERSION = _installed_version()
"""The installed prometheus_client release, e.g. (0, 26, 0)."""

text_encoder: Callable[..., bytes] = _exposition.generate_latest
openmetrics_encoder: Callable[..., bytes] = _openmetrics.generate_latest
float_to_go_string: Callable[[float], str] = _utils.floatToGoString
# 0.23 added escaping schemes; before, names were written as they are (0.22 quoted UTF-8 names).
UNDERSCORES: str | None = getattr(_openmetrics, "UNDERSCORES", None)
escape_metric_name: Callable[..., str] | None = getattr(_openmetrics, "escape_metric_name", None)
escape_label_name: Callable[..., str] | None = getattr(_openmetrics, "escape_label_name", None)

MULTIPROCESS_PROVEN = ((0, 26), (0, 26))
"""Releases whose multiprocess files, merge rules and encoders the fast multiprocess reader
(`_mpread`) was proven exact against (property tests against `MultiProcessCollector`); on
any other release `MultiProcessCollector` answers every scrape."""


def multiprocess_fast() -> bool:
    """Whether the fast multiprocess reader may serve the installed prometheus_client."""
    low, high = MULTIPROCESS_PROVEN
    return (
        low <= VERSION[:2] <= high
        and UNDERSCORES is not None
        and escape_metric_name is not None
        and escape_label_name is not None
    )


def format_of(encoder: Callable[..., bytes]) -> str | None:
    """ "text" or "openmetrics" when `encoder` (from `choose_encoder`) is one the fast path
    reproduces byte for byte: the 0.0.4 text (or 1.0.0 text with underscore escaping, the
    same bytes) or OpenMetrics 1.0.0 with underscore escaping; else None."""
    if encoder is text_encoder:
        return "text"
    if encoder is openmetrics_encoder:  # prometheus_client < 0.23: OpenMetrics 1.0.0
        return "openmetrics"
    if not isinstance(encoder, partial) or encoder.args:
        return None
    if encoder.func is text_encoder and encoder.keywords == {"escaping": UNDERSCORES}:
        return "text"
    if encoder.func is openmetrics_encoder and encoder.keywords == {
        "escaping": UNDERSCORES,
        "version": "1.0.0",
    }:
        return "openmetrics"
    return None


# --- registries ----------------------------------------------------------------------


def plain_registry(registry: CollectorRegistry) -> bool:
    """A registry whose `collect()` is prometheus_client's own, in single-process mode."""
    return (
        type(registry) is CollectorRegistry
        and "collect" not in vars(registry)
        and _values.ValueClass is _values.MutexValue
    )


def registry_contents(registry: CollectorRegistry) -> tuple[list[Any], Metric | None]:
    """The collectors in registration order and the target_info family, read as
    `CollectorRegistry.collect` reads them."""
    with registry._lock:
        collectors = list(registry._collector_to_names)
        target_info: Metric | None = (
            registry._target_info_metric()  # type: ignore[no-untyped-call]
            if registry._target_info
            else None
        )
    return collectors, target_info


# --- metrics -------------------------------------------------------------------------

OVERRIDABLE = frozenset(("collect", "_samples", "_multi_samples", "_child_samples", "_get_metric"))
"""Methods whose override on an instance means its samples are not the class's own."""


def family(metric: MetricWrapperBase) -> Metric:
    """The empty family (name, documentation, type, unit) `metric.collect()` fills."""
    return metric._get_metric()  # type: ignore[no-untyped-call,no-any-return]


def labelnames(metric: MetricWrapperBase) -> tuple[str, ...]:
    return tuple(metric._labelnames)


def upper_bounds(histogram: Histogram) -> list[float]:
    return histogram._upper_bounds


def children(metric: Any) -> Children:
    """labelvalues -> child, a snapshot taken under the metric's lock."""
    if metric._is_parent():
        with metric._lock:
            # A copy of the dict, not a list of its items: one object for the garbage
            # collector instead of one tuple per child, all surviving into its oldest
            # generation (a full collection stalls the loop for tens of milliseconds).
            copy: Children = metric._metrics.copy()
        return copy
    return {(): metric}


def has_callback(child: Any) -> bool:
    """`Gauge.set_function`: the child's samples come from a callback, which may block."""
    return "_child_samples" in child.__dict__


def use_created() -> bool:
    """Whether `_created` samples are exported (`disable_created_metrics()`)."""
    return bool(_metrics._use_created)


# The readers the renderer calls once per child. `_value`, `_count`, `_sum` and each of
# `_buckets` are `values.MutexValue` (checked below); `.get()` takes its lock, as
# prometheus_client's own `_child_samples` does.


def value(child: Any) -> float:
    """A Counter's or Gauge's value."""
    return child._value.get()  # type: ignore[no-any-return]


def created(child: Any) -> float:
    """When a Counter, Summary or Histogram child was created (or reset)."""
    return child._created  # type: ignore[no-any-return]


def exemplar(child: Any) -> Any:
    """A Counter child's exemplar (a `samples.Exemplar`) or None."""
    return child._value._exemplar


def summary_values(child: Any) -> tuple[float, float]:
    """A Summary child's count and sum."""
    return child._count.get(), child._sum.get()


def bucket_values(child: Any) -> list[Any]:
    """A Histogram child's buckets (non-cumulative counts; `.get()`, `._exemplar`) and sum."""
    return child._buckets  # type: ignore[no-any-return]


def histogram_sum(child: Any) -> float:
    return child._sum.get()  # type: ignore[no-any-return]


def bucket_exemplar(bucket: Any) -> Any:
    return bucket._exemplar


# --- the check -----------------------------------------------------------------------


def _structure_problem() -> str | None:
    """What the renderer assumes about prometheus_client, checked on a throwaway registry:
    None when every assumption holds, else what broke."""
    # A version string that does not parse is not a proven version either.
    if not VERSION or not PROVEN[0] <= VERSION[:2] <= PROVEN[1]:
        return f"prometheus_client {VERSION} is outside the proven range {PROVEN}"
    try:
        registry = CollectorRegistry()
        lock = registry._lock
        if not (hasattr(lock, "acquire") and hasattr(lock, "release")):
            return "CollectorRegistry._lock is not a lock"
        counter = Counter("probe", "Probe.", ["a"], registry=registry)
        gauge = Gauge("probe_gauge", "Probe.", registry=registry)
        summary = Summary("probe_summary", "Probe.", registry=registry)
        histogram = Histogram("probe_hist", "Probe.", ["a"], registry=registry, buckets=(1, 2))
        contents, target = registry_contents(registry)
        if contents != [counter, gauge, summary, histogram] or target is not None:
            return "CollectorRegistry._collector_to_names is not the collectors in order"
        if labelnames(counter) != ("a",) or counter._name != "probe":
            return "MetricWrapperBase._labelnames/_name changed"
        child = counter.labels("x")
        child.inc(2)
        if children(counter) != {("x",): child} or children(gauge) != {(): gauge}:
            return "MetricWrapperBase._metrics is not labelvalues -> child"
        if not isinstance(child._value, _values.MutexValue) or value(child) != 2.0:
            return "Counter._value is not the counter's MutexValue"
        if exemplar(child) is not None:
            return "MutexValue._exemplar is not the exemplar"
        child.inc(1, exemplar={"trace": "t"})
        if getattr(exemplar(child), "labels", None) != {"trace": "t"}:
            return "MutexValue._exemplar is not the exemplar"
        if not isinstance(created(child), float):
            return "Counter._created is not a timestamp"
        gauge.set(-1.5)
        if value(gauge) != -1.5 or has_callback(gauge):
            return "Gauge._value is not the gauge's value"
        gauge.set_function(lambda: 1.0)
        if not has_callback(gauge):
            return "Gauge.set_function no longer sets _child_samples on the instance"
        summary.observe(3)
        if summary_values(summary) != (1.0, 3.0) or not isinstance(created(summary), float):
            return "Summary._count/_sum/_created changed"
        bucketed = histogram.labels("y")
        bucketed.observe(1.5)
        bucketed.observe(7)
        buckets = bucket_values(bucketed)
        if upper_bounds(histogram) != [1.0, 2.0, float("inf")] or [
            bucket.get() for bucket in buckets
        ] != [0.0, 1.0, 1.0]:
            return "Histogram._upper_bounds/_buckets are not the bounds and per-bucket counts"
        if histogram_sum(bucketed) != 8.5 or bucket_exemplar(buckets[0]) is not None:
            return "Histogram._sum or a bucket's _exemplar changed"
        switch: object = _metrics._use_created
        if not isinstance(switch, bool):
            return "metrics._use_created is not the created-series switch"
        # format_value (`_render`) writes repr() for floats below 1e6, as floatToGoString does.
        for number in (0.0, -0.0, 1.5, -2.0, 999999.5, -1e300, 1e-300, 5e-324):
            if float_to_go_string(number) != repr(number):
                return "floatToGoString no longer writes repr() for ordinary floats"
    except Exception as exc:  # any change at all: prometheus_client's encoders take over
        return f"{type(exc).__name__}: {exc}"
    return None


_checked: list[str | None] = []
_check_lock = threading.Lock()


def structure_problem() -> str | None:
    """`_structure_problem()`, computed on first use and remembered (it builds metrics)."""
    with _check_lock:
        if not _checked:
            _checked.append(_structure_problem())
        return _checked[0]


# --- multiprocess mode ----------------------------------------------------------------

MmapedDict: Any = _mmap_dict.MmapedDict
"""The file of one worker and kind: `write_value`, `read_all_values_from_file`, `close`."""

MMAP_HEADER_BYTES = 8
"""`MmapedDict`'s header: the bytes used (4) and padding (4); a shorter file is unreadable."""


def multiprocess_mode() -> bool:
    """Whether prometheus_client picked its multiprocess value class (once, at its import,
    from `PROMETHEUS_MULTIPROC_DIR`)."""
    return bool(getattr(_values.ValueClass, "_multiprocess", False))


def multiprocess_structure_problem() -> str | None:
    """What of the multiprocess internals above is missing, or None: checked by the tests of
    every release in the matrix, and by `_multiprocess` before it rewrites any file."""
    for name in ("write_value", "read_all_values_from_file", "close"):
        if not callable(getattr(MmapedDict, name, None)):
            return f"prometheus_client.mmap_dict.MmapedDict.{name} is missing"
    from prometheus_client.multiprocess import MultiProcessCollector

    if not callable(getattr(MultiProcessCollector, "merge", None)):
        return "prometheus_client.multiprocess.MultiProcessCollector.merge is missing"
    return None
