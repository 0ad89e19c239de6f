"""The metrics endpoint of composed applications behind a real uvicorn on 127.0.0.1: the
application's auth applies at the bare path, and a middleware token that a mounted
MetricsApp would drop stops the server at start-up."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _servers import free_port, uvicorn_thread
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Mount

from gatewayz_metrics import MetricsApp, PrometheusMiddleware

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


class Auth:
    """403 unless `X-Internal: yes`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and (b"x-internal", b"yes") not in scope["headers"]:
            await send({"type": "http.response.start", "status": 403, "headers": []})
            await send({"type": "http.response.body", "body": b"forbidden"})
            return
        await self.app(scope, receive, send)


@pytest.fixture
def served() -> Iterator[str]:
    """Auth inside PrometheusMiddleware, a MetricsApp mounted at /metrics, behind uvicorn."""
    registry = CollectorRegistry()
    app = Starlette(routes=[Mount("/metrics", MetricsApp(registry))])
    app.add_middleware(Auth)
    app.add_middleware(PrometheusMiddleware, registry=registry)
    with uvicorn_thread(app, log_level="critical") as url:
        yield url


def test_the_auth_applies_at_the_bare_path_over_http(served: str) -> None:
    """Over real sockets: `/metrics` is 403 without the credential, 200 with it, no 307."""
    with httpx.Client(base_url=served, timeout=10) as client:
        refused = client.get("/metrics")
        allowed = client.get("/metrics", headers={"X-Internal": "yes"})
    assert refused.status_code == 403
    assert "# TYPE" not in refused.text
    assert allowed.status_code == 200
    assert "# TYPE" in allowed.text


def test_a_dropped_middleware_token_stops_uvicorn_at_start_up(tmp_path: Path) -> None:
    """`uvicorn app:app` (lifespan auto) exits at start-up with the message naming the fix."""
    (tmp_path / "misconfigured.py").write_text(
        textwrap.dedent(
            """
            from starlette.applications import Starlette
            from starlette.routing import Mount
            from gatewayz_metrics import MetricsApp, PrometheusMiddleware

            app = Starlette(routes=[Mount("/metrics", MetricsApp())])
            app.add_middleware(PrometheusMiddleware, bearer_token="s3cret")
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    env.pop("GATEWAYZ_METRICS_BEARER_TOKEN", None)
    command = [sys.executable, "-m", "uvicorn", "misconfigured:app", "--port", str(free_port())]
    command += ["--host", "127.0.0.1"]
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "MetricsApp mounted at /metrics without that token" in done.stderr
    assert "s3cret" not in done.stderr
