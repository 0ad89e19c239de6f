"""Raw ASGI plumbing for tests: hand-built scopes, scripted `receive`, recording `send`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, MutableMapping
from typing import Any

import httpx

Message = dict[str, Any]


def http_scope(
    path: str = "/",
    *,
    method: str = "GET",
    headers: Iterable[tuple[bytes, bytes]] = (),
    query_string: bytes = b"",
) -> dict[str, Any]:
    """An `http` scope as a server would build it."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query_string,
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


class ScriptedReceive:
    """Yields the scripted messages in order, then waits the way a server does for a client
    that is still connected: until `disconnect()` is called (then `http.disconnect`)."""

    def __init__(self, messages: Iterable[Message] = ({"type": "http.request"},)) -> None:
        self._messages = list(messages)
        self._gone = asyncio.Event()

    def disconnect(self) -> None:
        """Make the waiting (and every later) `receive()` return `http.disconnect`."""
        self._gone.set()

    async def __call__(self) -> Message:
        if self._messages:
            return self._messages.pop(0)
        await self._gone.wait()
        return {"type": "http.disconnect"}


class RecordingSend:
    """Records every message sent; raises `fail_with` on the `fail_at`-th message (from 0)."""

    def __init__(self, *, fail_at: int | None = None, fail_with: BaseException | None = None):
        self.messages: list[Message] = []
        self._fail_at = fail_at
        self._fail_with = fail_with

    async def __call__(self, message: MutableMapping[str, Any]) -> None:
        if self._fail_at is not None and len(self.messages) == self._fail_at:
            assert self._fail_with is not None
            raise self._fail_with
        self.messages.append(dict(message))

    @property
    def status(self) -> int:
        """The status of the `http.response.start` message."""
        starts = [m for m in self.messages if m["type"] == "http.response.start"]
        assert len(starts) == 1, self.messages
        status: int = starts[0]["status"]
        return status

    @property
    def body(self) -> bytes:
        """The response body, all chunks joined."""
        return b"".join(
            m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"
        )

    @property
    def headers(self) -> dict[bytes, bytes]:
        """The response headers, names lower-case."""
        start = next(m for m in self.messages if m["type"] == "http.response.start")
        return {bytes(k).lower(): bytes(v) for k, v in start.get("headers", [])}


def client_for(
    app: Any, *, raise_app_exceptions: bool = False, root_path: str = ""
) -> httpx.AsyncClient:
    """An httpx client talking to `app` in-process (redirects are not followed)."""
    transport = httpx.ASGITransport(
        app=app, raise_app_exceptions=raise_app_exceptions, root_path=root_path
    )
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")
