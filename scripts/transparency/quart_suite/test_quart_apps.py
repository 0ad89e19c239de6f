"""Quart applications for the transparency harness (Quart's sdist ships no tests).

Run by scripts/transparency.sh under `transparency_plugin`, bare and wrapped; not part of
the package's own test suite. Each test drives one behaviour through Quart's test client,
its test app (lifespan) or httpx's ASGI transport, so that every ASGI message the
application exchanges is recorded and compared.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from quart import Quart, Response, abort, g, jsonify, request, websocket
from quart.helpers import stream_with_context


class BoomError(Exception):
    """The application's own error."""


def build_app() -> Quart:
    app = Quart(__name__)
    app.config["TESTING"] = False
    app.config["PROPAGATE_EXCEPTIONS"] = False
    events: list[str] = []
    app.config["EVENTS"] = events

    @app.before_serving
    async def startup() -> None:
        events.append("startup")

    @app.after_serving
    async def shutdown() -> None:
        events.append("shutdown")

    @app.before_request
    async def before() -> Response | None:
        g.seen = "before"
        if request.headers.get("x-deny") == "1":
            return Response("denied by hook", status=403)
        return None

    @app.after_request
    async def after(response: Response) -> Response:
        response.headers["x-hook"] = g.get("seen", "none")
        return response

    @app.route("/")
    async def index() -> str:
        return "hello"

    @app.route("/items/<int:item_id>", methods=["GET", "PUT"])
    async def item(item_id: int) -> Response:
        if request.method == "PUT":
            body = await request.get_json()
            return jsonify(id=item_id, body=body)
        return jsonify(id=item_id)

    @app.route("/echo", methods=["POST"])
    async def echo() -> bytes:
        return await request.get_data()

    @app.route("/stream")
    async def stream() -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            for n in range(5):
                await asyncio.sleep(0)
                yield f"chunk {n}\n".encode()

        return Response(chunks(), mimetype="text/plain")

    @app.route("/stream-context")
    async def stream_context() -> Response:
        @stream_with_context
        async def chunks() -> AsyncIterator[bytes]:
            yield request.args.get("word", "none").encode()
            yield b"!"

        return Response(chunks())

    @app.route("/stream-error")
    async def stream_error() -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"first"
            raise BoomError("in the stream")

        return Response(chunks())

    @app.route("/error")
    async def error() -> str:
        raise BoomError("handler failed")

    @app.route("/abort/<int:code>")
    async def aborting(code: int) -> str:
        abort(code)

    @app.route("/handled")
    async def handled() -> str:
        raise KeyError("handled by the app")

    @app.errorhandler(KeyError)
    async def key_error(exc: KeyError) -> tuple[str, int]:
        return f"handled: {exc}", 409

    @app.route("/empty", methods=["DELETE"])
    async def empty() -> tuple[str, int]:
        return "", 204

    @app.route("/redirect")
    async def redirect() -> Response:
        return Response("", status=302, headers={"location": "/"})

    @app.route("/large")
    async def large() -> bytes:
        return b"x" * 300_000

    @app.route("/headers")
    async def headers() -> Response:
        response = jsonify(sorted(request.headers.keys()))
        response.set_cookie("flavour", "oat", httponly=True)
        return response

    @app.websocket("/ws")
    async def ws() -> None:
        await websocket.accept()
        while True:
            message = await websocket.receive()
            if message == "close":
                await websocket.close(1000)
                return
            await websocket.send(f"echo {message}")

    @app.websocket("/ws-bytes")
    async def ws_bytes() -> None:
        data = await websocket.receive()
        await websocket.send(data)

    @app.websocket("/ws-reject")
    async def ws_reject() -> None:
        abort(403)

    @app.websocket("/ws-error")
    async def ws_error() -> None:
        await websocket.accept()
        raise BoomError("in the websocket")

    return app


GETS = [
    ("/", 200),
    ("/items/7", 200),
    ("/items/x", 404),
    ("/missing", 404),
    ("/stream", 200),
    ("/stream-context?word=hi", 200),
    ("/error", 500),
    ("/abort/401", 401),
    ("/abort/418", 418),
    ("/abort/503", 503),
    ("/handled", 409),
    ("/redirect", 302),
    ("/large", 200),
    ("/headers", 200),
]


@pytest.mark.parametrize(("path", "status"), GETS, ids=[path for path, _ in GETS])
async def test_get(path: str, status: int) -> None:
    """A GET through Quart's test client gets the application's status."""
    client = build_app().test_client()
    response = await client.get(path)
    assert response.status_code == status
    await response.get_data()


@pytest.mark.parametrize("method", ["POST", "PATCH", "DELETE", "PUT"])
async def test_method_not_allowed(method: str) -> None:
    """A method the route does not take is Quart's 405 with its Allow header."""
    client = build_app().test_client()
    response = await client.open("/", method=method)
    assert response.status_code == 405
    assert "GET" in response.headers["allow"]


async def test_head_sends_no_body() -> None:
    """HEAD gets the GET headers."""
    response = await build_app().test_client().head("/large")
    assert response.status_code == 200
    assert response.headers["content-length"] == "300000"


async def test_options() -> None:
    """OPTIONS is answered by Quart."""
    response = await build_app().test_client().options("/items/3")
    assert response.status_code == 200
    assert "PUT" in response.headers["allow"]


@pytest.mark.parametrize("size", [0, 1, 65_536, 200_001])
async def test_echo_body(size: int) -> None:
    """A request body of any size comes back whole."""
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    response = await build_app().test_client().post("/echo", data=body)
    assert await response.get_data() == body


async def test_json_put() -> None:
    """A JSON body reaches the handler."""
    response = await build_app().test_client().put("/items/5", json={"a": [1, 2]})
    assert await response.get_json() == {"id": 5, "body": {"a": [1, 2]}}


async def test_delete_no_content() -> None:
    """A 204 has no body."""
    response = await build_app().test_client().delete("/empty")
    assert response.status_code == 204
    assert await response.get_data() == b""


async def test_before_request_hook_short_circuits() -> None:
    """A before_request hook that answers skips the handler; after_request still runs."""
    response = await build_app().test_client().get("/", headers={"x-deny": "1"})
    assert response.status_code == 403
    assert response.headers["x-hook"] == "before"


async def test_after_request_hook_adds_header() -> None:
    """after_request's header is on the response."""
    response = await build_app().test_client().get("/items/1")
    assert response.headers["x-hook"] == "before"


async def test_error_propagates_when_asked() -> None:
    """With PROPAGATE_EXCEPTIONS the application's error reaches the caller unchanged."""
    app = build_app()
    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(BoomError, match="handler failed"):
        await app.test_client().get("/error")


async def test_error_in_stream() -> None:
    """An error after the first chunk ends the response; the first chunk was sent."""
    client = build_app().test_client()
    with pytest.raises(BoomError):
        await client.get("/stream-error")


async def test_streamed_chunks() -> None:
    """A streamed body arrives chunk by chunk, in order."""
    response = await build_app().test_client().get("/stream")
    assert await response.get_data() == b"".join(f"chunk {n}\n".encode() for n in range(5))


async def test_websocket_echo() -> None:
    """A websocket exchange, closed by the application."""
    client = build_app().test_client()
    async with client.websocket("/ws") as ws:
        for word in ("a", "b", "c"):
            await ws.send(word)
            assert await ws.receive() == f"echo {word}"
        await ws.send("close")


async def test_websocket_bytes() -> None:
    """Binary frames come back as sent."""
    client = build_app().test_client()
    async with client.websocket("/ws-bytes") as ws:
        await ws.send(b"\x00\x01\x02")
        assert await ws.receive() == b"\x00\x01\x02"


async def test_websocket_rejected() -> None:
    """A websocket refused before accept gets Quart's denial response."""
    from quart.testing import WebsocketResponseError

    client = build_app().test_client()
    with pytest.raises(WebsocketResponseError):
        async with client.websocket("/ws-reject") as ws:
            await ws.receive()


async def test_websocket_error_after_accept() -> None:
    """An error after accept closes the socket."""
    from quart.testing.connections import WebsocketDisconnectError

    client = build_app().test_client()
    with pytest.raises((WebsocketDisconnectError, BoomError)):
        async with client.websocket("/ws-error") as ws:
            await ws.receive()


async def test_websocket_unknown_path() -> None:
    """A websocket to an unknown path is refused."""
    from quart.testing import WebsocketResponseError

    client = build_app().test_client()
    with pytest.raises(WebsocketResponseError):
        async with client.websocket("/nowhere") as ws:
            await ws.receive()


async def test_lifespan() -> None:
    """Startup and shutdown run through the lifespan protocol."""
    app = build_app()
    async with app.test_app() as test_app:
        response = await test_app.test_client().get("/")
        assert response.status_code == 200
    assert app.config["EVENTS"] == ["startup", "shutdown"]


@pytest.mark.parametrize(("path", "status"), GETS, ids=[path for path, _ in GETS])
async def test_httpx_asgi_transport(path: str, status: int) -> None:
    """The same requests through httpx's ASGI transport, as a real client sends them."""
    transport = httpx.ASGITransport(app=build_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://quart.test") as client:
        response = await client.get(path)
    assert response.status_code == status


async def test_httpx_concurrent_requests() -> None:
    """Concurrent requests to one application each get their own answer."""
    transport = httpx.ASGITransport(app=build_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://quart.test") as client:
        responses = await asyncio.gather(*(client.get(f"/items/{n}") for n in range(10)))
    assert [r.json()["id"] for r in responses] == list(range(10))


async def test_asgi_app_wrapped_by_hand() -> None:
    """An application whose asgi_app a user already wrapped (another middleware) works."""
    app = build_app()
    inner = app.asgi_app

    async def tagging(scope, receive, send):  # type: ignore[no-untyped-def]
        async def tagged_send(message):  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"x-tag", b"1")]}
            await send(message)

        await inner(scope, receive, tagged_send)

    app.asgi_app = tagging  # type: ignore[method-assign]
    response = await app.test_client().get("/")
    assert response.headers["x-tag"] == "1"
