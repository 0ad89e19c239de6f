"""`MetricsApp`: the ASGI application that serves the exposition format."""

from __future__ import annotations

import asyncio
import gzip
import hmac
import os
import threading
from collections.abc import Callable, Sequence
from functools import partial
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import Collector

from gatewayz_metrics._internal import logger, report_internal_error
from gatewayz_metrics._registry import resolve_registry
from gatewayz_metrics._render import TEXT, CollectorError, Renderer, format_for
from gatewayz_metrics._types import Receive, Scope, Send

BEARER_TOKEN_ENV = "GATEWAYZ_METRICS_BEARER_TOKEN"
"""Environment variable read for the bearer token when `bearer_token=` is not given."""

_ALLOW = b"GET, HEAD"
_RenderKey = tuple[str, tuple[str, ...], bool]
_Slot = tuple[asyncio.AbstractEventLoop, _RenderKey]


class MetricsApp:
    """Serve a registry in the Prometheus text format (or OpenMetrics when asked).

    `GET` and `HEAD` only. Gzip when the client accepts it, `name[]` filtering,
    optional bearer-token protection. The text format of prometheus_client's own metric
    types renders on the event loop in ~1 ms slices (`TextRenderer`); everything else,
    custom collectors and callbacks included, renders in a worker thread, so a large
    registry never stalls the event loop. Concurrent scrapes share one render.

    With `registry=None` the default registry is served, or, when the environment
    variable `PROMETHEUS_MULTIPROC_DIR` is set, the live sum of all worker processes.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        bearer_token: str | None = None,
        gzip: bool = True,
    ) -> None:
        self._multiprocess = registry is None and bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        self.registry: CollectorRegistry = resolve_registry(registry)
        if bearer_token is None:
            bearer_token = os.environ.get(BEARER_TOKEN_ENV) or None
        if bearer_token is not None and (not isinstance(bearer_token, str) or not bearer_token):
            raise ValueError(
                f"bearer_token must be a non-empty string or None, got {bearer_token!r}"
            )
        self._token = None if bearer_token is None else bearer_token.encode()
        self._gzip = gzip
        self._inflight: dict[
            tuple[asyncio.AbstractEventLoop, _RenderKey], asyncio.Future[bytes]
        ] = {}
        self._counts_lock = threading.Lock()
        self.scrapes = 0
        """Scrapes answered with 200 since start."""
        self.renders = 0
        """Renders performed since start; below `scrapes` when scrapes shared a render."""
        self._logged_failures: set[str] = set()
        self._renderer = Renderer()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":
            # A websocket (or unknown) connection to the metrics path: refuse it.
            if kind == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, b"Method Not Allowed\n", [(b"allow", _ALLOW)])
            return
        headers = _headers(scope)
        if self._token is not None and not self._authorized(headers.get(b"authorization", b"")):
            await _respond(
                send,
                401,
                b"Unauthorized\n",
                [(b"www-authenticate", b'Bearer realm="metrics"')],
                head=method == "HEAD",
            )
            return
        accept = headers.get(b"accept", b"").decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        compress = self._gzip and gzip_accepted(
            headers.get(b"accept-encoding", b"").decode("latin-1")
        )
        names = _names(scope.get("query_string", b""))
        try:
            body = await self._shared_render((content_type, names, compress), encoder)
        except Exception as exc:
            reason = f"metrics collection failed: {type(exc).__name__}"
            self._log_failure(reason, exc)
            await _respond(send, 500, reason.encode() + b"\n", [], head=method == "HEAD")
            return
        extra = [(b"content-encoding", b"gzip"), (b"vary", b"Accept-Encoding")] if compress else []
        with self._counts_lock:
            self.scrapes += 1
        await _respond(
            send,
            200,
            body,
            [(b"content-type", content_type.encode()), *extra],
            head=method == "HEAD",
        )

    def _authorized(self, header: bytes) -> bool:
        assert self._token is not None
        scheme, _, credentials = header.partition(b" ")
        # compare_digest on both branches: the time taken must not tell how much matched.
        ok = hmac.compare_digest(credentials.strip(), self._token)
        return ok and scheme.lower() == b"bearer"

    async def _shared_render(self, key: _RenderKey, encoder: Callable[[Collector], bytes]) -> bytes:
        loop = asyncio.get_running_loop()
        slot = (loop, key)
        pending = self._inflight.get(slot)
        if pending is not None:
            # A render that started before this scrape arrived is at most one render
            # old; sharing it is what keeps N concurrent scrapes at the cost of one.
            return await asyncio.shield(pending)
        future: asyncio.Future[bytes]
        if self._renders_text(key, encoder):
            future = asyncio.ensure_future(self._render_text(key, encoder))
        else:
            future = loop.run_in_executor(None, self._render, key, encoder)
        self._inflight[slot] = future
        try:
            return await asyncio.shield(future)
        finally:
            if self._inflight.get(slot) is future:
                del self._inflight[slot]

    def _renders_text(self, key: _RenderKey, encoder: Callable[[Collector], bytes]) -> bool:
        """Whether `Renderer` gives the body `encoder` would: text or OpenMetrics 1.0.0, whole."""
        if key[1] or self._multiprocess:
            return False
        return format_for(encoder) is not None

    async def _render_text(self, key: _RenderKey, encoder: Callable[[Collector], bytes]) -> bytes:
        # On the event loop, in slices: a render thread would hold the GIL for hundreds of
        # milliseconds and every request of the loop would wait for it. Collectors that may
        # block still run in a worker thread (see Renderer).
        try:
            body = await self._renderer.render(self.registry, format_for(encoder) or TEXT)
        except CollectorError as exc:
            # A collector of the user raised: a 500 naming what it raised. Not retried
            # (it would run again and fail again), and not a fault of ours.
            raise (exc.__cause__ or exc) from None
        except Exception as exc:
            # The fast path reads prometheus_client internals. Should a release change
            # them, prometheus_client's own encoder still gives the right answer: retry
            # with it.
            loop = asyncio.get_running_loop()
            body = await loop.run_in_executor(None, self._render, key, encoder)
            report_internal_error(self.registry, "render.fast", exc)
            return body
        with self._counts_lock:
            self.renders += 1
        if not key[2]:
            return body
        # zlib releases the GIL while it compresses.
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, partial(gzip.compress, body, compresslevel=6))

    def _render(self, key: _RenderKey, encoder: Callable[[Collector], bytes]) -> bytes:
        _, names, compress = key
        with self._counts_lock:
            self.renders += 1
        source: Collector = self._source()
        if names:
            source = self._restricted(names, source)
        body = encoder(source)
        return gzip.compress(body, compresslevel=6) if compress else body

    def _source(self) -> Collector:
        if not self._multiprocess:
            return self.registry
        from gatewayz_metrics._multiprocess import multiprocess_registry

        return multiprocess_registry()

    @staticmethod
    def _restricted(names: Sequence[str], source: Collector) -> Collector:
        restrict = getattr(source, "restricted_registry", None)
        if restrict is None:  # pragma: no cover - every CollectorRegistry has it
            return source
        return restrict(names)  # type: ignore[no-any-return]

    def _log_failure(self, reason: str, exc: BaseException) -> None:
        if reason in self._logged_failures:
            return
        self._logged_failures.add(reason)
        logger.error("gatewayz-metrics: %s (logged once per kind)", reason, exc_info=exc)


def _names(query_string: bytes | str) -> tuple[str, ...]:
    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    if not query_string:
        return ()
    return tuple(sorted(set(parse_qs(query_string).get("name[]", ()))))


def _headers(scope: Scope) -> dict[bytes, bytes]:
    headers: dict[bytes, bytes] = {}
    for name, value in scope.get("headers") or ():
        headers[bytes(name).lower()] = bytes(value)
    return headers


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    head: bool = False,
) -> None:
    if not any(name == b"content-type" for name, _ in headers):
        headers = [(b"content-type", b"text/plain; charset=utf-8"), *headers]
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
