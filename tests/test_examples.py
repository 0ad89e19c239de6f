"""The one-line setup examples (`examples/*_app.py`) run, and measure what they claim:
in-process through their factories, and as written, behind `uvicorn examples.<name>:app`."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from _asgi import client_for
from _servers import free_port, start_logged, stop, wait_serving
from prometheus_client import REGISTRY, CollectorRegistry

from gatewayz_metrics import UNMATCHED_ENDPOINT, MetricsApp, PrometheusMiddleware

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {
    "starlette": ("starlette_app", "/items/42", "/items/{item_id}"),
    "fastapi": ("fastapi_app", "/v1/models/gpt-4", "/v1/models/{model_id}"),
    "quart": ("quart_app", "/items/42", "/items/{item_id}"),
    "bare-asgi": ("bare_asgi_app", "/hello", "/hello"),
}
examples = pytest.mark.parametrize("example", list(EXAMPLES), ids=list(EXAMPLES))


def load(example: str) -> ModuleType:
    """The example module, loaded from its file."""
    filename = EXAMPLES[example][0]
    name = f"gatewayz_example_{filename}"
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{filename}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Quart and pydantic look their module up by name
    spec.loader.exec_module(module)
    return module


def requests_total(registry: CollectorRegistry, endpoint: str, status: str) -> float | None:
    """`http_requests_total` of one GET endpoint and status."""
    labels = {"method": "GET", "endpoint": endpoint, "status_code": status}
    return registry.get_sample_value("http_requests_total", labels)


@examples
async def test_the_example_records_route_templates_and_serves_metrics(
    example: str, registry: CollectorRegistry
) -> None:
    """Through its factory, each example counts its route by template and answers /metrics."""
    _, path, template = EXAMPLES[example]
    async with client_for(load(example).create_app(registry)) as client:
        assert (await client.get(path)).status_code == 200
        assert (await client.get("/no/such/page")).status_code == 404
        scrape = await client.get("/metrics")
    assert requests_total(registry, template, "200") == 1
    assert requests_total(registry, UNMATCHED_ENDPOINT, "404") == 1
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
    expected = f'http_requests_total{{endpoint="{template}",method="GET",status_code="200"}} 1.0'
    assert expected in scrape.text


@examples
def test_the_module_level_app_uses_the_documented_setup(example: str) -> None:
    """Each example's module-level `app` is instrumented the one-line way, default registry."""
    app = load(example).app
    if example in ("starlette", "fastapi"):
        middleware = [m for m in app.user_middleware if m.cls is PrometheusMiddleware]
        assert len(middleware) == 1
        assert middleware[0].kwargs.get("registry") is None
    elif example == "quart":
        assert isinstance(app.asgi_app, PrometheusMiddleware)
        assert app.asgi_app.registry is REGISTRY
    else:
        assert isinstance(app, PrometheusMiddleware)
        assert app.registry is REGISTRY


async def test_the_fastapi_example_mounts_metrics_app(registry: CollectorRegistry) -> None:
    """The FastAPI example serves `/metrics` and `/metrics/` from its mounted MetricsApp."""
    app = load("fastapi").create_app(registry)
    mounted = [route for route in app.routes if isinstance(getattr(route, "app", None), MetricsApp)]
    assert len(mounted) == 1
    async with client_for(app) as client:
        bare, slash = await client.get("/metrics"), await client.get("/metrics/")
    assert (bare.status_code, slash.status_code) == (200, 200)
    assert mounted[0].app.scrapes == 2


@pytest.mark.slow
@examples
def test_the_example_runs_under_uvicorn(example: str, tmp_path: Path) -> None:
    """`uvicorn examples.<name>:app`, as each docstring says, serves the app and its metrics."""
    module, path, template = EXAMPLES[example]
    port = free_port()
    log = tmp_path / "uvicorn.log"
    process = start_logged(
        [
            *(sys.executable, "-m", "uvicorn", f"examples.{module}:app"),
            *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        ],
        log,
        cwd=ROOT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_serving(f"{url}/metrics", process, log)
        with httpx.Client(base_url=url, timeout=5) as client:
            assert client.get(path).status_code == 200
            # The request is recorded just after its last byte went out: retry the scrape.
            expected = (
                f'http_requests_total{{endpoint="{template}",method="GET",status_code="200"}} 1.0'
            )
            deadline = time.monotonic() + 10
            while expected not in (scrape := client.get("/metrics")).text:
                assert time.monotonic() < deadline, scrape.text
                time.sleep(0.02)
        assert scrape.status_code == 200
    finally:
        stop(process)
