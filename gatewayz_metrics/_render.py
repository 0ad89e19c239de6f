"""Fast encoders for a `CollectorRegistry`, text (0.0.4) and OpenMetrics 1.0.0, sliced on the loop.

`generate_latest` spends most of its time re-validating and re-escaping the labels of every
sample line, although a child's labels never change. `Renderer` reads prometheus_client's
own `Counter`, `Gauge`, `Summary` and `Histogram` children directly (through `_compat`) and
caches, per child, the escaped line prefixes (`name{label="value",...} `), so a render only
formats values. The prefixes are the same in both formats for ordinary names: a text and an
OpenMetrics plan of one metric then share one cache.

What a line looks like is not re-implemented here: each metric's header and line templates
are cut out of what the installed prometheus_client encoder writes for a probe family of that
metric (label values replaced by placeholders), so name escaping, quoting and the HELP
rules of every release are its own. Only label values, numbers and exemplars are written
here, and the first render of each format is compared with prometheus_client's bytes.

The rendering runs on the event loop in slices of about a millisecond, so requests served
by the same loop wait at most one slice; anything that may run user code or block (custom
collectors, `Gauge.set_function` callbacks) goes to a worker thread through prometheus_client's
own encoder. The output is byte-identical to `generate_latest(registry)` (text) and
`openmetrics.exposition.generate_latest(registry)` (OpenMetrics).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from gatewayz_metrics import _compat
from gatewayz_metrics._aio import checkpoint, run_sync
from gatewayz_metrics._internal import logger

_SLICE_SECONDS = 0.001
"""Work done on the event loop between two yields to other tasks."""
_CHECK_EVERY = 32
"""Children rendered between two reads of the clock (at most ~0.1 ms of work)."""
_INF = float("inf")
_PLACEHOLDER = re.compile("\x00([0-9]+)\x00")
_float_to_go_string = _compat.float_to_go_string


@dataclass(frozen=True, slots=True)
class Format:
    """An exposition format the fast path writes: how prometheus_client encodes it."""

    name: str
    encoder: Any  # Callable[[Collector], bytes]; Any: a frozen dataclass would bind it
    created_inline: bool
    """`_created` lines follow each child (OpenMetrics), or form a gauge family of their
    own after the metric (text)."""
    exemplars: bool
    trailer: bytes

    def encode(self, source: Collector) -> bytes:
        return self.encoder(source)  # type: ignore[no-any-return]


TEXT = Format("text", _compat.text_encoder, created_inline=False, exemplars=False, trailer=b"")
OPENMETRICS = Format(
    "openmetrics",
    _compat.openmetrics_encoder,
    created_inline=True,
    exemplars=True,
    trailer=b"# EOF\n",
)
_FORMATS = {TEXT.name: TEXT, OPENMETRICS.name: OPENMETRICS}


def format_for(encoder: Any) -> Format | None:
    """The format `encoder` (from `choose_encoder`) writes, when the fast path writes it too."""
    name = _compat.format_of(encoder)
    return None if name is None else _FORMATS[name]


def format_value(value: float) -> str:
    """`prometheus_client.utils.floatToGoString(value)`, faster for the common values."""
    # For a float in (-inf, 1e6) floatToGoString returns repr(value): it only rewrites
    # infinities, NaN (both fail this test) and positive numbers of 7 or more integer digits.
    # `_compat` checks this reading of floatToGoString against the installed release.
    if value < 1e6 and value > -_INF and value.__class__ is float:
        return repr(value)
    return _float_to_go_string(value)


def format_exemplar(exemplar: Any) -> str:
    """What prometheus_client's OpenMetrics encoder appends to a line with an exemplar."""
    labels = ",".join(
        f'{key}="{_escape_label_value(text)}"' for key, text in sorted(exemplar.labels.items())
    )
    stamp = "" if exemplar.timestamp is None else f" {exemplar.timestamp}"
    return f" # {{{labels}}} {_float_to_go_string(exemplar.value)}{stamp}"


def _escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Fixed:
    """A collector yielding the given metric families, to reuse prometheus_client's encoders."""

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


def _encode(source: Collector, fmt: Format) -> bytes:
    try:
        return fmt.encode(source)
    except Exception as exc:
        raise CollectorError(type(exc).__name__) from exc


def _encode_part(source: Collector, fmt: Format) -> bytes:
    """`_encode` without the trailer (`# EOF`), to be joined with other parts."""
    body = _encode(source, fmt)
    return body[: len(body) - len(fmt.trailer)]


def _render_fallback(collectors: Sequence[Collector], fmt: Format) -> bytes:
    return _encode_part(_Chain(collectors), fmt)


class _Lines:
    """Per-child caches of one metric: line prefixes and `_created` lines by labelvalues.

    Shared by the text and the OpenMetrics plan of a metric when both write the same prefixes.
    """

    __slots__ = ("created", "prefixes")

    def __init__(self) -> None:
        self.prefixes: dict[tuple[str, ...], tuple[str, ...]] = {}
        # `_created` is set once per child and slow to format (a large float): its
        # whole line is kept, with the value it was made from.
        self.created: dict[tuple[str, ...], tuple[float, str]] = {}

    def prune(self, children: _compat.Children) -> None:
        # Children removed (remove(), clear()) leave prefixes behind; drop them once they
        # outnumber the live children, so the cache never outgrows the metric.
        if len(self.prefixes) > len(children):
            live = self.prefixes
            self.prefixes = {key: live[key] for key in children if key in live}
        if len(self.created) > len(children):
            lines = self.created
            self.created = {key: lines[key] for key in children if key in lines}


class PlanError(Exception):
    """prometheus_client wrote a probe family in a shape the fast path does not reproduce."""


class Plan:
    """What never changes in the exposition of one metric family in one format: its header
    and, per child, its line prefixes.

    `family` is the empty family (name, documentation, type, unit); `samples` the sample
    suffixes of one child with their fixed labels (a histogram's `le`), `_created` last when
    the type has one; `labelnames` the child labels. Any collector of prometheus_client's
    metric types can be described so (the multiprocess reader too).
    """

    has_created = False

    def __init__(
        self,
        fmt: Format,
        family: Metric,
        labelnames: Sequence[str],
        samples: Sequence[tuple[str, dict[str, str]]],
    ) -> None:
        self.format = fmt
        self.labelnames = tuple(labelnames)
        self.exemplars = fmt.exemplars
        for suffix, fixed in samples:
            labels = {name: f"\x00{index}\x00" for index, name in enumerate(self.labelnames)}
            family.add_sample(family.name + suffix, {**labels, **fixed}, 0.0)
        text = fmt.encode(_Fixed([family])).decode()
        trailer = fmt.trailer.decode()
        if not text.endswith(trailer):
            raise PlanError(f"no {trailer!r} at the end")
        header: list[str] = []
        between: list[str] = []
        templates: list[str] = []
        for line in text[: len(text) - len(trailer)].split("\n")[:-1]:
            if line.startswith("#"):
                (between if templates else header).append(line + "\n")
            else:
                templates.append(self._template(line))
        if len(templates) != len(samples) or (between and fmt.created_inline):
            raise PlanError("sample lines not in the probe's order")
        self.header = "".join(header)
        self.created_header = "".join(between)
        self.templates = tuple(templates)
        self.lines = _Lines()

    def _template(self, line: str) -> str:
        """A `str.format` template of a probe line's prefix: `{i}` for escaped label value i."""
        if not line.endswith(" 0.0"):
            raise PlanError("a probe line does not end with its value")
        prefix = line[:-3].replace("{", "{{").replace("}", "}}")
        indices = sorted(int(index) for index in _PLACEHOLDER.findall(prefix))
        if indices != list(range(len(self.labelnames))):
            raise PlanError("label placeholders lost")
        return _PLACEHOLDER.sub(r"{\1}", prefix)

    def add(self, labelvalues: tuple[str, ...]) -> tuple[str, ...]:
        """The line prefixes of the child `labelvalues`, made and cached."""
        escaped = [_escape_label_value(value) for value in labelvalues]
        prefixes = tuple(template.format(*escaped) for template in self.templates)
        self.lines.prefixes[labelvalues] = prefixes
        return prefixes

    def write(self, child: Any, prefixes: tuple[str, ...], out: list[str]) -> None:
        """Append the sample lines of `child` but its `_created` line to `out`."""
        raise NotImplementedError


class _CounterPlan(Plan):
    has_created = True

    def write(self, child: Any, prefixes: tuple[str, ...], out: list[str]) -> None:
        if self.exemplars:
            exemplar = _compat.exemplar(child)
            if exemplar is not None:
                line = prefixes[0] + format_value(_compat.value(child))
                out.append(line + format_exemplar(exemplar) + "\n")
                return
        out.append(prefixes[0] + format_value(_compat.value(child)) + "\n")


class _GaugePlan(Plan):
    def write(self, child: Any, prefixes: tuple[str, ...], out: list[str]) -> None:
        out.append(prefixes[0] + format_value(_compat.value(child)) + "\n")


class _SummaryPlan(Plan):
    has_created = True

    def write(self, child: Any, prefixes: tuple[str, ...], out: list[str]) -> None:
        count, total = _compat.summary_values(child)
        out.append(prefixes[0] + format_value(count) + "\n")
        out.append(prefixes[1] + format_value(total) + "\n")


class _HistogramPlan(Plan):
    has_created = True
    with_sum = True

    def write(self, child: Any, prefixes: tuple[str, ...], out: list[str]) -> None:
        count = 0.0
        index = 0
        if self.exemplars:
            for bucket in _compat.bucket_values(child):
                count += bucket.get()
                exemplar = _compat.bucket_exemplar(bucket)
                tail = "\n" if exemplar is None else format_exemplar(exemplar) + "\n"
                out.append(prefixes[index] + format_value(count) + tail)
                index += 1
        else:
            for bucket in _compat.bucket_values(child):
                count += bucket.get()
                out.append(prefixes[index] + format_value(count) + "\n")
                index += 1
        out.append(prefixes[index] + format_value(count) + "\n")
        if self.with_sum:
            out.append(prefixes[index + 1] + format_value(_compat.histogram_sum(child)) + "\n")


def plan_for(metric: MetricWrapperBase, fmt: Format) -> Plan | None:
    """The plan of one of prometheus_client's own metric objects, or None when the fast path
    does not render it (another type, a subclass, overridden sampling)."""
    kind = type(metric)
    if kind not in (Counter, Gauge, Summary, Histogram):
        return None
    if _compat.OVERRIDABLE.intersection(vars(metric)):
        return None
    family = _compat.family(metric)
    labelnames = _compat.labelnames(metric)
    if kind is Counter:
        return _CounterPlan(fmt, family, labelnames, [("_total", {}), ("_created", {})])
    if kind is Gauge:
        return _GaugePlan(fmt, family, labelnames, [("", {})])
    if kind is Summary:
        suffixes: list[tuple[str, dict[str, str]]] = [
            ("_count", {}),
            ("_sum", {}),
            ("_created", {}),
        ]
        return _SummaryPlan(fmt, family, labelnames, suffixes)
    bounds = _compat.upper_bounds(metric)  # type: ignore[arg-type]
    # prometheus_client leaves `_sum` out when a bucket bound is negative.
    with_sum = bounds[0] >= 0
    samples: list[tuple[str, dict[str, str]]] = [
        ("_bucket", {"le": _float_to_go_string(bound)}) for bound in bounds
    ]
    samples += [("_count", {}), *([("_sum", {})] if with_sum else []), ("_created", {})]
    plan = _HistogramPlan(fmt, family, labelnames, samples)
    plan.with_sum = with_sum
    return plan


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


_verdicts: dict[str, bool] = {}
"""Format name -> whether the fast path writes prometheus_client's bytes on this install."""


class Renderer:
    """Renders registries like prometheus_client's encoders, faster and without blocking the loop.

    Keeps per-metric caches between renders, shared by the two formats; one renderer can
    serve any number of registries and event loops.
    """

    def __init__(self) -> None:
        self._plans: weakref.WeakKeyDictionary[Collector, dict[str, Plan | None]] = (
            weakref.WeakKeyDictionary()
        )

    async def render(self, registry: CollectorRegistry, fmt: Format = TEXT) -> bytes:
        """The exposition of `registry` in `fmt`, byte for byte prometheus_client's.

        A collector handed to prometheus_client's encoder that raises comes out as a
        `CollectorError` with the collector's exception as its cause.
        """
        if not _compat.plain_registry(registry) or not await _fast_path_proven(fmt):
            return await run_sync(_encode, registry, fmt)
        return await self._render_fast(registry, fmt)

    async def _render_fast(self, registry: CollectorRegistry, fmt: Format) -> bytes:
        collectors, target_info = _compat.registry_contents(registry)
        chunks: list[bytes] = []
        if target_info is not None:
            chunks.append(_encode_part(_Fixed([target_info]), fmt))
        clock = _Clock()
        pending: list[Collector] = []  # consecutive collectors for one trip to a thread
        for collector in collectors:
            plan = self._plan(collector, fmt)
            if plan is not None:
                if pending:
                    chunks.append(await run_sync(_render_fallback, pending, fmt))
                    pending = []
                    clock.restart()
                try:
                    chunks.extend(await _render_metric(plan, collector, clock))
                    continue
                except _NeedsThreadError:
                    pass
            pending.append(collector)
        if pending:
            chunks.append(await run_sync(_render_fallback, pending, fmt))
        chunks.append(fmt.trailer)
        return b"".join(chunks)

    def _plan(self, collector: Collector, fmt: Format) -> Plan | None:
        try:
            plans = self._plans[collector]
        except KeyError:
            plans = self._plans[collector] = {}
        except TypeError:  # pragma: no cover - a collector that cannot be weakly referenced
            return None
        try:
            return plans[fmt.name]
        except KeyError:
            pass
        plan = None
        if isinstance(collector, MetricWrapperBase):
            try:
                plan = plan_for(collector, fmt)
            except PlanError:
                plan = None
        if plan is not None:
            for other in plans.values():
                if other is not None and other.templates == plan.templates:
                    plan.lines = other.lines  # the same prefixes: one cache for both formats
                    break
        plans[fmt.name] = plan
        return plan


TextRenderer = Renderer
"""The former name, from when only the text format was rendered here."""


async def _fast_path_proven(fmt: Format) -> bool:
    """Whether the fast path may serve `fmt`: prometheus_client is a release the test matrix
    proved, its internals mean what `_compat` expects, and a probe registry renders to
    prometheus_client's very bytes. Decided once per format and process."""
    verdict = _verdicts.get(fmt.name)
    if verdict is not None:
        return verdict
    problem = _compat.structure_problem()
    if problem is None:
        probe = _probe_registry()
        try:
            ours = await Renderer()._render_fast(probe, fmt)
            if ours != fmt.encode(probe):
                problem = "a probe registry renders differently"
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        logger.warning(
            "gatewayz-metrics: fast %s renderer disabled, prometheus_client's encoder "
            "is used instead (%s)",
            fmt.name,
            problem,
        )
    _verdicts[fmt.name] = verdict = problem is None
    return verdict


def _probe_registry() -> CollectorRegistry:
    """One metric of each type the fast path renders, labels that need escaping, a unit,
    an exemplar, special values."""
    registry = CollectorRegistry()
    counter = Counter("probe_requests", 'Help with "quotes",\nlines\\.', ["a", "b"],
                      registry=registry)  # fmt: skip
    counter.labels('say "hi"\n', "back\\slash ✓").inc(1e21)
    counter.labels("x", "").inc(2, exemplar={"trace_id": 'a"b'})
    gauge = Gauge("probe_temperature", "T.", ["room"], unit="celsius", registry=registry)
    for room, number in (("nan", float("nan")), ("inf", _INF), ("zero", -0.0)):
        gauge.labels(room).set(number)
    Gauge("probe_up", "Up.", registry=registry).set(12345678.9)
    histogram = Histogram("probe_latency", "L.", ["route"], unit="seconds",
                          buckets=(0.5, 1e7), registry=registry)  # fmt: skip
    histogram.labels("/a").observe(0.25, exemplar={"trace_id": "t"})
    Histogram("probe_drift", "D.", buckets=(-1, 1), registry=registry).observe(0)
    Summary("probe_size", "S.", ["kind"], unit="bytes", registry=registry).labels("k").observe(3)
    return registry


async def _render_metric(plan: Plan, metric: Any, clock: _Clock) -> list[bytes]:
    """The exposition of one metric, rendered on the loop, pausing whenever `clock` says."""
    children = _compat.children(metric)
    created = plan.has_created and _compat.use_created()
    inline = plan.format.created_inline
    out: list[str] = [plan.header]
    created_out: list[str] = out if inline else []
    chunks: list[bytes] = []
    created_chunks: list[bytes] = []
    lines = plan.lines
    prefixes_of = lines.prefixes
    created_of = lines.created
    write = plan.write
    has_callback = _compat.has_callback
    stamp_of = _compat.created
    items = iter(children.items())
    for _ in range(0, len(children), _CHECK_EVERY):
        for labelvalues, child in islice(items, _CHECK_EVERY):
            if has_callback(child):
                # Gauge.set_function: a callback, which may block; prometheus_client's
                # own encoder calls it from a worker thread.
                raise _NeedsThreadError
            prefixes = prefixes_of.get(labelvalues)
            if prefixes is None:
                prefixes = plan.add(labelvalues)
            write(child, prefixes, out)
            if created:
                stamp = stamp_of(child)
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
            if created_out and not inline:
                created_chunks.append("".join(created_out).encode())
                created_out.clear()
            await clock.pause()
            lines = plan.lines
            prefixes_of, created_of = lines.prefixes, lines.created
    plan.lines.prune(children)
    chunks.append("".join(out).encode())
    if created_out and not inline:
        created_chunks.append("".join(created_out).encode())
    if created_chunks:
        chunks.append(plan.created_header.encode())
        chunks.extend(created_chunks)
    return chunks
