"""ASGI response extensions (Path Send, Zero Copy Send, HTTP trailers): the bytes they send
are counted and the message that ends the response is recognised as its end."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from _asgi import Message, RecordingSend, ScriptedReceive, http_scope
from prometheus_client import CollectorRegistry
from starlette.responses import FileResponse

from gatewayz_metrics import PrometheusMiddleware

ENDPOINT = "/file"
FILE_SIZE = 10_000
App = Callable[[Any, Any, Any], Awaitable[None]]


def measured(app: App, registry: CollectorRegistry) -> PrometheusMiddleware:
    """`app` behind the middleware, named `/file` by a resolver."""
    return PrometheusMiddleware(app, registry=registry, route_resolver=lambda scope: ENDPOINT)


def scope_with(*extensions: str, method: str = "GET") -> dict[str, Any]:
    """An http scope whose server advertises `extensions`."""
    scope = http_scope(ENDPOINT, method=method)
    scope["extensions"] = {name: {} for name in extensions}
    return scope


def response_bytes(registry: CollectorRegistry, method: str = "GET") -> float:
    """`http_response_size_bytes_total` of `/file`, 0 when absent."""
    labels = {"method": method, "endpoint": ENDPOINT}
    return registry.get_sample_value("http_response_size_bytes_total", labels) or 0.0


def status_count(registry: CollectorRegistry, status: str) -> float | None:
    """`http_requests_total` of `/file` for one status code."""
    labels = {"method": "GET", "endpoint": ENDPOINT, "status_code": status}
    return registry.get_sample_value("http_requests_total", labels)


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    """A file of FILE_SIZE bytes."""
    path = tmp_path / "data.bin"
    path.write_bytes(os.urandom(FILE_SIZE))
    return path


def start(**extra: Any) -> Message:
    """An `http.response.start` message of a 200."""
    return {"type": "http.response.start", "status": 200, "headers": [], **extra}


async def test_pathsend_counts_the_file_size(registry: CollectorRegistry, data_file: Path) -> None:
    """`http.response.pathsend` counts the bytes of the file the server sends."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(start())
        await send({"type": "http.response.pathsend", "path": str(data_file)})

    send = RecordingSend()
    await measured(app, registry)(scope_with("http.response.pathsend"), ScriptedReceive(), send)
    assert response_bytes(registry) == FILE_SIZE
    assert status_count(registry, "200") == 1


async def test_pathsend_of_a_missing_file_counts_nothing_and_never_fails(
    registry: CollectorRegistry, tmp_path: Path
) -> None:
    """A path that cannot be read counts 0 bytes; the request is recorded all the same."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(start())
        await send({"type": "http.response.pathsend", "path": str(tmp_path / "gone")})

    await measured(app, registry)(
        scope_with("http.response.pathsend"), ScriptedReceive(), RecordingSend()
    )
    assert response_bytes(registry) == 0
    assert status_count(registry, "200") == 1


@pytest.mark.parametrize("extensions", [("http.response.pathsend",), ()], ids=["pathsend", "body"])
async def test_starlette_file_response_counts_the_file_either_way(
    registry: CollectorRegistry, data_file: Path, extensions: tuple[str, ...]
) -> None:
    """Starlette's FileResponse counts the file's size, sent by pathsend or as body chunks."""
    send = RecordingSend()
    await measured(FileResponse(data_file), registry)(
        scope_with(*extensions), ScriptedReceive(), send
    )
    kinds = [m["type"] for m in send.messages]
    assert ("http.response.pathsend" in kinds) == bool(extensions)
    assert response_bytes(registry) == FILE_SIZE
    assert status_count(registry, "200") == 1


async def test_zerocopysend_counts_its_bytes_and_ends_the_response(
    registry: CollectorRegistry, data_file: Path
) -> None:
    """`count`, `offset` and `more_body` of zero-copy sends: all bytes counted, then a 200.

    The client hanging up after the last zero-copy send is the normal end, not a 499.
    """
    receive = ScriptedReceive([{"type": "http.request"}])

    async def app(scope: Any, receive_: Any, send: Any) -> None:
        await receive_()
        with data_file.open("rb") as file:
            await send(start())
            await send(
                {
                    "type": "http.response.zerocopysend",
                    "file": file,
                    "count": 1_000,
                    "more_body": True,
                }
            )
            await send(
                {
                    "type": "http.response.zerocopysend",
                    "file": file,
                    "offset": 1_000,
                    "count": 4_000,
                    "more_body": True,
                }
            )
            await send({"type": "http.response.zerocopysend", "file": file, "offset": 5_000})
        receive.disconnect()
        await receive_()  # waits for the client to hang up, as listeners do

    await measured(app, registry)(
        scope_with("http.response.zerocopysend"), receive, RecordingSend()
    )
    assert response_bytes(registry) == FILE_SIZE
    assert status_count(registry, "200") == 1
    assert status_count(registry, "499") is None


async def test_zerocopysend_without_offset_reads_from_the_file_position(
    registry: CollectorRegistry, data_file: Path
) -> None:
    """Without `offset` or `count`, the bytes from the file's current position to its end."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        with data_file.open("rb") as file:
            file.seek(2_500)
            await send(start())
            await send({"type": "http.response.zerocopysend", "file": file})

    await measured(app, registry)(
        scope_with("http.response.zerocopysend"), ScriptedReceive(), RecordingSend()
    )
    assert response_bytes(registry) == FILE_SIZE - 2_500


async def test_a_count_past_the_end_of_the_file_counts_what_the_file_holds(
    registry: CollectorRegistry, data_file: Path
) -> None:
    """`count` larger than what is left of the file counts only the bytes the file has."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        with data_file.open("rb") as file:
            await send(start())
            await send(
                {
                    "type": "http.response.zerocopysend",
                    "file": file,
                    "offset": 9_000,
                    "count": 5_000,
                }
            )

    await measured(app, registry)(
        scope_with("http.response.zerocopysend"), ScriptedReceive(), RecordingSend()
    )
    assert response_bytes(registry) == 1_000


async def test_with_trailers_the_response_ends_at_the_last_trailers(
    registry: CollectorRegistry,
) -> None:
    """With `trailers: True`, a client gone after the body but before the trailers is a 499."""
    receive = ScriptedReceive([{"type": "http.request"}])

    async def app(scope: Any, receive_: Any, send: Any) -> None:
        await receive_()
        await send(start(trailers=True))
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})
        receive.disconnect()
        await receive_()  # the client hangs up before the trailers

    await measured(app, registry)(scope_with("http.response.trailers"), receive, RecordingSend())
    assert status_count(registry, "499") == 1


async def test_the_last_trailers_end_the_response(registry: CollectorRegistry) -> None:
    """A client hanging up once the trailers are sent leaves the 200 a 200."""
    receive = ScriptedReceive([{"type": "http.request"}])

    async def app(scope: Any, receive_: Any, send: Any) -> None:
        await receive_()
        await send(start(trailers=True))
        await send({"type": "http.response.body", "body": b"ok", "more_body": False})
        await send({"type": "http.response.trailers", "headers": [], "more_trailers": False})
        receive.disconnect()
        await receive_()

    await measured(app, registry)(scope_with("http.response.trailers"), receive, RecordingSend())
    assert status_count(registry, "200") == 1
    assert status_count(registry, "499") is None
