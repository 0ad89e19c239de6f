"""A Quart app instrumented with one line: `app.asgi_app = PrometheusMiddleware(app.asgi_app)`.

The middleware answers `GET /metrics`; Quart's rule `/items/<int:item_id>` is reported as
`endpoint="/items/{item_id}"`.

    uvicorn examples.quart_app:app

then `curl localhost:8000/items/42` and `curl localhost:8000/metrics`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from quart import Quart

from gatewayz_metrics import PrometheusMiddleware


def create_app(registry: CollectorRegistry | None = None) -> Quart:
    """The app; `registry=None` uses prometheus_client's default registry (tests pass theirs)."""
    app = Quart(__name__)

    @app.get("/items/<int:item_id>")
    async def read_item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    app.asgi_app = PrometheusMiddleware(app.asgi_app, registry=registry)  # type: ignore[assignment, arg-type]
    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app)
