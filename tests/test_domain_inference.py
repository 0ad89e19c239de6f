"""`track_model_inference` and the other `track_*` helpers: outcomes, streaming timings,
context-manager and decorator forms."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import AsyncGenerator, Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from starlette.requests import ClientDisconnect

from gatewayz_metrics._domain import GatewayMetrics, InferenceHandle

LABELS = {"provider": "openrouter", "model": "openrouter/gpt-4"}


class FakeClock:
    """A `time.perf_counter` replacement that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Freeze the clock the trackers read, so timings are exact."""
    fake = FakeClock()
    monkeypatch.setattr(time, "perf_counter", fake)
    return fake


@pytest.fixture
def metrics(registry: CollectorRegistry) -> GatewayMetrics:
    """Domain metrics on the test's own registry."""
    return GatewayMetrics(registry)


def requests(registry: CollectorRegistry, status: str) -> float | None:
    """model_inference_requests_total of the test model for `status`."""
    return registry.get_sample_value("model_inference_requests_total", {**LABELS, "status": status})


def observed(registry: CollectorRegistry, family: str, suffix: str = "_count") -> float | None:
    """A `_count` or `_sum` of one of the test model's histograms."""
    return registry.get_sample_value(family + suffix, LABELS)


def test_success_counts_and_times_the_block(
    registry: CollectorRegistry, metrics: GatewayMetrics, clock: FakeClock
) -> None:
    """A block that ends normally is one `success` and one duration observation."""
    with metrics.track_model_inference("openrouter", "openrouter/gpt-4"):
        clock.now += 1.25
    assert requests(registry, "success") == 1
    assert requests(registry, "error") == 0
    assert observed(registry, "model_inference_duration_seconds", "_sum") == 1.25


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (RuntimeError("provider said no"), "error"),
        (TimeoutError("read timed out"), "timeout"),
        (asyncio.TimeoutError(), "timeout"),
        (concurrent.futures.TimeoutError(), "timeout"),
        (httpx.ReadTimeout("slow upstream"), "timeout"),
        (ClientDisconnect(), "cancelled"),
        (asyncio.CancelledError(), "cancelled"),
        (GeneratorExit(), "cancelled"),
        (KeyboardInterrupt(), "error"),
    ],
    ids=[
        "error",
        "TimeoutError",
        "asyncio.TimeoutError",
        "futures.TimeoutError",
        "httpx.ReadTimeout",
        "ClientDisconnect",
        "CancelledError",
        "GeneratorExit",
        "KeyboardInterrupt",
    ],
)
def test_outcome_of_an_escaping_exception_and_the_same_object_re_raised(
    registry: CollectorRegistry, metrics: GatewayMetrics, exc: BaseException, status: str
) -> None:
    """Each exception maps to its status and propagates unchanged (the very same object)."""
    with (
        pytest.raises(type(exc)) as raised,
        metrics.track_model_inference("openrouter", "openrouter/gpt-4"),
    ):
        raise exc
    assert raised.value is exc
    assert requests(registry, status) == 1
    assert observed(registry, "model_inference_duration_seconds") == 1


async def test_python_310_asyncio_timeout_error_is_a_timeout(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    """`asyncio.TimeoutError` (not a `TimeoutError` before Python 3.11) is recorded as timeout."""
    with pytest.raises(asyncio.TimeoutError):
        async with metrics.track_model_inference("openrouter", "openrouter/gpt-4"):
            raise asyncio.TimeoutError
    assert requests(registry, "timeout") == 1


async def test_wait_for_timeout_inside_plain_with_is_a_timeout(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    """A real `asyncio.wait_for` timeout inside the source document's plain `with` counts."""
    with (
        pytest.raises(asyncio.TimeoutError),
        metrics.track_model_inference("openrouter", "openrouter/gpt-4"),
    ):
        await asyncio.wait_for(asyncio.sleep(10), timeout=0.01)
    assert requests(registry, "timeout") == 1


async def test_cancelled_task_inside_plain_with_is_cancelled(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    """Cancelling the task that awaits inside `with` records `cancelled` and still cancels."""
    started = asyncio.Event()

    async def handler() -> None:
        with metrics.track_model_inference("openrouter", "openrouter/gpt-4"):
            started.set()
            await asyncio.sleep(10)

    task = asyncio.create_task(handler())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert requests(registry, "cancelled") == 1


async def test_stream_abandoned_by_the_client_is_cancelled(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    """A streaming generator closed early (the client left) records `cancelled`."""

    async def stream() -> AsyncGenerator[str, None]:
        with metrics.track_model_inference("openrouter", "openrouter/gpt-4") as call:
            for word in ("Hello", " world", "!"):
                call.first_token()
                yield word

    chunks = stream()
    assert await chunks.__anext__() == "Hello"
    await chunks.aclose()
    assert requests(registry, "cancelled") == 1
    assert observed(registry, "model_time_to_first_token_seconds") == 1


def test_streaming_time_to_first_token_and_time_per_output_token(
    registry: CollectorRegistry, metrics: GatewayMetrics, clock: FakeClock
) -> None:
    """TTFT is first_token() - start; TPOT is (duration - TTFT) / (output_tokens - 1)."""
    with metrics.track_model_inference("openrouter", "openrouter/gpt-4") as call:
        clock.now += 0.5
        call.first_token()
        clock.now += 0.25
        call.first_token()  # later chunks: no effect
        clock.now += 1.75
        call.set_usage(input_tokens=12, output_tokens=21)
    assert call.time_to_first_token == 0.5
    assert observed(registry, "model_time_to_first_token_seconds", "_sum") == 0.5
    assert observed(registry, "model_time_to_first_token_seconds") == 1
    assert observed(registry, "model_time_per_output_token_seconds", "_sum") == pytest.approx(0.1)
    assert observed(registry, "model_inference_duration_seconds", "_sum") == 2.5
    get = registry.get_sample_value
    assert get("tokens_used_total", {**LABELS, "token_type": "input"}) == 12
    assert get("tokens_used_total", {**LABELS, "token_type": "output"}) == 21


def test_usage_reported_after_the_block_still_gives_time_per_output_token(
    registry: CollectorRegistry, metrics: GatewayMetrics, clock: FakeClock
) -> None:
    """set_usage() after a successful block ended observes TPOT from the final duration."""
    with metrics.track_model_inference("openrouter", "openrouter/gpt-4") as call:
        clock.now += 1.0
        call.first_token()
        clock.now += 3.0
    call.set_usage(input_tokens=1, output_tokens=31)
    assert observed(registry, "model_time_per_output_token_seconds", "_sum") == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("first_token", "output_tokens", "fail"),
    [(False, 100, False), (True, 1, False), (True, 0, False), (True, 100, True)],
    ids=["no-first-token", "one-output-token", "no-output-tokens", "failed-stream"],
)
def test_time_per_output_token_is_not_observed_when_undefined(
    registry: CollectorRegistry,
    metrics: GatewayMetrics,
    first_token: bool,
    output_tokens: int,
    fail: bool,
) -> None:
    """No TPOT without a first token, with output_tokens <= 1, or for a failed stream."""
    with (
        pytest.raises(RuntimeError) if fail else contextlib.nullcontext(),
        metrics.track_model_inference("openrouter", "openrouter/gpt-4") as call,
    ):
        if first_token:
            call.first_token()
        call.set_usage(input_tokens=5, output_tokens=output_tokens)
        if fail:
            raise RuntimeError("stream broke")
    assert observed(registry, "model_time_per_output_token_seconds") == 0


def test_non_streaming_call_observes_no_time_to_first_token(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    """Without first_token() there is no TTFT observation (a plain completion)."""
    with metrics.track_model_inference("openrouter", "openrouter/gpt-4"):
        pass
    assert observed(registry, "model_time_to_first_token_seconds") == 0


def test_set_status_overrides_a_normal_end_but_not_an_exception(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    """set_status("error") marks a 200-with-error-body; an escaping exception still decides."""
    with metrics.track_model_inference("openrouter", "openrouter/gpt-4") as call:
        call.set_status("error")

    def timed_out() -> None:
        with metrics.track_model_inference("openrouter", "openrouter/gpt-4") as call:
            call.set_status("success")
            raise TimeoutError

    with pytest.raises(TimeoutError):
        timed_out()
    assert requests(registry, "error") == 1
    assert requests(registry, "timeout") == 1
    assert requests(registry, "success") == 0


def test_set_status_rejects_unknown_statuses(metrics: GatewayMetrics) -> None:
    """Only success, error, timeout and cancelled are statuses (the label stays bounded)."""
    with metrics.track_model_inference("p", "m") as call, pytest.raises(ValueError, match="teapot"):
        call.set_status("teapot")


def test_set_usage_twice_is_an_error_and_counts_once(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    """A second set_usage() would double-count tokens: it raises and records nothing."""
    with metrics.track_model_inference("openrouter", "openrouter/gpt-4") as call:
        call.set_usage(input_tokens=3, output_tokens=4)
        with pytest.raises(RuntimeError, match="already"):
            call.set_usage(input_tokens=3, output_tokens=4)
    assert registry.get_sample_value("tokens_used_total", {**LABELS, "token_type": "output"}) == 4


def test_first_token_after_the_block_is_ignored(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    """A stream iterated after the block ended cannot fake a TTFT longer than the call."""
    with metrics.track_model_inference("openrouter", "openrouter/gpt-4") as call:
        pass
    call.first_token()
    assert observed(registry, "model_time_to_first_token_seconds") == 0


def test_duration_count_equals_requests_over_all_statuses(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    """Every outcome is timed, so duration_count == sum of requests_total by status."""
    for exc in (None, RuntimeError(), TimeoutError(), asyncio.CancelledError()):
        with (
            pytest.raises(type(exc)) if exc else contextlib.nullcontext(),
            metrics.track_model_inference("openrouter", "openrouter/gpt-4"),
        ):
            if exc is not None:
                raise exc
    total = sum(requests(registry, s) or 0 for s in ("success", "error", "timeout", "cancelled"))
    assert total == 4
    assert observed(registry, "model_inference_duration_seconds") == 4


async def test_async_with_form(registry: CollectorRegistry, metrics: GatewayMetrics) -> None:
    """`async with track_model_inference(...) as call` works and yields the handle."""
    async with metrics.track_model_inference("openrouter", "openrouter/gpt-4") as call:
        assert isinstance(call, InferenceHandle)
        await asyncio.sleep(0)
    assert requests(registry, "success") == 1


def test_sync_decorator_measures_each_call(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    """As a decorator on a plain function: one observation per call, result passed through."""

    @metrics.track_model_inference("openrouter", "openrouter/gpt-4")
    def complete(prompt: str) -> str:
        if prompt == "fail":
            raise ValueError(prompt)
        return prompt.upper()

    assert complete("hi") == "HI"
    assert complete("there") == "THERE"
    with pytest.raises(ValueError, match="fail"):
        complete("fail")
    assert complete.__name__ == "complete"
    assert requests(registry, "success") == 2
    assert requests(registry, "error") == 1


async def test_async_decorator_measures_concurrent_calls_separately(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    """As a decorator on `async def`, overlapping calls each get their own measurement."""

    @metrics.track_model_inference("openrouter", "openrouter/gpt-4")
    async def complete(delay: float) -> float:
        await asyncio.sleep(delay)
        return delay

    results = await asyncio.gather(*(complete(0.01 * i) for i in range(10)))
    assert results == [0.01 * i for i in range(10)]
    assert requests(registry, "success") == 10
    assert observed(registry, "model_inference_duration_seconds") == 10


def test_decorating_a_generator_function_is_refused(metrics: GatewayMetrics) -> None:
    """Decorating a generator would time only its creation, so it is a TypeError."""

    def chunks() -> Iterator[str]:
        yield "x"

    with pytest.raises(TypeError, match="generator"):
        metrics.track_model_inference("p", "m")(chunks)


def test_one_tracker_cannot_measure_two_overlapping_blocks(metrics: GatewayMetrics) -> None:
    """Entering the same tracker object twice at once raises instead of mixing timings."""
    tracker = metrics.track_model_inference("p", "m")
    with tracker, pytest.raises(RuntimeError, match="already measuring"), tracker:
        pass
    with tracker:  # sequential reuse is fine
        pass


def test_a_fault_in_our_bookkeeping_never_reaches_the_application(
    registry: CollectorRegistry, metrics: GatewayMetrics, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If recording fails, the block's own result/exception stands and the fault is counted."""

    def broken(self: InferenceHandle, duration: float, exc: BaseException | None) -> None:
        raise RuntimeError("bookkeeping bug")

    monkeypatch.setattr(InferenceHandle, "_finish", broken)
    with metrics.track_model_inference("p", "m"):
        value = 42
    assert value == 42
    app_error = LookupError("the app's own")
    with pytest.raises(LookupError) as raised, metrics.track_model_inference("p", "m"):
        raise app_error
    assert raised.value is app_error
    assert (
        registry.get_sample_value(
            "gatewayz_metrics_internal_errors_total", {"component": "tracker.inference"}
        )
        == 2
    )


def test_database_query_with_and_decorator(
    registry: CollectorRegistry, metrics: GatewayMetrics, clock: FakeClock
) -> None:
    """track_database_query counts and times queries, failed ones included."""
    labels = {"table": "users", "operation": "select"}

    @metrics.track_database_query("users", "select")
    def lookup() -> None:
        clock.now += 0.002

    lookup()
    failure = ConnectionError("db down")

    def failing_query() -> None:
        with metrics.track_database_query("users", "select"):
            clock.now += 0.5
            raise failure

    with pytest.raises(ConnectionError) as raised:
        failing_query()
    assert raised.value is failure
    assert registry.get_sample_value("database_queries_total", labels) == 2
    duration_sum = registry.get_sample_value("database_query_duration_seconds_sum", labels)
    assert duration_sum == pytest.approx(0.502)


async def test_async_database_decorator(
    registry: CollectorRegistry, metrics: GatewayMetrics
) -> None:
    """track_database_query decorates `async def` functions too."""

    @metrics.track_database_query("credits", "update")
    async def debit() -> str:
        await asyncio.sleep(0)
        return "ok"

    assert await debit() == "ok"
    labels = {"table": "credits", "operation": "update"}
    assert registry.get_sample_value("database_queries_total", labels) == 1
