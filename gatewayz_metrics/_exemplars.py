"""Exemplars: the trace behind one observation, attached to the histogram bucket it fell in.

Two sources, one rule each:

- automatic: the active OpenTelemetry span, when the application has imported
  `opentelemetry.trace` (a sampled span only: an unsampled trace is never exported, so a
  link to it would lead nowhere). OpenTelemetry is never imported here: an application
  that does not use it pays one dictionary look-up per observation;
- the application's own function or mapping, checked by `check_exemplar`.

Exemplars reach Prometheus in the OpenMetrics format only (the text format has none), and
not at all in multiprocess mode, where prometheus_client keeps none.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from typing import Any, cast

from prometheus_client import CollectorRegistry

from gatewayz_metrics._internal import report_dropped_exemplar, report_internal_error
from gatewayz_metrics._secrets import fingerprint, looks_like_secret
from gatewayz_metrics._validation import InvalidTypeError, InvalidValueError, shown

Exemplar = dict[str, str]
"""Exemplar labels, as `Histogram.observe(amount, exemplar=...)` takes them."""

ExemplarOption = bool | Mapping[str, str] | Callable[..., Any]
"""`exemplar=` of the middleware and the trackers: `True` (the active OpenTelemetry span,
the default), `False` (none), a mapping (the tracker) or a function returning one or None."""

MAX_EXEMPLAR_CHARS = 128
"""OpenMetrics: the names and values of an exemplar's labels, together, in UTF-8 characters."""

ARGUMENT = "exemplar"
"""The `argument` label of a dropped exemplar in `gatewayz_metrics_invalid_values_total`."""

_TRACE_MODULE = "opentelemetry.trace"
_modules = sys.modules
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_W3C_ID = re.compile(r"[0-9a-f]{16}|[0-9a-f]{32}")
# Keys under which a W3C trace or span id is expected. Those ids are random hex, which the
# secret rule flags: under these keys alone, a well-formed id is kept as it is.
_ID_KEYS = frozenset({"trace_id", "span_id", "traceid", "spanid"})


def span_exemplar() -> Exemplar | None:
    """`trace_id` and `span_id` (lower-case hex) of the active, sampled OpenTelemetry span.

    None without one, and at the cost of one dict look-up when OpenTelemetry was never
    imported. May raise if OpenTelemetry itself fails: callers count that as their fault.
    """
    trace = _modules.get(_TRACE_MODULE)
    if trace is None:
        return None
    span = trace.get_current_span()
    if span is trace.INVALID_SPAN:  # no span: the common case stops at the cheapest test
        return None
    context = span.get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return None
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def check_exemplar(value: object) -> Exemplar | None:
    """The exemplar labels of an application-supplied mapping, or an `InvalidArgumentError`.

    None or an empty mapping: no exemplar. Names must be label names (not `__`-prefixed);
    values strings. A value that looks like a credential becomes its `sha256:` fingerprint,
    except a well-formed W3C id (16 or 32 lower-case hex digits) under `trace_id`/`span_id`;
    lone surrogates become `?`. Names and values together must fit in 128 characters,
    else the exemplar is refused (a cut trace id would link to nothing).
    """
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidTypeError(
            ARGUMENT,
            f"an exemplar must be a mapping of str to str or None, got "
            f"{type(value).__name__} {shown(value)}",
        )
    labels: Exemplar = {}
    size = 0
    for name, raw in value.items():
        if not isinstance(name, str) or not _LABEL_NAME.fullmatch(name) or name[:2] == "__":
            raise InvalidValueError(
                ARGUMENT, f"exemplar label names must be valid label names, got {shown(name)}"
            )
        if not isinstance(raw, str):
            raise InvalidTypeError(
                ARGUMENT,
                f"exemplar label {name!r} must be a str, got {type(raw).__name__}",
            )
        text = raw if raw.isascii() else raw.encode("utf-8", "replace").decode("utf-8")
        if not (name.lower() in _ID_KEYS and _W3C_ID.fullmatch(text)) and (
            len(text) > MAX_EXEMPLAR_CHARS or looks_like_secret(text)
        ):
            text = fingerprint(raw)
        labels[name] = text
        size += len(name) + len(text)
    if size > MAX_EXEMPLAR_CHARS:
        raise InvalidValueError(
            ARGUMENT,
            f"exemplar labels have {size} characters (names and values), more than the "
            f"{MAX_EXEMPLAR_CHARS} OpenMetrics allows: {sorted(labels)}",
        )
    return labels or None


def check_option(argument: str, option: object, *, mapping: bool) -> ExemplarOption:
    """Validate an `exemplar=` configuration: a bool, a function, or (`mapping`) a mapping."""
    if isinstance(option, bool) or callable(option) or (mapping and isinstance(option, Mapping)):
        return option
    kinds = "True, False, a mapping or a function" if mapping else "True, False or a function"
    raise TypeError(f"{argument} must be {kinds}, got {shown(option)}")


def exemplar_for(
    registry: CollectorRegistry, metric: str, option: ExemplarOption, *args: Any
) -> Exemplar | None:
    """The exemplar of one `metric` observation under `option`; never raises.

    `True`: the active span (a fault inside OpenTelemetry counts in
    `internal_errors_total{component="exemplar"}`). A function is called with `args`; it
    raising or returning something invalid drops the exemplar, counted in
    `invalid_values_total{metric, argument="exemplar"}`, and the observation is recorded.
    """
    if option is True:
        if _modules.get(_TRACE_MODULE) is None:
            return None
        try:
            return span_exemplar()
        except Exception as exc:
            report_internal_error(registry, "exemplar", exc)
            return None
    if option is False:
        return None
    if not callable(option):
        return cast(Exemplar, option)  # checked when it was given (`check_exemplar`)
    try:
        return check_exemplar(option(*args))
    except Exception as exc:
        report_dropped_exemplar(registry, metric, exc)
        return None
