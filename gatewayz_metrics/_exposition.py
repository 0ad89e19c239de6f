"""`MetricsApp`: the ASGI application that serves the exposition format."""

from __future__ import annotations

import gzip
import hmac
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import Collector

from gatewayz_metrics._aio import Waitable, is_cancellation, loop_token, new_event, run_sync, spawn
from gatewayz_metrics._internal import logger, report_internal_error
from gatewayz_metrics._multiprocess import MultiprocDirError, send_unavailable
from gatewayz_metrics._registry import resolve_registry
from gatewayz_metrics._render import TEXT, CollectorError, Renderer, format_for
from gatewayz_metrics._types import Receive, Scope, Send

if TYPE_CHECKING:
    from gatewayz_metrics._mpread import FastMultiProcessReader

BEARER_TOKEN_ENV = "GATEWAYZ_METRICS_BEARER_TOKEN"
"""Environment variable read for the bearer token when `bearer_token=` is not given."""
BEARER_TOKEN_FILE_ENV = "GATEWAYZ_METRICS_BEARER_TOKEN_FILE"
"""Environment variable naming a file that holds the token (a Docker or Kubernetes secret)."""

_ALLOW = b"GET, HEAD"
# Every answer of the endpoint depends on how the client negotiates: caches must key on it.
_VARY = (b"vary", b"Accept, Accept-Encoding")
_RenderKey = tuple[str, tuple[str, ...], bool]
"""(content type, `name[]` values, gzip): the content type names the encoder."""
_Slot = tuple[object, _RenderKey]
Encoder = Callable[[Collector], bytes]
_DEFAULT_FORMAT: tuple[Encoder, str] = choose_encoder("")


def negotiate(accept: str) -> tuple[Encoder, str]:
    """The encoder and content type for an `Accept` header; never raises.

    For a valid header, prometheus_client's own choice (`choose_encoder`). A media range it
    cannot parse (`text/plain; version=abc` makes it raise) is skipped like one it does
    not serve, so a malformed header gets the text format instead of a 500.
    """
    for media_range in accept.split(","):
        try:
            chosen = choose_encoder(media_range)
        except Exception:
            continue
        if chosen[0] is not _DEFAULT_FORMAT[0]:
            return chosen
    return _DEFAULT_FORMAT


def check_token(argument: str, token: object) -> bytes | None:
    """A configured bearer token as bytes, stripped of surrounding whitespace; `None` stays.

    A token read from a secret file or an environment variable usually ends with a
    newline that no client sends; a blank token would protect nothing.
    """
    if token is None:
        return None
    if not isinstance(token, str):
        raise TypeError(f"{argument} must be a str or None, got {type(token).__name__}")
    stripped = token.strip()
    if not stripped:
        # The value itself stays out of the message: it is meant to be a secret.
        raise ValueError(f"{argument} must not be empty or blank")
    return stripped.encode()


def configured_token(bearer_token: object) -> bytes | None:
    """The token from the argument, else `GATEWAYZ_METRICS_BEARER_TOKEN`, else the file that
    `GATEWAYZ_METRICS_BEARER_TOKEN_FILE` names; `None` when none is set."""
    if bearer_token is not None:
        return check_token("bearer_token", bearer_token)
    # An unset variable and an empty one both mean "not set".
    value = os.environ.get(BEARER_TOKEN_ENV) or None
    path = os.environ.get(BEARER_TOKEN_FILE_ENV) or None
    if path is None:
        return check_token(BEARER_TOKEN_ENV, value)
    if value is not None:
        raise ValueError(f"set {BEARER_TOKEN_ENV} or {BEARER_TOKEN_FILE_ENV}, not both")
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ValueError(f"{BEARER_TOKEN_FILE_ENV}: cannot read {path!r}: {reason}") from None
    return check_token(f"the token in {BEARER_TOKEN_FILE_ENV} ({path})", text)


def authorized(header: bytes, token: bytes) -> bool:
    """Whether an `Authorization` header carries `Bearer <token>`, compared in constant time."""
    scheme, _, credentials = header.partition(b" ")
    # compare_digest on both branches: the time taken must not tell how much matched.
    ok = hmac.compare_digest(credentials.strip(), token)
    return ok and scheme.lower() == b"bearer"


class _Flight:
    """One render and the scrapes that wait for it."""

    __slots__ = ("body", "done", "error")

    def __init__(self) -> None:
        self.done: Waitable = new_event()
        self.body = b""
        self.error: Exception | None = None


# Every MetricsApp alive, whether or not a route survey can see where it is mounted (under
# a Host, a root mount, a function wrapper): `PrometheusMiddleware` never serves its own
# copy of a registry that a MetricsApp serves, whose protections it cannot know.
_live_apps: weakref.WeakSet[MetricsApp] = weakref.WeakSet()
_live_lock = threading.Lock()


def serves_registry(registry: CollectorRegistry) -> bool:
    """Whether a live MetricsApp that the application created serves `registry`."""
    with _live_lock:
        apps = list(_live_apps)
    return any(app.registry is registry for app in apps)


def unlisted(app: MetricsApp) -> MetricsApp:
    """`app`, a middleware's own endpoint: not one that makes middlewares step aside."""
    with _live_lock:
        _live_apps.discard(app)
    return app


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
        self._token = configured_token(bearer_token)
        self._gzip = gzip
        # Per loop and render key: the render running now, and the one that starts when
        # it ends, shared by every scrape that arrived while the first was running.
        self._running: dict[_Slot, _Flight] = {}
        self._next: dict[_Slot, _Flight] = {}
        self._counts_lock = threading.Lock()
        self.scrapes = 0
        """Scrapes answered with 200 since start."""
        self.renders = 0
        """Renders performed since start; below `scrapes` when scrapes shared a render."""
        self._logged_failures: set[str] = set()
        self._renderer = Renderer()
        self._mp_reader: FastMultiProcessReader | None = None
        with _live_lock:
            _live_apps.add(self)

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
        head = method == "HEAD"
        headers = _headers(scope)
        if self._token is not None and not self._authorized(headers.get(b"authorization", b"")):
            await _respond(
                send,
                401,
                b"Unauthorized\n",
                [(b"www-authenticate", b'Bearer realm="metrics"')],
                head=head,
            )
            return
        encoder, content_type = negotiate(headers.get(b"accept", b"").decode("latin-1"))
        compress = self._gzip and gzip_accepted(
            headers.get(b"accept-encoding", b"").decode("latin-1")
        )
        names = _names(scope.get("query_string", b""))
        try:
            body = await self._shared_render((content_type, names, compress), encoder)
        except Exception as exc:
            reason = f"metrics collection failed: {type(exc).__name__}"
            self._log_failure(reason, exc)
            if isinstance(exc, MultiprocDirError):  # a 503 that names no path
                await send_unavailable(send, head=head, headers=[_VARY])
                return
            await _respond(send, 500, reason.encode() + b"\n", [_VARY], head=head)
            return
        extra = [(b"content-encoding", b"gzip")] if compress else []
        with self._counts_lock:
            self.scrapes += 1
        await _respond(
            send,
            200,
            body,
            [(b"content-type", content_type.encode("latin-1")), *extra, _VARY],
            head=head,
        )

    def _authorized(self, header: bytes) -> bool:
        assert self._token is not None
        return authorized(header, self._token)

    async def _shared_render(self, key: _RenderKey, encoder: Encoder) -> bytes:
        """The body for `key`, from a render that began after this scrape arrived.

        Scrapes that arrive while a render runs share the next one: N concurrent scrapes
        cost at most two renders, and none is answered with data older than its arrival.
        """
        slot = (loop_token(), key)
        if slot not in self._running:
            flight = self._running[slot] = _Flight()
            spawn(partial(self._fly, slot, flight, encoder))
        else:
            queued = self._next.get(slot)
            flight = self._next[slot] = queued if queued is not None else _Flight()
        # A scrape cancelled here (its client went away) leaves the render to the others.
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error
        return flight.body

    async def _fly(self, slot: _Slot, flight: _Flight, encoder: Encoder) -> None:
        """Render for `flight`, then for the scrapes that queued meanwhile, until none wait."""
        key = slot[1]
        current: _Flight | None = flight
        while current is not None:
            try:
                if self._renders_text(key, encoder):
                    current.body = await self._render_text(key, encoder)
                else:
                    current.body = await run_sync(self._render, key, encoder)
            except BaseException as exc:
                if not isinstance(exc, Exception) or is_cancellation(exc):
                    # The loop is shutting down: release every waiter, then stop.
                    pending: _Flight | None = current
                    while pending is not None:
                        pending.error = RuntimeError("the render was cancelled")
                        pending = self._hand_over(slot, pending)
                    raise
                current.error = exc
            current = self._hand_over(slot, current)

    def _hand_over(self, slot: _Slot, finished: _Flight) -> _Flight | None:
        # No await between reading and writing the two tables: on one loop this is atomic.
        following = self._next.pop(slot, None)
        if following is None:
            del self._running[slot]
        else:
            self._running[slot] = following
        finished.done.set()
        return following

    def _renders_text(self, key: _RenderKey, encoder: Encoder) -> bool:
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
            body = await run_sync(self._render, key, encoder)
            report_internal_error(self.registry, "render.fast", exc)
            return body
        with self._counts_lock:
            self.renders += 1
        if not key[2]:
            return body
        # zlib releases the GIL while it compresses.
        return await run_sync(partial(gzip.compress, body, compresslevel=6))

    def _render(self, key: _RenderKey, encoder: Encoder) -> bytes:
        _, names, compress = key
        with self._counts_lock:
            self.renders += 1
        if self._multiprocess and not names:
            body = self._multiprocess_reader().render(encoder)
        else:
            source: Collector = self._source()
            if names:
                source = self._restricted(names, source)
            body = encoder(source)
        return gzip.compress(body, compresslevel=6) if compress else body

    def _multiprocess_reader(self) -> FastMultiProcessReader:
        # Imported here: only a multiprocess deployment pays for the reader's import.
        from gatewayz_metrics._mpread import FastMultiProcessReader

        # One per app: it keeps the keys parsed from the workers' files between scrapes.
        with self._counts_lock:
            if self._mp_reader is None:
                directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
                self._mp_reader = FastMultiProcessReader(directory, registry=self.registry)
            return self._mp_reader

    def _source(self) -> Collector:
        if not self._multiprocess:
            return self.registry
        from gatewayz_metrics._multiprocess import _merged_registry

        return _merged_registry(None, self.registry)

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
