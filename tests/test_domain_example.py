"""examples/domain_snippet.py: the source document's chat-completions example, run for real
(in-process with httpx, and behind uvicorn for a client that leaves mid-stream)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from _servers import uvicorn_thread
from prometheus_client import CollectorRegistry

from gatewayz_metrics._secrets import fingerprint

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "domain_snippet.py"
API_KEY = "sk-live-4f9a7c2e1b8d6f3a0c5e9b7d2f4a6c8e"
MODEL = "openrouter/gpt-4"
LABELS = {"provider": "openrouter", "model": MODEL}
HEADERS = {"Authorization": f"Bearer {API_KEY}"}
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "say hello to me"}]}


@pytest.fixture(scope="module")
def snippet() -> ModuleType:
    """The example module, loaded from its file."""
    spec = importlib.util.spec_from_file_location("domain_snippet", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["domain_snippet"] = module  # pydantic resolves annotations through it
    spec.loader.exec_module(module)
    return module


def client_for(app: object) -> httpx.AsyncClient:
    """An httpx client talking to `app` in-process; app errors become 500 responses."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://gateway")


async def test_completion_records_every_domain_metric_once(
    snippet: ModuleType, registry: CollectorRegistry
) -> None:
    """A plain completion: one request, one success, tokens, credits under a fingerprint."""
    async with client_for(snippet.create_app(registry)) as client:
        response = await client.post("/v1/chat/completions", json=BODY, headers=HEADERS)
    assert response.status_code == 200
    usage = response.json()["usage"]
    get = registry.get_sample_value
    request = {"method": "POST", "endpoint": "/v1/chat/completions", "status_code": "200"}
    assert get("http_requests_total", request) == 1  # middleware + helper: still once
    assert get("model_inference_requests_total", {**LABELS, "status": "success"}) == 1
    assert get("model_time_to_first_token_seconds_count", LABELS) == 0  # not a stream
    assert get("tokens_used_total", {**LABELS, "token_type": "input"}) == usage["prompt_tokens"]
    output = {**LABELS, "token_type": "output"}
    assert get("tokens_used_total", output) == usage["completion_tokens"]
    credits = get("credits_used_total", {**LABELS, "user_id": fingerprint(API_KEY)})
    assert credits == pytest.approx((4 * 0.03 + 6 * 0.06) / 1000)


async def test_streaming_records_ttft_tpot_and_never_the_key(
    snippet: ModuleType, registry: CollectorRegistry
) -> None:
    """A streamed completion gets TTFT and TPOT; /metrics never contains the API key."""
    app = snippet.create_app(registry, snippet.SimulatedProvider(first_token_delay=0.05))
    async with client_for(app) as client:
        response = await client.post(
            "/v1/chat/completions", json={**BODY, "stream": True}, headers=HEADERS
        )
        exposition = (await client.get("/metrics")).text
    assert response.status_code == 200
    assert response.text.count("data: ") == 7  # six words and [DONE]
    get = registry.get_sample_value
    assert get("model_inference_requests_total", {**LABELS, "status": "success"}) == 1
    assert get("model_time_to_first_token_seconds_count", LABELS) == 1
    assert (get("model_time_to_first_token_seconds_sum", LABELS) or 0) >= 0.05
    assert get("model_time_per_output_token_seconds_count", LABELS) == 1
    assert get("tokens_used_total", {**LABELS, "token_type": "output"}) == 6
    assert "model_time_to_first_token_seconds_bucket" in exposition
    assert API_KEY not in exposition
    assert API_KEY[:16] not in exposition
    assert fingerprint(API_KEY) in exposition


@pytest.mark.parametrize(
    ("failure", "status"),
    [(TimeoutError("upstream timed out"), "timeout"), (ConnectionError("reset"), "error")],
    ids=["timeout", "error"],
)
async def test_a_failing_provider_is_recorded_by_outcome(
    snippet: ModuleType, registry: CollectorRegistry, failure: BaseException, status: str
) -> None:
    """Provider failures become timeout/error, the client gets a 500, no credits are charged."""
    app = snippet.create_app(registry, snippet.SimulatedProvider(fail_with=failure))
    async with client_for(app) as client:
        response = await client.post("/v1/chat/completions", json=BODY, headers=HEADERS)
    assert response.status_code == 500
    get = registry.get_sample_value
    assert get("model_inference_requests_total", {**LABELS, "status": status}) == 1
    assert get("credits_used_total", {**LABELS, "user_id": fingerprint(API_KEY)}) is None


@pytest.fixture
def served(snippet: ModuleType, registry: CollectorRegistry) -> Iterator[str]:
    """The example behind a real uvicorn, with a slow stream; yields its base URL."""
    provider = snippet.SimulatedProvider(token_delay=0.2, words=tuple(f"w{i}" for i in range(50)))
    app = snippet.create_app(registry, provider)
    with uvicorn_thread(app, log_level="error") as url:
        yield url


@pytest.mark.slow
async def test_a_client_leaving_mid_stream_is_cancelled(
    served: str, registry: CollectorRegistry
) -> None:
    """Behind uvicorn, a client that disconnects after the first token is `cancelled`."""
    async with (
        httpx.AsyncClient(base_url=served, timeout=10) as client,
        client.stream(
            "POST", "/v1/chat/completions", json={**BODY, "stream": True}, headers=HEADERS
        ) as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                break  # the first token arrived: leave
    deadline = time.monotonic() + 10
    cancelled = {**LABELS, "status": "cancelled"}
    while registry.get_sample_value("model_inference_requests_total", cancelled) != 1:
        assert time.monotonic() < deadline, "the abandoned stream was not recorded"
        await asyncio.sleep(0.05)
    assert (
        registry.get_sample_value("model_inference_requests_total", {**LABELS, "status": "success"})
        == 0
    )
    assert registry.get_sample_value("model_time_to_first_token_seconds_count", LABELS) == 1
