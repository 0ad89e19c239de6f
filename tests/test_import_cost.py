"""Importing the package costs nothing it does not need: no web framework, no pydantic."""

from __future__ import annotations

import json
import os
import subprocess
import sys

FRAMEWORK_MODULES = (
    "fastapi",
    "starlette",
    "pydantic",
    "quart",
    "anyio",
    "werkzeug",
    "opentelemetry",  # exemplars read it only when the application imported it
)


def modules_after(statement: str) -> set[str]:
    """Top-level module names in `sys.modules` after running `statement` in a fresh Python."""
    probe = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ.copy(),
        timeout=60,
    )
    names: list[str] = json.loads(result.stdout.splitlines()[-1])
    return {name.split(".")[0] for name in names}


def test_importing_the_package_imports_no_web_framework() -> None:
    """`import gatewayz_metrics` leaves FastAPI, Starlette, pydantic, Quart and anyio unloaded."""
    loaded = modules_after("import gatewayz_metrics")
    assert "gatewayz_metrics" in loaded
    assert loaded.isdisjoint(FRAMEWORK_MODULES), sorted(loaded & set(FRAMEWORK_MODULES))


def test_building_the_middleware_imports_no_web_framework() -> None:
    """Wrapping a bare ASGI app and building `GatewayMetrics` import no framework either."""
    loaded = modules_after(
        "from gatewayz_metrics import GatewayMetrics, MetricsApp, PrometheusMiddleware\n"
        "from prometheus_client import CollectorRegistry\n"
        "async def app(scope, receive, send): pass\n"
        "r = CollectorRegistry()\n"
        "PrometheusMiddleware(app, registry=r)\n"
        "GatewayMetrics(r)\n"
        "MetricsApp(r)"
    )
    assert loaded.isdisjoint(FRAMEWORK_MODULES), sorted(loaded & set(FRAMEWORK_MODULES))
