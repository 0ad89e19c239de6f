"""Concurrency: helpers called from many threads (and tasks) keep exact sums, and the
families and the default instance are created once however many callers race for them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from gatewayz_metrics import _domain
from gatewayz_metrics._domain import GatewayMetrics

THREADS = 8
CALLS = 5_000


def run_in_threads(work: Callable[[int], None]) -> None:
    """Start THREADS threads at once on `work(thread_index)` and wait for all."""
    barrier = threading.Barrier(THREADS)

    def target(index: int) -> None:
        barrier.wait()
        work(index)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_threads_keep_counter_sums_exact(registry: CollectorRegistry) -> None:
    """8 threads x 5,000 calls each: tokens and credits add up exactly, folded or not."""
    metrics = GatewayMetrics(registry, label_caps={"user_id": 4})

    def work(index: int) -> None:
        for i in range(CALLS):
            metrics.record_tokens_used("openrouter", "gpt-4", 3, 2)
            metrics.record_credits_used("openrouter", "gpt-4", f"user{i % 8}", 0.25)
            with metrics.track_model_inference("openrouter", f"model{index % 2}"):
                pass

    run_in_threads(work)
    get = registry.get_sample_value
    model = {"provider": "openrouter", "model": "gpt-4"}
    assert get("tokens_used_total", {**model, "token_type": "input"}) == 3 * THREADS * CALLS
    assert get("tokens_used_total", {**model, "token_type": "output"}) == 2 * THREADS * CALLS
    credits = sum(
        get("credits_used_total", {**model, "user_id": f"user{u}"}) or 0 for u in range(8)
    )
    credits += get("credits_used_total", {**model, "user_id": "__other__"}) or 0
    assert credits == 0.25 * THREADS * CALLS
    inference = sum(
        get("model_inference_requests_total", {"provider": "openrouter", "model": f"model{m}", "status": "success"}) or 0  # noqa: E501
        for m in range(2)
    )  # fmt: skip
    assert inference == THREADS * CALLS


def test_racing_constructors_share_one_set_of_families(registry: CollectorRegistry) -> None:
    """Many threads building GatewayMetrics on one fresh registry at once never clash."""
    built: list[GatewayMetrics] = []
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            metrics = GatewayMetrics(registry)
            metrics.record_cache_hit("shared")
            built.append(metrics)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    run_in_threads(work)
    assert errors == []
    assert len({id(m._families) for m in built}) == 1
    assert registry.get_sample_value("cache_hits_total", {"cache_name": "shared"}) == THREADS


def test_the_default_instance_is_created_once_under_a_race(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The module-level helpers create their default instance lazily and exactly once."""
    created: list[GatewayMetrics] = []

    def factory() -> GatewayMetrics:
        metrics = GatewayMetrics(registry)
        created.append(metrics)
        return metrics

    monkeypatch.setattr(_domain, "_default", None)
    monkeypatch.setattr(_domain, "GatewayMetrics", factory)
    run_in_threads(lambda index: _domain.record_cache_miss("shared"))
    assert len(created) == 1
    assert registry.get_sample_value("cache_misses_total", {"cache_name": "shared"}) == THREADS


async def test_concurrent_tasks_measure_their_own_calls(registry: CollectorRegistry) -> None:
    """Overlapping `with` blocks in concurrent tasks record one outcome each."""
    metrics = GatewayMetrics(registry)

    async def call(i: int) -> None:
        with metrics.track_model_inference("p", "m") as handle:
            await asyncio.sleep(0.001 * (i % 5))
            handle.first_token()
            await asyncio.sleep(0)
            if i % 4 == 0:
                raise TimeoutError

    results = await asyncio.gather(*(call(i) for i in range(100)), return_exceptions=True)
    assert sum(isinstance(r, TimeoutError) for r in results) == 25
    get = registry.get_sample_value
    assert (
        get("model_inference_requests_total", {"provider": "p", "model": "m", "status": "success"})
        == 75
    )
    assert (
        get("model_inference_requests_total", {"provider": "p", "model": "m", "status": "timeout"})
        == 25
    )
    assert get("model_time_to_first_token_seconds_count", {"provider": "p", "model": "m"}) == 100
