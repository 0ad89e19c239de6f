"""The application that runs under several workers: gunicorn.conf.py and run_uvicorn.py serve it.

Nothing in it knows about workers. Started with `PROMETHEUS_MULTIPROC_DIR` set (see
docs/scaling.md), the middleware, the domain helpers and the `/metrics` it serves all switch to
prometheus_client's multiprocess mode: whichever worker answers a scrape reports the sum of all.

Every response names the worker that served it (`x-worker-pid`), so that you (and the tests)
can see the requests spread over the workers.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI, Response
from fastapi.responses import StreamingResponse

from gatewayz_metrics import PrometheusMiddleware, record_tokens_used

INPUT_TOKENS = 3
OUTPUT_TOKENS = 5

app = FastAPI()
app.add_middleware(PrometheusMiddleware)


@app.get("/v1/completions")
async def completions(response: Response) -> dict[str, int]:
    """A stand-in for a completion: counts its tokens and says which worker answered."""
    record_tokens_used("demo", "demo-model", INPUT_TOKENS, OUTPUT_TOKENS)
    response.headers["x-worker-pid"] = str(os.getpid())
    return {"pid": os.getpid()}


@app.get("/v1/stream")
async def stream(seconds: float = 1.0) -> StreamingResponse:
    """A long streamed answer: one chunk at once, the rest after `seconds`."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b"data: first\n\n"
        await asyncio.sleep(seconds)
        yield b"data: [DONE]\n\n"

    return StreamingResponse(
        chunks(), media_type="text/event-stream", headers={"x-worker-pid": str(os.getpid())}
    )
