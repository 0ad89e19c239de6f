"""A FastAPI app instrumented with one line, with the metrics endpoint mounted explicitly:

    app.add_middleware(PrometheusMiddleware)
    app.mount("/metrics", MetricsApp())

Starlette would redirect `/metrics` to `/metrics/` for a mount; the middleware answers the
bare path with the mounted app, so both are a 200.

    uvicorn examples.fastapi_app:app

then `curl localhost:8000/v1/models/gpt-4` and `curl localhost:8000/metrics`: the request is
counted under `endpoint="/v1/models/{model_id}"`, router prefix included.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from prometheus_client import CollectorRegistry

from gatewayz_metrics import MetricsApp, PrometheusMiddleware

router = APIRouter()


@router.get("/models/{model_id}")
async def read_model(model_id: str) -> dict[str, str]:
    return {"model_id": model_id}


def create_app(registry: CollectorRegistry | None = None) -> FastAPI:
    """The app; `registry=None` uses prometheus_client's default registry (tests pass theirs)."""
    app = FastAPI()
    app.include_router(router, prefix="/v1")
    app.add_middleware(PrometheusMiddleware, registry=registry)
    app.mount("/metrics", MetricsApp(registry))
    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app)
