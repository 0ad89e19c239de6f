"""`PrometheusMiddleware`: HTTP metrics for any ASGI application."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterable
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry

from gatewayz_metrics._exposition import MetricsApp
from gatewayz_metrics._http import (
    OTHER_METHOD,
    STANDARD_METHODS,
    UNMATCHED_ENDPOINT,
    HTTPMetrics,
    request_measured,
)
from gatewayz_metrics._internal import report_internal_error
from gatewayz_metrics._registry import resolve_registry
from gatewayz_metrics._routes import RouteResolver, TemplateIndex, find_mounted
from gatewayz_metrics._types import ASGIApp, Message, Receive, Scope, Send

CLIENT_CLOSED_REQUEST = "499"
"""The status recorded when the client went away before the response was complete."""

_STATUS_LABELS = {code: str(code) for code in range(100, 600)}


class PrometheusMiddleware:
    """Record HTTP request metrics for an ASGI application, labelled by route template.

    Starlette / FastAPI: `app.add_middleware(PrometheusMiddleware)`.
    Quart: `app.asgi_app = PrometheusMiddleware(app.asgi_app)`.
    Any ASGI app: `app = PrometheusMiddleware(app)`.

    Unless a `MetricsApp` is mounted in the application, the middleware answers
    `metrics_path` itself (set it to `None` to serve no metrics); a mounted `MetricsApp`
    is answered at its bare mount path too, so `/metrics` never redirects to `/metrics/`.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: CollectorRegistry | None = None,
        metrics_path: str | None = "/metrics",
        bearer_token: str | None = None,
        exclude_paths: Iterable[str | re.Pattern[str]] = (),
        duration_buckets: Iterable[float] | None = None,
        ttfb_buckets: Iterable[float] | None = None,
        max_endpoints: int | None = None,
        route_resolver: RouteResolver | None = None,
    ) -> None:
        self.app = app
        self.registry = resolve_registry(registry)
        self._metrics = HTTPMetrics.for_registry(
            self.registry,
            duration_buckets=None if duration_buckets is None else tuple(duration_buckets),
            ttfb_buckets=None if ttfb_buckets is None else tuple(ttfb_buckets),
            max_endpoints=max_endpoints,
        )
        if metrics_path is not None and (
            not isinstance(metrics_path, str) or not metrics_path.startswith("/")
        ):
            raise ValueError(f"metrics_path must start with '/' or be None, got {metrics_path!r}")
        if route_resolver is not None and not callable(route_resolver):
            raise TypeError(f"route_resolver must be callable, got {route_resolver!r}")
        self.metrics_path = metrics_path
        self._exact_excluded: set[str] = set()
        self._patterns: list[re.Pattern[str]] = []
        if isinstance(exclude_paths, (str, re.Pattern)):
            exclude_paths = [exclude_paths]
        for entry in exclude_paths:
            if isinstance(entry, str):
                self._exact_excluded.add(entry)
            elif isinstance(entry, re.Pattern):
                self._patterns.append(entry)
            else:
                raise TypeError(
                    "exclude_paths takes exact paths (str) and compiled patterns "
                    f"(re.compile(...)), got {entry!r}"
                )
        # The registry passed on is the caller's; None keeps MetricsApp's multiprocess
        # awareness for the default registry.
        self._own_metrics_app = MetricsApp(registry, bearer_token=bearer_token)
        self._route_resolver = route_resolver
        self._templates = TemplateIndex()
        self._prepared = False
        self._served: dict[str, ASGIApp] | None = None
        self._served_prefixes: tuple[str, ...] = ()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # `.get` and the type checks below: a malformed scope is the application's to
        # refuse (or not); the middleware never raises where the bare application would not.
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        served = self._served
        if served is None:
            served = self._discover_metrics(scope)
        metrics_app = served.get(path)
        if metrics_app is not None:
            await metrics_app(scope, receive, send)
            return
        if (
            path in self._exact_excluded
            or path.startswith(self._served_prefixes)
            or (self._patterns and any(p.fullmatch(path) for p in self._patterns))
        ):
            await self.app(scope, receive, send)
            return

        measuring = request_measured.get()
        if measuring and self.registry in measuring:
            # The same registry is already measuring this request (the middleware was
            # added twice): counting it again would double every number.
            await self.app(scope, receive, send)
            return

        verb = scope.get("method")
        method = STANDARD_METHODS.get(verb, OTHER_METHOD) if isinstance(verb, str) else OTHER_METHOD
        # Routing below the middleware is what names the route: the app wrapped (not
        # `scope["app"]`, the outermost application when this one is mounted), the
        # prefix as seen from here, and what a router above had already recorded.
        root_path = scope.get("root_path", "")
        before = (scope.get("route"), scope.get("endpoint"))
        if not self._prepared:
            self._prepare()
        metrics = self._metrics
        in_progress = metrics.in_progress_gauge(method)
        start = perf_counter()
        status: Any = None
        response_start = 0.0
        response_end = 0.0
        received = 0
        sent = 0
        client_gone = False
        trailers = False
        # A server sends no body in answer to HEAD, whatever the application hands it.
        count_body = scope.get("method") != "HEAD"

        async def receive_wrapper() -> Message:
            nonlocal received, client_gone
            message = await receive()
            try:
                kind = message["type"]
                if kind == "http.request":
                    received += len(message.get("body", b""))
                elif kind == "http.disconnect" and not response_end:
                    client_gone = True
            except Exception as exc:
                report_internal_error(metrics.registry, "middleware.receive", exc)
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_start, response_end, sent, client_gone, trailers
            last = False
            try:
                kind = message["type"]
                if kind == "http.response.start":
                    status = message["status"]
                    response_start = perf_counter()
                    trailers = bool(message.get("trailers", False))
                elif kind == "http.response.body":
                    if count_body:
                        sent += len(message.get("body", b""))
                    # With HTTP trailers announced, the trailers end the response.
                    last = not message.get("more_body", False) and not trailers
                elif kind == "http.response.trailers":
                    last = not message.get("more_trailers", False)
                elif kind == "http.response.pathsend":
                    # ASGI Path Send: the server sends the whole file; it ends the response.
                    if count_body:
                        sent += _file_size(message.get("path"))
                    last = not trailers
                elif kind == "http.response.zerocopysend":
                    # ASGI Zero Copy Send: `count` bytes of `file` (to its end when absent),
                    # and like a body message it is the last unless `more_body` says more.
                    if count_body:
                        sent += _zerocopy_bytes(message)
                    last = not message.get("more_body", False) and not trailers
            except Exception as exc:
                report_internal_error(metrics.registry, "middleware.send", exc)
            try:
                await send(message)
            except OSError:
                # The server could not write: the client is gone.
                client_gone = True
                raise
            if last:
                response_end = perf_counter()

        in_progress.inc()
        token = request_measured.set((*measuring, self.registry))
        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except asyncio.CancelledError:
            # Servers cancel the request task when its client goes away.
            client_gone = client_gone or not response_end
            raise
        finally:
            request_measured.reset(token)
            in_progress.dec()
            try:
                end = response_end or perf_counter()
                if client_gone and not response_end:
                    status_code = CLIENT_CLOSED_REQUEST
                elif status is None:
                    status_code = "500"
                else:
                    status_code = _STATUS_LABELS.get(status) or _status_label(status)
                requests, children = metrics.series(
                    method, self._endpoint(scope, root_path, path, before), status_code
                )
                requests.inc()
                children.duration.observe(end - start)
                if response_start:
                    children.ttfb.observe(response_start - start)
                # The series exist from binding; adding 0 (most GETs) is a wasted lock.
                if received:
                    children.request_size.inc(received)
                if sent:
                    children.response_size.inc(sent)
            except Exception as exc:
                report_internal_error(metrics.registry, "middleware.record", exc)

    def _endpoint(
        self, scope: Scope, root_path: Any, route_path: str, before: tuple[Any, Any]
    ) -> str:
        """The `endpoint` label: what routing below this middleware decided.

        `root_path`, `route_path` and `before` (`scope["route"]`/`["endpoint"]`) are as
        the request reached the middleware. Labels come from the route the router left in
        the scope; only when it left none (a 404, a request answered before routing) or a
        Quart 405 is the request matched again: on compiled patterns only for
        Starlette/FastAPI, against the URL map for Quart (see `_routes`).
        """
        resolver = self._route_resolver
        if resolver is None:
            if not isinstance(root_path, str):
                root_path = ""
            return self._templates.resolve(scope, self.app, root_path, route_path, before)
        template = resolver(scope)
        if template is None:
            return UNMATCHED_ENDPOINT
        if not isinstance(template, str):
            raise TypeError(f"route_resolver returned {template!r}, expected str or None")
        return template

    def _prepare(self) -> None:
        """Index the routes below before the first request (Quart apps then record rules)."""
        self._prepared = True
        if self._route_resolver is None:
            try:
                self._templates.prepare(self.app)
            except Exception as exc:
                report_internal_error(self.registry, "middleware.routes", exc)

    def _discover_metrics(self, scope: Scope) -> dict[str, ASGIApp]:
        """Find where metrics are served: mounted `MetricsApp`s, else our own path."""
        served: dict[str, ASGIApp] = {}
        try:
            root = scope.get("app", self.app)
            mounted = find_mounted(root, lambda app: isinstance(app, MetricsApp))
        except Exception as exc:
            report_internal_error(self.registry, "middleware.discover", exc)
            mounted = {}
        if mounted:
            # Starlette answers a bare mount path with a redirect before the mounted
            # app is called; answering it here is what makes `/metrics` a 200.
            served.update(mounted)
            self._served_prefixes = tuple(path.rstrip("/") + "/" for path in mounted)
        elif self.metrics_path is not None:
            served[self.metrics_path] = self._own_metrics_app
        self._served = served
        return served


def _route_path(scope: Scope) -> str:
    """The path below `root_path`, as the application's router sees it.

    Servers run behind a prefix (`uvicorn --root-path /api`) put the prefix in both
    `root_path` and `path`; `metrics_path` and `exclude_paths` name application paths.
    """
    path = scope.get("path", "")
    root_path = scope.get("root_path", "")
    if not isinstance(path, str):
        return ""  # matches no metrics or excluded path: the request is measured
    if root_path and isinstance(root_path, str) and path.startswith(root_path):
        rest = path[len(root_path) :]
        if not rest or rest[0] == "/":
            return rest or "/"
    return path


def _file_size(path: Any) -> int:
    """Size of the file a `http.response.pathsend` names, 0 when it cannot be read."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        return 0
    try:
        return os.stat(path).st_size
    except (OSError, ValueError):
        return 0


def _zerocopy_bytes(message: Message) -> int:
    """Bytes a `http.response.zerocopysend` sends: `count`, at most to the file's end."""
    count = message.get("count")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        count = None
    remaining: int | None
    try:
        file: Any = message.get("file")
        fd = file if isinstance(file, int) else file.fileno()
        offset = message.get("offset")
        if not isinstance(offset, int) or isinstance(offset, bool):
            # Without `offset`, the server reads from the file's current position.
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        remaining = max(0, os.fstat(fd).st_size - offset)
    except (OSError, ValueError, AttributeError, TypeError):
        remaining = None
    if count is None:
        return remaining or 0
    return count if remaining is None else min(count, remaining)


def _status_label(status: Any) -> str:
    if isinstance(status, int) and not isinstance(status, bool):
        return str(status)
    raise TypeError(f"the application sent a non-integer status {status!r}")
