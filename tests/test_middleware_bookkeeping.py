"""A fault in our bookkeeping never fails a request: the in-progress gauge and every other
write the middleware makes on the request path are guarded, counted and logged once."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from _asgi import RecordingSend, ScriptedReceive, http_scope
from prometheus_client import CollectorRegistry
from starlette.responses import PlainTextResponse

from gatewayz_metrics._http import HTTPMetrics
from gatewayz_metrics._middleware import PrometheusMiddleware

INTERNAL = "gatewayz_metrics_internal_errors_total"


async def ok_app(scope: Any, receive: Any, send: Any) -> None:
    """A plain 200."""
    await PlainTextResponse("ok")(scope, receive, send)


class BrokenGauge:
    """An in-progress gauge child whose file cannot be written (full disk)."""

    def __init__(self, *, inc: bool, dec: bool) -> None:
        self.fail_inc = inc
        self.fail_dec = dec

    def inc(self, amount: float = 1) -> None:
        if self.fail_inc:
            raise OSError(28, "No space left on device")

    def dec(self, amount: float = 1) -> None:
        if self.fail_dec:
            raise OSError(28, "No space left on device")


@pytest.mark.parametrize(
    ("inc", "dec", "lookup"),
    [(True, False, False), (False, True, False), (False, False, True)],
    ids=["inc-fails", "dec-fails", "child-lookup-fails"],
)
async def test_an_in_progress_gauge_fault_never_fails_the_request(
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    inc: bool,
    dec: bool,
    lookup: bool,
) -> None:
    """The request answers 200, is still counted, and the fault is counted once."""
    middleware = PrometheusMiddleware(ok_app, registry=registry, route_resolver=lambda s: "/")

    def broken(self: HTTPMetrics, method: str) -> BrokenGauge:
        if lookup:
            raise FileNotFoundError(2, "No such file or directory")
        return BrokenGauge(inc=inc, dec=dec)

    monkeypatch.setattr(HTTPMetrics, "in_progress_gauge", broken)
    send = RecordingSend()
    await middleware(http_scope("/"), ScriptedReceive(), send)
    assert send.status == 200
    assert send.body == b"ok"
    labels = {"method": "GET", "endpoint": "/", "status_code": "200"}
    assert registry.get_sample_value("http_requests_total", labels) == 1
    assert registry.get_sample_value(INTERNAL, {"component": "middleware.in_progress"}) == 1


async def test_an_app_exception_is_not_replaced_by_a_bookkeeping_fault(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the gauge failing on the way out, the application's own exception propagates
    unchanged and is counted as a 500."""
    failure = LookupError("the app's own")

    async def failing(scope: Any, receive: Any, send: Any) -> None:
        raise failure

    middleware = PrometheusMiddleware(failing, registry=registry, route_resolver=lambda s: "/")
    monkeypatch.setattr(
        HTTPMetrics, "in_progress_gauge", lambda self, method: BrokenGauge(inc=False, dec=True)
    )
    with pytest.raises(LookupError) as raised:
        await middleware(http_scope("/"), ScriptedReceive(), RecordingSend())
    assert raised.value is failure
    labels = {"method": "GET", "endpoint": "/", "status_code": "500"}
    assert registry.get_sample_value("http_requests_total", labels) == 1


MULTIPROCESS_SCRIPT = textwrap.dedent(
    """
    import asyncio, shutil, sys
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from gatewayz_metrics import PrometheusMiddleware

    async def home(request):
        return PlainTextResponse("ok")

    app = PrometheusMiddleware(Starlette(routes=[Route("/", home, methods=["GET", "PUT"])]))
    # The directory disappears after start-up (a tmp cleaner, a bad deploy): the gauge and
    # histogram files, created at the first request, cannot be.
    shutil.rmtree(sys.argv[1])

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            codes = [(await client.get("/")).status_code for _ in range(2)]
            codes += [(await client.put("/")).status_code for _ in range(2)]
        print(*codes)

    asyncio.run(main())
    """
)


def test_a_vanished_multiprocess_directory_never_fails_a_request(tmp_path: Path) -> None:
    """Multiprocess mode, PROMETHEUS_MULTIPROC_DIR removed after start-up: the in-progress
    gauge's file cannot be created; every request still answers 200."""
    directory = tmp_path / "prom"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
    )
    result = subprocess.run(
        [sys.executable, "-c", MULTIPROCESS_SCRIPT, str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["200", "200", "200", "200"], result.stderr
    assert "internal error in middleware.in_progress" in result.stderr
