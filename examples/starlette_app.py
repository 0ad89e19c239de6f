"""A Starlette app instrumented with one line: `app.add_middleware(PrometheusMiddleware)`.

The middleware also answers `GET /metrics` itself, so nothing else is needed.

    uvicorn examples.starlette_app:app

then `curl localhost:8000/items/42` and `curl localhost:8000/metrics`: the request is
counted under `endpoint="/items/{item_id}"`, never `/items/42`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gatewayz_metrics import PrometheusMiddleware


async def read_item(request: Request) -> JSONResponse:
    return JSONResponse({"item_id": request.path_params["item_id"]})


def create_app(registry: CollectorRegistry | None = None) -> Starlette:
    """The app; `registry=None` uses prometheus_client's default registry (tests pass theirs)."""
    app = Starlette(routes=[Route("/items/{item_id:int}", read_item)])
    app.add_middleware(PrometheusMiddleware, registry=registry)
    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app)
