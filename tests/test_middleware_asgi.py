"""`PrometheusMiddleware` driven by hand: a built scope, a scripted `receive`, a recording
`send`. This is where the timing, disconnect, cancellation and fault cases are pinned down."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from _asgi import Message, RecordingSend, ScriptedReceive, http_scope
from prometheus_client import CollectorRegistry

from gatewayz_metrics import PrometheusMiddleware, _internal

ENDPOINT = "/raw"
App = Callable[[Any, Any, Any], Awaitable[None]]


def measured(app: App, registry: CollectorRegistry, **options: Any) -> PrometheusMiddleware:
    """`app` behind the middleware; a bare app has no router, so the resolver names it."""
    return PrometheusMiddleware(
        app, registry=registry, route_resolver=lambda scope: ENDPOINT, **options
    )


def status_count(registry: CollectorRegistry, status: str, method: str = "GET") -> float | None:
    """`http_requests_total` of the raw endpoint for one status code."""
    labels = {"method": method, "endpoint": ENDPOINT, "status_code": status}
    return registry.get_sample_value("http_requests_total", labels)


def sample(registry: CollectorRegistry, name: str, method: str = "GET") -> float:
    """A (method, endpoint)-labelled sample of the raw endpoint, 0 when absent."""
    return registry.get_sample_value(name, {"method": method, "endpoint": ENDPOINT}) or 0.0


def in_progress(registry: CollectorRegistry) -> float | None:
    """`http_requests_in_progress{method="GET"}`."""
    return registry.get_sample_value("http_requests_in_progress", {"method": "GET"})


def start(status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> Message:
    """An `http.response.start` message."""
    return {"type": "http.response.start", "status": status, "headers": headers or []}


def body(data: bytes, *, more: bool = False) -> Message:
    """An `http.response.body` message."""
    return {"type": "http.response.body", "body": data, "more_body": more}


# --- 3. timing ------------------------------------------------------------------------


@pytest.mark.slow
async def test_duration_stops_at_the_last_body_chunk(registry: CollectorRegistry) -> None:
    """A 0.5 s stream followed by 0.5 s of work records ~0.5 s, and a small TTFB."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(start())
        await send(body(b"first", more=True))
        await asyncio.sleep(0.25)
        await send(body(b"second", more=True))
        await asyncio.sleep(0.25)
        await send(body(b"last"))
        await asyncio.sleep(0.5)  # work after the response, like a background task

    await measured(app, registry)(http_scope(), ScriptedReceive(), RecordingSend())
    assert sample(registry, "http_request_duration_seconds_count") == 1
    assert 0.45 <= sample(registry, "http_request_duration_seconds_sum") < 0.9
    assert sample(registry, "http_time_to_first_byte_seconds_count") == 1
    assert sample(registry, "http_time_to_first_byte_seconds_sum") < 0.05


async def test_time_to_first_byte_waits_for_the_headers(registry: CollectorRegistry) -> None:
    """Headers sent after 0.2 s of thinking give a TTFB of ~0.2 s."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(0.2)
        await send(start())
        await send(body(b"done"))

    await measured(app, registry)(http_scope(), ScriptedReceive(), RecordingSend())
    assert 0.19 <= sample(registry, "http_time_to_first_byte_seconds_sum") < 0.5


async def test_sizes_count_bytes_transferred_not_content_length(
    registry: CollectorRegistry,
) -> None:
    """Sizes are the body bytes that went through, whatever Content-Length claims."""
    receive = ScriptedReceive(
        [
            {"type": "http.request", "body": b"a" * 10, "more_body": True},
            {"type": "http.request", "body": b"b" * 10, "more_body": True},
            {"type": "http.request", "body": b"c" * 10, "more_body": False},
        ]
    )

    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send(start(headers=[(b"content-length", b"1000")]))
        for chunk in (b"12345", b"12345", b"12345"):
            await send(body(chunk, more=True))
        await send(body(b""))

    scope = http_scope(method="POST", headers=[(b"content-length", b"999")])
    await measured(app, registry)(scope, receive, RecordingSend())
    assert sample(registry, "http_request_size_bytes_total", "POST") == 30
    assert sample(registry, "http_response_size_bytes_total", "POST") == 15


# --- 4. application errors ----------------------------------------------------------


async def test_an_error_before_the_response_is_500_and_reraised_unchanged(
    registry: CollectorRegistry,
) -> None:
    """An exception before `http.response.start` is a 500 and reaches the server as is."""
    error = ValueError("the application failed")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise error

    send = RecordingSend()
    with pytest.raises(ValueError, match="the application failed") as exc_info:
        await measured(app, registry)(http_scope(), ScriptedReceive(), send)
    assert exc_info.value is error
    assert send.messages == []  # the middleware sends nothing of its own
    assert status_count(registry, "500") == 1
    assert sample(registry, "http_request_duration_seconds_count") == 1
    assert in_progress(registry) == 0


async def test_an_error_after_the_response_started_keeps_the_sent_status(
    registry: CollectorRegistry,
) -> None:
    """An exception after the headers went out is recorded with the status that was sent."""
    error = RuntimeError("failed mid-body")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(start(200))
        await send(body(b"partial", more=True))
        raise error

    with pytest.raises(RuntimeError) as exc_info:
        await measured(app, registry)(http_scope(), ScriptedReceive(), RecordingSend())
    assert exc_info.value is error
    assert status_count(registry, "200") == 1
    assert status_count(registry, "500") is None


# --- 5. clients that go away --------------------------------------------------------


async def streams_until_disconnect(scope: Any, receive: Any, send: Any) -> None:
    """Sends one chunk, then stops when the server says the client disconnected."""
    await receive()  # the request
    await send(start())
    await send(body(b"chunk-1", more=True))
    while (await receive())["type"] != "http.disconnect":
        pass


async def test_a_disconnect_mid_stream_is_499(registry: CollectorRegistry) -> None:
    """`receive` yielding `http.disconnect` before the last chunk records a 499."""
    receive = ScriptedReceive([{"type": "http.request"}, {"type": "http.disconnect"}])
    await measured(streams_until_disconnect, registry)(http_scope(), receive, RecordingSend())
    assert status_count(registry, "499") == 1
    assert status_count(registry, "200") is None
    assert sample(registry, "http_response_size_bytes_total") == len(b"chunk-1")
    assert in_progress(registry) == 0


async def test_a_send_that_raises_oserror_is_499(registry: CollectorRegistry) -> None:
    """A server that cannot write (OSError from `send`) records a 499 and sees its error."""
    gone = ConnectionResetError("client went away")

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(start())
        await send(body(b"chunk-1", more=True))
        await send(body(b"chunk-2", more=True))

    send = RecordingSend(fail_at=2, fail_with=gone)
    with pytest.raises(ConnectionResetError) as exc_info:
        await measured(app, registry)(http_scope(), ScriptedReceive(), send)
    assert exc_info.value is gone
    assert status_count(registry, "499") == 1
    assert in_progress(registry) == 0


async def test_a_cancelled_request_is_499(registry: CollectorRegistry) -> None:
    """A request task cancelled mid-stream (the server's reaction to a lost client) is 499."""
    first_chunk = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(start())
        await send(body(b"chunk-1", more=True))
        first_chunk.set()
        await asyncio.sleep(30)

    task = asyncio.ensure_future(
        measured(app, registry)(http_scope(), ScriptedReceive(), RecordingSend())
    )
    await asyncio.wait_for(first_chunk.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert status_count(registry, "499") == 1
    assert in_progress(registry) == 0


async def test_a_disconnect_after_the_response_keeps_its_status(
    registry: CollectorRegistry,
) -> None:
    """`http.disconnect` once the last chunk was sent is the normal end: a 200, not a 499."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send(start())
        await send(body(b"complete"))
        await receive()  # waits for the client to hang up, as listeners do

    receive = ScriptedReceive([{"type": "http.request"}, {"type": "http.disconnect"}])
    await measured(app, registry)(http_scope(), receive, RecordingSend())
    assert status_count(registry, "200") == 1
    assert status_count(registry, "499") is None


async def succeed(scope: Any, receive: Any, send: Any) -> None:
    """Answers 200."""
    await send(start())
    await send(body(b"ok"))


async def fail(scope: Any, receive: Any, send: Any) -> None:
    """Raises before answering."""
    raise RuntimeError("fail")


async def hang(scope: Any, receive: Any, send: Any) -> None:
    """Starts a stream and never finishes it."""
    await send(start())
    await asyncio.sleep(30)


@pytest.mark.parametrize(
    ("app", "expected_status"),
    [(succeed, "200"), (fail, "500"), (streams_until_disconnect, "499"), (hang, "499")],
    ids=["success", "error", "disconnect", "cancellation"],
)
async def test_the_in_progress_gauge_returns_to_zero(
    registry: CollectorRegistry, app: App, expected_status: str
) -> None:
    """Whatever way a request ends, `http_requests_in_progress` goes 0 -> 1 -> 0."""
    seen: list[float | None] = []

    async def watching(scope: Any, receive: Any, send: Any) -> None:
        seen.append(in_progress(registry))
        await app(scope, receive, send)

    receive = ScriptedReceive([{"type": "http.request"}, {"type": "http.disconnect"}])
    middleware = measured(watching, registry)
    task = asyncio.ensure_future(middleware(http_scope(), receive, RecordingSend()))
    await asyncio.sleep(0.05)
    task.cancel()  # a no-op for the requests that already ended
    results = await asyncio.gather(task, return_exceptions=True)
    assert seen == [1.0]
    assert in_progress(registry) == 0
    assert status_count(registry, expected_status) == 1
    assert results[0] is None or isinstance(results[0], (RuntimeError, asyncio.CancelledError))


# --- 6. other scope types pass through untouched ------------------------------------


@pytest.mark.parametrize("scope_type", ["websocket", "lifespan"], ids=["websocket", "lifespan"])
async def test_other_scopes_pass_through_untouched(
    registry: CollectorRegistry, scope_type: str
) -> None:
    """A websocket or lifespan scope reaches the app with the very same scope, receive, send."""
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.extend((scope, receive, send))

    scope = {"type": scope_type, "path": "/ws", "asgi": {"version": "3.0"}}
    receive, send = ScriptedReceive(), RecordingSend()
    await measured(app, registry)(scope, receive, send)
    assert seen[0] is scope
    assert seen[1] is receive
    assert seen[2] is send
    assert scope == {"type": scope_type, "path": "/ws", "asgi": {"version": "3.0"}}
    assert in_progress(registry) is None


# --- 8. our own faults ----------------------------------------------------------------


async def test_a_resolver_returning_garbage_is_an_internal_error(
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A resolver returning a non-string: the response goes out, the fault is counted."""
    monkeypatch.setattr(_internal, "_logged", set())
    middleware = PrometheusMiddleware(
        succeed,
        registry=registry,
        route_resolver=lambda scope: 42,  # type: ignore[arg-type,return-value]
    )
    send = RecordingSend()
    with caplog.at_level(logging.ERROR, logger="gatewayz_metrics"):
        await middleware(http_scope(), ScriptedReceive(), send)
    assert (send.status, send.body) == (200, b"ok")
    labels = {"component": "middleware.record"}
    assert registry.get_sample_value("gatewayz_metrics_internal_errors_total", labels) == 1
    assert any("internal error" in r.getMessage() for r in caplog.records)
    assert in_progress(registry) == 0


async def test_a_resolver_returning_none_is_unmatched(registry: CollectorRegistry) -> None:
    """A resolver that does not know the request files it under `__unmatched__`."""
    middleware = PrometheusMiddleware(succeed, registry=registry, route_resolver=lambda s: None)
    await middleware(http_scope("/whatever"), ScriptedReceive(), RecordingSend())
    labels = {"method": "GET", "endpoint": "__unmatched__", "status_code": "200"}
    assert registry.get_sample_value("http_requests_total", labels) == 1
