"""Any ASGI application, instrumented with one line: `app = PrometheusMiddleware(app)`.

A bare ASGI app has no router the middleware could ask for a route template, so without
help every request would share `endpoint="__unmatched__"`; `route_resolver=` names the
route of a request (or returns None for a 404). The middleware answers `GET /metrics`.

    uvicorn examples.bare_asgi_app:app

then `curl localhost:8000/hello` and `curl localhost:8000/metrics`.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry

from gatewayz_metrics import PrometheusMiddleware

ROUTES = {"/hello": b"hello, world\n", "/health": b"ok\n"}


async def hello_app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return  # this tiny app has no lifespan handlers and no websockets
    body = ROUTES.get(scope["path"])
    status = 200 if body is not None else 404
    body = body if body is not None else b"not found\n"
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def route_of(scope: MutableMapping[str, Any]) -> str | None:
    """The route template of a request: here, the path itself when it is a known route."""
    path: str = scope["path"]
    return path if path in ROUTES else None


def create_app(registry: CollectorRegistry | None = None) -> PrometheusMiddleware:
    """The app; `registry=None` uses prometheus_client's default registry (tests pass theirs)."""
    return PrometheusMiddleware(hello_app, registry=registry, route_resolver=route_of)


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app)
