"""Domain helpers against the bare prometheus_client calls that record the same samples."""

from __future__ import annotations

import gc
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter, perf_counter_ns

from prometheus_client import CollectorRegistry, Counter, Histogram

PROVIDER = "openai"
MODEL = "gpt-4o"


@dataclass(frozen=True, slots=True)
class Pair:
    """A helper and its bare equivalent, each a zero-argument call recording one event."""

    name: str
    bare_description: str
    helper: Callable[[], None]
    bare: Callable[[], None]
    bound: Callable[[], None]
    check: Callable[[int], None]


def _tokens_pair() -> Pair:
    from gatewayz_metrics import GatewayMetrics

    ours = GatewayMetrics(CollectorRegistry())
    record = ours.record_tokens_used

    bare_registry = CollectorRegistry()
    tokens = Counter(
        "tokens_used", "Tokens.", ["provider", "model", "token_type"], registry=bare_registry
    )

    def helper() -> None:
        record(PROVIDER, MODEL, 120, 45)

    def bare() -> None:
        tokens.labels(PROVIDER, MODEL, "input").inc(120)
        tokens.labels(PROVIDER, MODEL, "output").inc(45)

    input_child = tokens.labels(PROVIDER, MODEL, "input")
    output_child = tokens.labels(PROVIDER, MODEL, "output")

    def bound() -> None:
        input_child.inc(120)
        output_child.inc(45)

    def check(calls: int) -> None:
        for registry in (ours.registry, bare_registry):
            labels = {"provider": PROVIDER, "model": MODEL, "token_type": "input"}
            got = registry.get_sample_value("tokens_used_total", labels)
            want = 120 * calls * (2 if registry is bare_registry else 1)
            if got != want:
                raise RuntimeError(f"record_tokens_used: expected {want}, got {got}")

    return Pair(
        "record_tokens_used",
        'Counter.labels(p, m, "input").inc(n) + Counter.labels(p, m, "output").inc(n)',
        helper,
        bare,
        bound,
        check,
    )


def _inference_pair() -> Pair:
    from gatewayz_metrics import GatewayMetrics

    ours = GatewayMetrics(CollectorRegistry())
    track = ours.track_model_inference

    bare_registry = CollectorRegistry()
    requests = Counter(
        "model_inference_requests",
        "Inference calls.",
        ["provider", "model", "status"],
        registry=bare_registry,
    )
    duration = Histogram(
        "model_inference_duration_seconds",
        "Inference duration.",
        ["provider", "model"],
        registry=bare_registry,
    )

    def helper() -> None:
        with track(PROVIDER, MODEL):
            pass

    def bare() -> None:
        start = perf_counter()
        requests.labels(PROVIDER, MODEL, "success").inc()
        duration.labels(PROVIDER, MODEL).observe(perf_counter() - start)

    requests_child = requests.labels(PROVIDER, MODEL, "success")
    duration_child = duration.labels(PROVIDER, MODEL)

    def bound() -> None:
        start = perf_counter()
        requests_child.inc()
        duration_child.observe(perf_counter() - start)

    def check(calls: int) -> None:
        for registry in (ours.registry, bare_registry):
            labels = {"provider": PROVIDER, "model": MODEL, "status": "success"}
            got = registry.get_sample_value("model_inference_requests_total", labels)
            want = calls * (2 if registry is bare_registry else 1)
            if got != want:
                raise RuntimeError(f"track_model_inference: expected {want}, got {got}")

    return Pair(
        "track_model_inference",
        'perf_counter() + Counter.labels(p, m, "success").inc() + Histogram.labels(p, m).observe()',
        helper,
        bare,
        bound,
        check,
    )


def _time_batch(call: Callable[[], None], calls: int) -> float:
    start = perf_counter_ns()
    for _ in range(calls):
        call()
    return (perf_counter_ns() - start) / calls


def measure(calls: int, batches: int) -> dict[str, object]:
    """ns per call of each helper, of its bare equivalent (`.labels()` on every call, as
    hand-written code does) and of the same with children bound once; batches alternate."""
    results: dict[str, object] = {}
    for pair in (_tokens_pair(), _inference_pair()):
        warmup = max(calls // 10, 10)
        sides = (pair.helper, pair.bare, pair.bound)
        for call in sides:
            for _ in range(warmup):
                call()
        per_batch = max(calls // batches, 1)
        timings: tuple[list[float], ...] = ([], [], [])
        gc.collect()
        for index in range(batches):
            # Alternating batches (rotating who goes first): drift within the process
            # hits every side alike.
            for offset in range(len(sides)):
                side = (index + offset) % len(sides)
                timings[side].append(_time_batch(sides[side], per_batch))
        pair.check(warmup + per_batch * batches)
        helper_ns, bare_ns, bound_ns = (statistics.median(t) for t in timings)
        results[pair.name] = {
            "helper_ns": helper_ns,
            "bare_ns": bare_ns,
            "bound_ns": bound_ns,
            "bare": pair.bare_description,
        }
    return results
