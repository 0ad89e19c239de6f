"""A multiprocess directory the workers cannot use: the server refuses to start, naming it.

`PROMETHEUS_MULTIPROC_DIR` naming a missing or unwritable directory used to give a server
that started and answered every request with a 500 (a raw `FileNotFoundError`): Starlette
builds the middleware at lifespan start-up, and uvicorn's default `--lifespan auto` takes an
exception there for "lifespan unsupported" and serves anyway. The middleware now fails the
lifespan start-up with the reason; without lifespan it serves the application unmeasured and
answers `/metrics` with a 503. No request ever gets a 500.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from _asgi import ScriptedReceive, http_scope
from _servers import free_port, kill_session, start_logged
from prometheus_client import values
from starlette.applications import Starlette
from starlette.routing import Mount
from test_multiprocess import REPO_ROOT

from gatewayz_metrics import MetricsApp, PrometheusMiddleware

APP = "examples.multiprocess.app:app"  # FastAPI, lifespan on
UNWRITABLE = "/sys"  # a directory nobody, root included, can create a file in
START_TIMEOUT = 60.0

# A Starlette app that uses only the middleware, and a Quart app (its middleware is built at
# import, not at lifespan start-up): written into the test's directory and served from there.
APPS = textwrap.dedent(
    """
    from quart import Quart
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from gatewayz_metrics import PrometheusMiddleware


    async def ping(request):
        return PlainTextResponse("pong")


    starlette_app = Starlette(routes=[Route("/ping", ping)])
    starlette_app.add_middleware(PrometheusMiddleware)

    quart_app = Quart(__name__)


    @quart_app.get("/ping")
    async def quart_ping():
        return "pong"


    quart_app.asgi_app = PrometheusMiddleware(quart_app.asgi_app)
    """
)


class Probe:
    """Sends requests to a starting server until it exits; records every status it got."""

    def __init__(self, port: int, path: str) -> None:
        self.url = f"http://127.0.0.1:{port}{path}"
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.statuses.append(httpx.get(self.url, timeout=2).status_code)
            except httpx.TransportError:
                time.sleep(0.05)  # not listening yet, or refused: no answer is not a 500

    def stop(self) -> list[int]:
        """Stop probing; the statuses seen."""
        self._stop.set()
        self._thread.join(timeout=10)
        return self.statuses


def run_server(argv: list[str], directory: str, cwd: Path, port: int) -> tuple[int, str, list[int]]:
    """Run a server until it exits by itself; (exit code, output, statuses its port answered)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory, "PYTHONPATH": f"{cwd}:{REPO_ROOT}"}
    probe = Probe(port, "/metrics")
    try:
        result = subprocess.run(
            argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=START_TIMEOUT
        )
    finally:
        statuses = probe.stop()
    return result.returncode, result.stdout + result.stderr, statuses


def uvicorn(app: str, port: int, *options: str) -> list[str]:
    """`python -m uvicorn APP` on 127.0.0.1:port."""
    return [
        sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
        "--no-access-log", *options,
    ]  # fmt: skip


@pytest.fixture
def apps_dir(tmp_path: Path) -> Path:
    """A directory holding `refusal_apps.py` (the Starlette and Quart apps above)."""
    (tmp_path / "refusal_apps.py").write_text(APPS)
    return tmp_path


# --- real servers ----------------------------------------------------------------------


@pytest.mark.slow
def test_uvicorn_workers_refuse_a_missing_directory(tmp_path: Path) -> None:
    """uvicorn --workers 2, directory missing: the server stops, naming it; no 500 ever."""
    missing = tmp_path / "missing"
    port = free_port()
    code, output, statuses = run_server(
        uvicorn(APP, port, "--workers", "2"), str(missing), REPO_ROOT, port
    )
    assert f"'{missing}' does not exist" in output
    assert "Application startup failed" in output
    assert 500 not in statuses
    # uvicorn's supervisor itself exits 0 after "Child process failed to start" (uvicorn's
    # choice, 0.54); a single uvicorn process exits 3, see the next test.
    assert code in (0, 3), output


@pytest.mark.slow
def test_uvicorn_refuses_an_unwritable_directory_with_a_nonzero_exit() -> None:
    """uvicorn (one process), a directory it cannot write: exit 3, naming it."""
    port = free_port()
    code, output, statuses = run_server(uvicorn(APP, port), UNWRITABLE, REPO_ROOT, port)
    assert code == 3, output
    assert f"'{UNWRITABLE}' is not writable" in output
    assert 500 not in statuses


@pytest.mark.slow
def test_gunicorn_refuses_a_missing_directory_without_the_example_config(tmp_path: Path) -> None:
    """Plain gunicorn -k UvicornWorker -w 2 (no on_starting check): exit non-zero, naming it."""
    missing = tmp_path / "missing"
    port = free_port()
    argv = [
        sys.executable, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-w", "2",
        "-b", f"127.0.0.1:{port}", APP,
    ]  # fmt: skip
    code, output, statuses = run_server(argv, str(missing), REPO_ROOT, port)
    assert code != 0, output
    assert f"'{missing}' does not exist" in output
    assert 500 not in statuses


@pytest.mark.slow
def test_quart_refuses_a_missing_directory(apps_dir: Path) -> None:
    """A Quart app (middleware built at import) under uvicorn: start-up fails, naming it."""
    missing = apps_dir / "missing"
    port = free_port()
    code, output, statuses = run_server(
        uvicorn("refusal_apps:quart_app", port), str(missing), apps_dir, port
    )
    assert code == 3, output
    assert f"'{missing}' does not exist" in output
    assert 500 not in statuses


@pytest.mark.slow
def test_without_lifespan_the_app_is_served_and_metrics_answer_503(apps_dir: Path) -> None:
    """uvicorn --lifespan off --workers 2: requests are served (200), /metrics is a 503."""
    missing = apps_dir / "missing"
    port = free_port()
    path = f"{apps_dir}:{REPO_ROOT}"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(missing), "PYTHONPATH": path}
    argv = uvicorn("refusal_apps:starlette_app", port, "--lifespan", "off", "--workers", "2")
    server = start_logged(argv, apps_dir / "server.log", cwd=apps_dir, env=env, new_session=True)
    try:
        statuses: list[int] = []
        deadline = time.monotonic() + START_TIMEOUT
        while len(statuses) < 20:
            assert time.monotonic() < deadline, (apps_dir / "server.log").read_text()
            assert server.poll() is None, (apps_dir / "server.log").read_text()
            try:
                statuses.append(httpx.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code)
            except httpx.TransportError:
                time.sleep(0.1)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        kill_session(server)
    assert set(statuses) == {200}
    assert metrics.status_code == 503
    assert str(missing) not in metrics.text  # the path is in the log, not in the answer
    assert f"'{missing}' does not exist" in (apps_dir / "server.log").read_text()


# --- raw ASGI ----------------------------------------------------------------------------


@pytest.fixture
def multiprocess_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """prometheus_client's values as in a process started with PROMETHEUS_MULTIPROC_DIR set."""
    value_class = values.MultiProcessValue()  # type: ignore[no-untyped-call]
    monkeypatch.setattr(values, "ValueClass", value_class)


class Sent(list[dict[str, Any]]):
    """A `send` that records the messages."""

    async def __call__(self, message: Any) -> None:
        self.append(dict(message))


async def test_the_lifespan_start_up_fails_with_the_reason(
    multiprocess_mode: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Built with a missing directory, the middleware fails `lifespan.startup` with the reason."""
    missing = tmp_path / "missing"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(missing))
    started: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        started.append(scope["type"])

    middleware = PrometheusMiddleware(app)
    sent = Sent()
    receive = ScriptedReceive([{"type": "lifespan.startup"}])
    await asyncio.wait_for(middleware({"type": "lifespan"}, receive, sent), timeout=5)
    assert sent == [
        {
            "type": "lifespan.startup.failed",
            "message": f"PROMETHEUS_MULTIPROC_DIR directory '{missing}' does not exist: "
            "create it (mkdir -p) before starting the workers",
        }
    ]
    assert started == []  # the application's own start-up never ran


async def test_a_starlette_app_builds_its_middleware_and_fails_start_up(
    multiprocess_mode: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starlette builds the stack at lifespan: no exception there, a start-up failure instead."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", UNWRITABLE)
    app = Starlette()
    app.add_middleware(PrometheusMiddleware)
    sent = Sent()
    receive = ScriptedReceive([{"type": "lifespan.startup"}])
    await asyncio.wait_for(app({"type": "lifespan"}, receive, sent), timeout=5)
    assert [message["type"] for message in sent] == ["lifespan.startup.failed"]
    assert f"'{UNWRITABLE}' is not writable" in sent[0]["message"]


async def test_without_lifespan_requests_pass_through_unmeasured(
    multiprocess_mode: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An http request reaches the application (200); the metrics path answers 503."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = PrometheusMiddleware(app)
    ok, metrics = Sent(), Sent()
    await middleware(http_scope("/ping"), ScriptedReceive([{"type": "http.request"}]), ok)
    await middleware(http_scope("/metrics"), ScriptedReceive([{"type": "http.request"}]), metrics)
    assert ok[0]["status"] == 200
    assert metrics[0]["status"] == 503


async def test_a_mounted_metrics_app_answers_503_for_a_missing_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MetricsApp on its own (no middleware), the directory gone: 503 without the path, not 500."""
    missing = tmp_path / "missing"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(missing))
    app = Starlette(routes=[Mount("/metrics", MetricsApp())])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/metrics/")
    assert response.status_code == 503
    assert str(missing) not in response.text
