"""`PrometheusMiddleware`: HTTP metrics for any ASGI application."""

from __future__ import annotations

import asyncio
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
from gatewayz_metrics._internal import logger, report_internal_error
from gatewayz_metrics._multiprocess import multiproc_dir_problem, serve_refused
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

    _metrics: HTTPMetrics

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
        # A multiprocess directory that is missing or not writable would fail every request
        # that records a metric: fail the start-up instead, naming it (see `__call__`).
        self._refusal = multiproc_dir_problem()
        if self._refusal is None:
            self._metrics = HTTPMetrics.for_registry(
                self.registry,
                duration_buckets=None if duration_buckets is None else tuple(duration_buckets),
                ttfb_buckets=None if ttfb_buckets is None else tuple(ttfb_buckets),
                max_endpoints=max_endpoints,
            )
        else:
            logger.error("gatewayz-metrics: %s", self._refusal)
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
        self._served: dict[str, ASGIApp] | None = None
        self._served_prefixes: tuple[str, ...] = ()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # `.get` and the type checks below: a malformed scope is the application's to
        # refuse (or not); the middleware never raises where the bare application would not.
        if self._refusal is not None:
            metrics = scope.get("type") == "http" and _route_path(scope) == self.metrics_path
            await serve_refused(self._refusal, self.app, scope, receive, send, metrics=metrics)
            return
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
        root = scope.get("app", self.app)
        root_path = scope.get("root_path", "")
        metrics = self._metrics
        in_progress = metrics.in_progress_gauge(method)
        start = perf_counter()
        status: Any = None
        response_start = 0.0
        response_end = 0.0
        received = 0
        sent = 0
        client_gone = False
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
            nonlocal status, response_start, response_end, sent, client_gone
            last = False
            try:
                kind = message["type"]
                if kind == "http.response.start":
                    status = message["status"]
                    response_start = perf_counter()
                elif kind == "http.response.body":
                    if count_body:
                        sent += len(message.get("body", b""))
                    last = not message.get("more_body", False)
                elif kind == "http.response.pathsend":
                    last = True
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
                    method, self._endpoint(scope, root, root_path), status_code
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

    def _endpoint(self, scope: Scope, root: Any, root_path: str) -> str:
        resolver = self._route_resolver
        if resolver is None:
            return self._templates.resolve(scope, root, root_path)
        template = resolver(scope)
        if template is None:
            return UNMATCHED_ENDPOINT
        if not isinstance(template, str):
            raise TypeError(f"route_resolver returned {template!r}, expected str or None")
        return template

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


def _status_label(status: Any) -> str:
    if isinstance(status, int) and not isinstance(status, bool):
        return str(status)
    raise TypeError(f"the application sent a non-integer status {status!r}")
