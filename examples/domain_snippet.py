"""The source document's `/v1/chat/completions` example, made runnable, streaming included.

The wiki's snippet does not run as written (`request.model` on a Starlette `Request`, no
pricing, no client) and has three metric bugs this version fixes:

- `user_id=api_key` would put API keys in a label: `record_credits_used` fingerprints
  secret-looking ids (`sha256:` + 12 hex), so the key never reaches Prometheus;
- `track_http_request` around a handler the middleware already measures would count each
  request twice: inside a measured request it records nothing;
- a stream consumed after the `with track_model_inference` block would measure only the
  time to open the stream: here the whole iteration is inside the block, which also gives
  time to first token and time per output token.

Run it against the simulated provider with

    uvicorn --factory examples.domain_snippet:create_app

then `curl -H 'Authorization: Bearer sk-demo-0123456789abcdef' -d
'{"model": "openrouter/gpt-4", "messages": [{"role": "user", "content": "hi"}]}'
localhost:8000/v1/chat/completions` and `curl localhost:8000/metrics`.

The helpers are used through a `GatewayMetrics` bound to the app's registry so that tests
can give each app its own; with the default registry the module-level functions
(`from gatewayz_metrics import track_model_inference, ...`) are the very same calls.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Header, HTTPException
from fastapi.responses import StreamingResponse
from prometheus_client import CollectorRegistry
from pydantic import BaseModel

from gatewayz_metrics import GatewayMetrics, PrometheusMiddleware

# Credits per 1,000 tokens, by model.
PRICING: dict[str, tuple[float, float]] = {
    "openrouter/gpt-4": (0.03, 0.06),
    "anthropic/claude-3-5-sonnet": (0.003, 0.015),
}


class Message(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str
    messages: list[Message]
    stream: bool = False


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Completion:
    content: str
    usage: Usage


@dataclass(frozen=True, slots=True)
class Chunk:
    content: str = ""
    usage: Usage | None = None


class SimulatedProvider:
    """Stands in for an upstream LLM API: fixed latencies, one token per word."""

    def __init__(
        self,
        *,
        first_token_delay: float = 0.02,
        token_delay: float = 0.005,
        words: tuple[str, ...] = ("Hello", "from", "the", "simulated", "provider", "!"),
        fail_with: BaseException | None = None,
    ) -> None:
        self.first_token_delay = first_token_delay
        self.token_delay = token_delay
        self.words = words
        self.fail_with = fail_with

    def _usage(self, request: ChatRequest) -> Usage:
        prompt = sum(len(m.content.split()) for m in request.messages)
        return Usage(prompt_tokens=prompt, completion_tokens=len(self.words))

    async def create_completion(self, request: ChatRequest) -> Completion:
        await asyncio.sleep(self.first_token_delay + self.token_delay * len(self.words))
        if self.fail_with is not None:
            raise self.fail_with
        return Completion(" ".join(self.words), self._usage(request))

    async def stream_completion(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        await asyncio.sleep(self.first_token_delay)
        for index, word in enumerate(self.words):
            if index:
                await asyncio.sleep(self.token_delay)
            if self.fail_with is not None and index == len(self.words) // 2:
                raise self.fail_with
            yield Chunk(content=word)
        yield Chunk(usage=self._usage(request))


def calculate_credits(model: str, usage: Usage) -> float:
    """Credits for one call at the model's per-1k-token prices."""
    input_price, output_price = PRICING.get(model, (0.01, 0.03))
    return (usage.prompt_tokens * input_price + usage.completion_tokens * output_price) / 1000


async def get_api_key(authorization: str = Header(default="")) -> str:
    """The bearer token of the request: the caller's API key."""
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise HTTPException(status_code=401, detail="missing API key")
    return key


def create_app(
    registry: CollectorRegistry | None = None, client: SimulatedProvider | None = None
) -> FastAPI:
    """The gateway: middleware for HTTP metrics and /metrics, domain metrics in the route."""
    metrics = GatewayMetrics(registry)
    provider_client = client or SimulatedProvider()
    app = FastAPI()
    app.add_middleware(PrometheusMiddleware, registry=registry)

    async def stream_chat(body: ChatRequest, provider: str, api_key: str) -> AsyncIterator[str]:
        usage: Usage | None = None
        # The iteration is inside the block: duration covers the whole stream, and a
        # client that goes away is recorded as `cancelled`.
        with metrics.track_model_inference(provider, body.model) as call:
            async for chunk in provider_client.stream_completion(body):
                if chunk.content:
                    call.first_token()
                    delta = {"choices": [{"delta": {"content": chunk.content}}]}
                    yield f"data: {json.dumps(delta)}\n\n"
                if chunk.usage is not None:
                    usage = chunk.usage
                    call.set_usage(
                        input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens
                    )
        if usage is not None:
            metrics.record_credits_used(
                provider=provider,
                model=body.model,
                user_id=api_key,  # fingerprinted: the key never becomes a label
                credits=calculate_credits(body.model, usage),
            )
        yield "data: [DONE]\n\n"

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(
        body: ChatRequest, api_key: str = Depends(get_api_key)
    ) -> dict[str, object] | StreamingResponse:
        provider = body.model.split("/")[0]
        # Kept from the source document: a no-op under the middleware, so code that also
        # runs outside it (a worker, a test) is measured there without double counting.
        with metrics.track_http_request("POST", "/v1/chat/completions"):
            if body.stream:
                return StreamingResponse(
                    stream_chat(body, provider, api_key), media_type="text/event-stream"
                )
            with metrics.track_model_inference(provider, body.model):
                response = await provider_client.create_completion(body)
            metrics.record_tokens_used(
                provider=provider,
                model=body.model,
                input_tokens=response.usage.prompt_tokens,
                output_tokens=response.usage.completion_tokens,
            )
            metrics.record_credits_used(
                provider=provider,
                model=body.model,
                user_id=api_key,
                credits=calculate_credits(body.model, response.usage),
            )
            return {
                "model": body.model,
                "choices": [{"message": {"role": "assistant", "content": response.content}}],
                "usage": {
                    "prompt_tokens": response.usage.prompt_tokens,
                    "completion_tokens": response.usage.completion_tokens,
                },
            }

    return app
