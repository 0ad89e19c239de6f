"""The transparency harness (scripts/transparency/) can fail: it sees what the suites miss.

The frameworks' suites pass with a middleware that adds a response header or re-chunks a
body; the harness's comparison of ASGI messages must not. Each case runs a tiny Starlette
suite bare and wrapped, in subprocesses, through the same plugin and comparison that
scripts/transparency.sh uses on the real suites; those cases are marked slow (a pytest
start each, ~3 s of CPU).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

HARNESS = Path(__file__).resolve().parent.parent / "scripts" / "transparency"

SUITE = """
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient


async def hello(request):
    return PlainTextResponse("hello world")


async def stream(request):
    async def chunks():
        for n in range(3):
            yield f"part {n};".encode()

    return StreamingResponse(chunks())


async def echo(websocket):
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())
    await websocket.close()


app = Starlette(
    routes=[Route("/", hello), Route("/stream", stream), WebSocketRoute("/ws", echo)]
)


def test_hello():
    assert TestClient(app).get("/").text == "hello world"


def test_stream():
    assert TestClient(app).get("/stream").text == "part 0;part 1;part 2;"


def test_websocket():
    with TestClient(app).websocket_connect("/ws") as ws:
        ws.send_text("hi")
        assert ws.receive_text() == "hi"


async def test_direct_call():
    sent = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
    await app(scope, receive, send)
    assert b"".join(m.get("body", b"") for m in sent[1:]) == b"hello world"
"""

BROKEN = '''
class AddsHeader:
    """Adds a response header: no test of the tiny suite looks at headers."""

    def __init__(self, app, registry=None):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def tagged(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"x-extra", b"1")]}
            await send(message)

        await self.app(scope, receive, tagged)


class Rechunks:
    """Splits every body message in two: the client joins them again."""

    def __init__(self, app, registry=None):
        self.app = app

    async def __call__(self, scope, receive, send):
        async def split(message):
            body = message.get("body", b"")
            if message["type"] == "http.response.body" and len(body) > 1:
                half = len(body) // 2
                await send({**message, "body": body[:half], "more_body": True})
                message = {**message, "body": body[half:]}
            await send(message)

        await self.app(scope, receive, split)


class TouchesScope:
    """Adds a key to the scope the application sees; nothing the server sees changes."""

    def __init__(self, app, registry=None):
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app({**scope, "x-extra": True}, receive, send)
'''


def _compare_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("transparency_compare", HARNESS / "compare.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(directory: Path, mode: str, middleware: str | None = None) -> Path:
    out = directory / f"{mode}-{middleware or 'prometheus'}.jsonl"
    env = {
        **os.environ,
        "PYTHONHASHSEED": "0",
        "PYTHONPATH": os.pathsep.join([str(HARNESS), str(directory), str(HARNESS.parent.parent)]),
        "GATEWAYZ_TRANSPARENCY": mode,
        "GATEWAYZ_TRANSPARENCY_OUT": str(out),
        "GATEWAYZ_TRANSPARENCY_FRAMEWORKS": "starlette",
    }
    if middleware is not None:
        env["GATEWAYZ_TRANSPARENCY_MIDDLEWARE"] = f"broken_middleware:{middleware}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "transparency_plugin",
            "-c",
            str(directory / "pytest.ini"),
            str(directory),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # The tiny suite passes in every mode: a suite blind to the change, as the real ones are.
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("transparency")
    (directory / "test_tiny.py").write_text(textwrap.dedent(SUITE))
    (directory / "broken_middleware.py").write_text(textwrap.dedent(BROKEN))
    (directory / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    return directory


@pytest.fixture(scope="module")
def bare(suite: Path) -> Path:
    return _run(suite, "bare")


@pytest.mark.slow
def test_prometheus_middleware_is_transparent(
    suite: Path, bare: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Wrapped in PrometheusMiddleware, the tiny suite's messages equal the bare run's."""
    compare = _compare_module()
    wrapped = _run(suite, "wrapped")
    assert compare.main(["tiny", str(bare), str(wrapped)]) == 0
    report = capsys.readouterr().out
    assert "bare:    4 tests: 4 passed" in report
    assert "wrapped: 4 tests: 4 passed" in report
    assert "tests with different messages: 0" in report
    records, _ = compare.split(compare.load(wrapped))
    # Every test ran its application through the wrapper, the direct call included.
    assert all(compare.stream(record, "inner") for record in records.values())
    assert all(record["wrapped_apps"] >= 1 for record in records.values())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("middleware", "tests", "where"),
    [
        pytest.param("AddsHeader", 3, "outside the middleware", id="added-header"),
        pytest.param("Rechunks", 3, "outside the middleware", id="rechunked-body"),
        pytest.param("TouchesScope", 4, "the application's view", id="changed-scope"),
    ],
)
def test_broken_middleware_is_detected(
    suite: Path,
    bare: Path,
    middleware: str,
    tests: int,
    where: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A middleware change that every test of the suite misses is a difference."""
    compare = _compare_module()
    wrapped = _run(suite, "wrapped", middleware)
    assert compare.main(["tiny", str(bare), str(wrapped)]) == 1
    report = capsys.readouterr().out
    assert "wrapped: 4 tests: 4 passed" in report
    assert f"tests with different messages: {tests}" in report
    assert f"ASGI messages differ ({where})" in report


def _record(nodeid: str, outer: list[str], inner: list[str] | None = None) -> str:
    streams = {"outer": [outer]} if inner is None else {"outer": [outer], "inner": [inner]}
    record = {"id": nodeid, "outcome": "passed", "wrapped_apps": 1, "streams": streams}
    return json.dumps(record) + "\n"


def test_rerun_separates_nondeterminism_from_a_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A difference both wrapped runs show is reported; one a rerun does not repeat is not."""
    compare = _compare_module()
    plain = ["scope {}", "send {status: 200}", "returned"]
    tagged = ["scope {}", "send {status: 200, x-extra: 1}", "returned"]
    racy_a = ["scope {}", "send {timestamp: 1}", "returned"]
    racy_b = ["scope {}", "send {timestamp: 2}", "returned"]
    files = {
        "bare": _record("t::changed", plain) + _record("t::racy", racy_a),
        "wrapped": _record("t::changed", tagged, tagged) + _record("t::racy", racy_b, racy_b),
        "rerun-bare": _record("t::changed", plain) + _record("t::racy", racy_b),
        "rerun-wrapped": _record("t::changed", tagged, tagged) + _record("t::racy", racy_a, racy_a),
    }
    for name, text in files.items():
        (tmp_path / f"{name}.jsonl").write_text(text)
    args = ["tiny", str(tmp_path / "bare.jsonl"), str(tmp_path / "wrapped.jsonl")]
    rerun = ["--rerun-bare", str(tmp_path / "rerun-bare.jsonl")]
    rerun += ["--rerun-wrapped", str(tmp_path / "rerun-wrapped.jsonl")]
    assert compare.main(args + rerun) == 1
    report = capsys.readouterr().out
    assert "tests with different messages: 1" in report
    assert "did not reproduce the difference): 1\n     t::racy" in report
    assert "DIFF t::changed: ASGI messages differ (outside the middleware)" in report
    assert "DIFF t::racy" not in report
