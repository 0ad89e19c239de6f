"""`PrometheusMiddleware`: HTTP metrics for any ASGI application."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from time import perf_counter
from typing import Any

from prometheus_client import CollectorRegistry

from gatewayz_metrics._aio import is_cancellation
from gatewayz_metrics._exemplars import ExemplarOption, check_option, exemplar_for
from gatewayz_metrics._exposition import (
    BEARER_TOKEN_ENV,
    MetricsApp,
    check_token,
    serves_registry,
    unlisted,
)
from gatewayz_metrics._http import (
    MEASURED_SCOPE_KEY,
    STATUS_LABELS,
    UNMATCHED_ENDPOINT,
    HTTPMetrics,
    Measurement,
    method_label,
    request_measured,
    status_label,
)
from gatewayz_metrics._internal import create_self_metrics, logger, report_internal_error
from gatewayz_metrics._labels import clean_label
from gatewayz_metrics._multiprocess import multiproc_dir_problem, serve_refused
from gatewayz_metrics._registry import resolve_registry
from gatewayz_metrics._routes import (
    RouteResolver,
    TemplateIndex,
    _bind,
    _children,
    _expand,
    _is_host,
    _mount_prefix,
    _quart_of,
    unwrap,
)
from gatewayz_metrics._types import ASGIApp, Message, Receive, Scope, Send

CLIENT_CLOSED_REQUEST = "499"
"""The status recorded when the client went away before the response was complete."""


class PrometheusMiddleware:
    """Record HTTP request metrics for an ASGI application, labelled by route template.

    Starlette / FastAPI: `app.add_middleware(PrometheusMiddleware)`.
    Quart: `app.asgi_app = PrometheusMiddleware(app.asgi_app)`.
    Any ASGI app: `app = PrometheusMiddleware(app)`.

    Unless a `MetricsApp` serves the same registry (wherever it is mounted), a
    `PrometheusMiddleware` below answers `metrics_path`, or the application routes that
    path itself, the middleware answers `metrics_path` itself (set it to `None` to serve
    no metrics). A request for the bare path of a mounted `MetricsApp`
    (`/metrics`) goes down the application as the slash path the mount expects
    (`/metrics/`): no 307 redirect, and every middleware, mount and host rule on the way
    still decides, exactly as for `/metrics/`.

    `exemplar`: the duration and TTFB observations carry the `trace_id` and `span_id` of
    the active, sampled OpenTelemetry span (`True`, the default; put OpenTelemetry's
    middleware outside this one, as `FastAPIInstrumentor` does), none (`False`), or what
    `exemplar(scope)` returns (a mapping of str to str, or None). A function that raises
    or returns an invalid exemplar never fails the request: the observation is recorded
    without it and counted in `gatewayz_metrics_invalid_values_total`.
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
        exemplar: bool | Callable[[Scope], Mapping[str, str] | None] = True,
    ) -> None:
        self.app = app
        self._exemplar: ExemplarOption = check_option("exemplar", exemplar, mapping=False)
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
            if callable(exemplar):
                # Its drops are counted from 0, so that increase() sees the first one.
                create_self_metrics(
                    self.registry, invalid=[("http_request_duration_seconds", "exemplar")]
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
        # Checked here as well as in MetricsApp: the value is compared with the tokens of
        # mounted MetricsApps below.
        self._bearer_token = check_token("bearer_token", bearer_token)
        # The registry passed on is the caller's; None keeps MetricsApp's multiprocess
        # awareness for the default registry.
        self._own_metrics_app = unlisted(MetricsApp(registry, bearer_token=bearer_token))
        self._route_resolver = route_resolver
        self._measured_by_us = (self.registry,)
        self._templates = TemplateIndex()
        # Surveyed at the first request (every route exists by then; with a token, at the
        # end of lifespan start-up too): where metrics are served.
        self._last_survey: _Survey | None = None
        self._prepared = False
        # The router-like application below this middleware, found at the first request
        # (routes may be added until then): where metrics are mounted and routes live.
        self._root: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # `.get` and the type checks below: a malformed scope is the application's to
        # refuse (or not); the middleware never raises where the bare application would not.
        if self._refusal is not None:
            metrics = scope.get("type") == "http" and _route_path(scope) == self.metrics_path
            await serve_refused(self._refusal, self.app, scope, receive, send, metrics=metrics)
            return
        kind = scope.get("type")
        if kind != "http":
            if kind == "lifespan" and self._bearer_token is not None:
                # Only a token can be dropped: without one the scope passes untouched.
                await self.app(scope, receive, self._checking_startup(scope, send))
                return
            await self.app(scope, receive, send)
            return
        path = _route_path(scope)
        root = self._survey_root()
        survey = self._last_survey or self._survey(root)
        if path == self.metrics_path and survey.own and _route_count(root) != survey.count:
            # Routes were added since the survey: before serving our own endpoint, make
            # sure no MetricsApp (with its protections) was mounted meanwhile. Only scrapes
            # pay for this check.
            survey = self._survey(root)
        if survey.error is not None:
            # A fresh exception each time: re-raising one object grows its traceback.
            raise ValueError(survey.error)
        if path in survey.bare:
            # Starlette would redirect `/metrics` to `/metrics/` before the mount is
            # reached; answering here would skip what lies between (auth middleware, a
            # mount's middleware, a Host rule). The request goes down the application as
            # the path the mount expects, and everything on the way decides.
            await self.app(_with_slash(scope), receive, send)
            return
        if path == self.metrics_path:
            if survey.own and self._serves_own(scope, path, root):
                await self._own_metrics_app(scope, receive, send)
                return
            if survey.below:
                # A PrometheusMiddleware below answers this path, with its protections
                # (a token): this one neither answers nor counts the scrape.
                await self.app(scope, receive, send)
                return
        if (
            path in self._exact_excluded
            or path.startswith(survey.prefixes)
            or (self._patterns and any(p.fullmatch(path) for p in self._patterns))
        ):
            await self.app(scope, receive, send)
            return

        measured_by = scope.get(MEASURED_SCOPE_KEY, ())
        if self.registry in measured_by:
            # The same registry is already measuring this request (the middleware was
            # added twice): counting it again would double every number.
            await self.app(scope, receive, send)
            return

        method = method_label(scope.get("method"))
        # Routing below the middleware is what names the route: the app wrapped (not
        # `scope["app"]`, the outermost application when this one is mounted), the
        # prefix as seen from here, and what a router above had already recorded.
        root_path = scope.get("root_path", "")
        before = (scope.get("route"), scope.get("endpoint"))
        if not self._prepared:
            self._prepare()
        metrics = self._metrics
        measurement = Measurement(self.registry)
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
                measurement.complete = True

        # Our bookkeeping never fails a request: the gauge's child may need a file in
        # multiprocess mode (a full disk, a removed directory). A try costs nothing
        # until it catches.
        try:
            in_progress = metrics.in_progress_gauge(method)
            in_progress.inc()
        except Exception as exc:
            in_progress = None
            report_internal_error(metrics.registry, "middleware.in_progress", exc)
        try:
            scope[MEASURED_SCOPE_KEY] = (
                (*measured_by, self.registry) if measured_by else self._measured_by_us
            )
        except Exception as exc:  # a read-only scope: the stacked-twice guard is lost, no more
            report_internal_error(metrics.registry, "middleware.record", exc)
        token = request_measured.set((*request_measured.get(), measurement))
        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except BaseException as exc:
            if is_cancellation(exc):
                # Servers cancel the request task when its client goes away (asyncio's
                # CancelledError, trio's Cancelled).
                client_gone = client_gone or not response_end
            raise
        finally:
            measurement.complete = True
            request_measured.reset(token)
            if in_progress is not None:
                try:
                    in_progress.dec()
                except Exception as exc:
                    report_internal_error(metrics.registry, "middleware.in_progress", exc)
            try:
                end = response_end or perf_counter()
                if client_gone and not response_end:
                    status_code = CLIENT_CLOSED_REQUEST
                elif status is None:
                    status_code = "500"
                else:
                    status_code = STATUS_LABELS.get(status) or status_label(status)
                requests, children = metrics.series(
                    method, self._endpoint(scope, root_path, path, before), status_code
                )
                requests.inc()
                # One exemplar for both histograms: the same request, the same trace.
                exemplar = exemplar_for(
                    metrics.registry, "http_request_duration_seconds", self._exemplar, scope
                )
                children.duration.observe(end - start, exemplar)
                if response_start:
                    children.ttfb.observe(response_start - start, exemplar)
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
        # Like every label value: a lone surrogate would make every later scrape fail.
        return clean_label("route_resolver result", template)

    def _prepare(self) -> None:
        """Index the routes below before the first request (Quart apps then record rules)."""
        self._prepared = True
        if self._route_resolver is None:
            try:
                self._templates.prepare(self.app)
            except Exception as exc:
                report_internal_error(self.registry, "middleware.routes", exc)

    def _survey_root(self) -> Any:
        """The application whose routes this middleware surveys: the one it wraps.

        Not `scope["app"]`: when this middleware wraps a sub-application mounted in another
        one, that is the outer application, whose `/metrics` is not this one's.
        """
        root = self._root
        if root is None:
            root = self._root = unwrap(self.app)
        return root

    def _serves_own(self, scope: Scope, path: str, root: Any) -> bool:
        """Whether nothing else answers `path`, checked at each scrape of `metrics_path`.

        A MetricsApp of this registry, wherever it is (a Host, a function wrapper the
        survey cannot look through, mounted after the first request), carries the
        protections the application gave it: the request goes down to the application,
        which answers as it would (404, 403, ...). So does a path a Quart rule matches.
        """
        if serves_registry(self.registry):
            return False
        quart = _quart_of(root)
        if quart is None:
            return True
        try:
            adapter = _bind(quart, scope, scope.get("root_path") or "")
            adapter.match(path, method=scope.get("method"))
        except Exception as exc:
            # NotFound: no rule. MethodNotAllowed, RequestRedirect (`/metrics/`): a rule.
            return type(exc).__name__ == "NotFound"
        return False

    def _survey(self, root: Any) -> _Survey:
        """Find where metrics are served in `root`, and refuse a token that would be dropped."""
        try:
            survey = _survey_routes(root, self.metrics_path)
        except Exception as exc:
            report_internal_error(self.registry, "middleware.discover", exc)
            survey = _Survey()
        below = _middlewares_below(self.app, root, self.metrics_path)
        survey.below = bool(below)
        survey.own = (
            self.metrics_path is not None
            and not survey.mounted
            and not survey.hidden
            and not survey.routes_metrics_path
            and not below
        )
        token = self._bearer_token
        if token is not None:
            unprotected = sorted(
                path
                for path, app in (*survey.mounted.items(), *survey.hidden.items())
                if app._token != token
            )
            unprotected += [
                f"{middleware.metrics_path} (a PrometheusMiddleware below this one)"
                for middleware in below
                if middleware._bearer_token != token
            ]
            if unprotected:
                survey.error = (
                    f"PrometheusMiddleware(bearer_token=...) protects only the metrics it "
                    f"serves itself, but the application serves them from a MetricsApp "
                    f"mounted at {', '.join(unprotected)} without that token: pass the same "
                    f"bearer_token= to that MetricsApp (or set {BEARER_TOKEN_ENV} for both)"
                )
        survey.count = _route_count(root)
        self._last_survey = survey
        return survey

    def _checking_startup(self, scope: Scope, send: Send) -> Send:
        """`send` that checks the metrics configuration once the application has started."""

        async def checked(message: Message) -> None:
            if message.get("type") == "lifespan.startup.complete":
                # Every route exists now (startup handlers may add some): look again, and
                # fail the start-up rather than serve metrics without their token.
                survey = self._survey(self._survey_root())
                if survey.error is not None:
                    message = {"type": "lifespan.startup.failed", "message": survey.error}
            await send(message)

        return checked


class _Survey:
    """Where an application serves metrics, as found in its route tree."""

    __slots__ = (
        "bare",
        "below",
        "count",
        "error",
        "hidden",
        "mounted",
        "own",
        "prefixes",
        "routed",
        "routes_metrics_path",
    )

    def __init__(self) -> None:
        self.mounted: dict[str, MetricsApp] = {}
        """Full mount path -> the MetricsApp mounted there (possibly inside a wrapper)."""
        self.hidden: dict[str, MetricsApp] = {}
        """MetricsApps with no bare path (under a Host, at a root mount), by where they are."""
        self.routed: set[str] = set()
        """Full paths the application routes to something other than a MetricsApp."""
        self.routes_metrics_path = False
        """Whether a route of the application matches `metrics_path` (or its slash path)."""
        self.below = False
        """Whether a PrometheusMiddleware below this one answers `metrics_path`."""
        self.bare: frozenset[str] = frozenset()
        """Bare mount paths handed down as their slash path."""
        self.prefixes: tuple[str, ...] = ()
        """Paths under a mounted MetricsApp: scrapes, not recorded."""
        self.own = False
        """Whether the middleware serves `metrics_path` itself."""
        self.count = -1
        """How many routes the application had at its top level when surveyed."""
        self.error: str | None = None
        """Why the configuration is refused (a token the mounted MetricsApps would drop)."""


def _route_count(root: Any) -> int:
    try:
        routes = getattr(root, "routes", None)
        return len(routes) if routes is not None else -1
    except Exception:
        return -1


def _survey_routes(root: Any, metrics_path: str | None) -> _Survey:
    survey = _Survey()
    routes = _children(root)
    if routes is not None:
        _walk(routes, "", survey, metrics_path, 0)
    # A bare path the application routes itself (a Host-specific route, say) is left to it.
    survey.bare = frozenset(path for path in survey.mounted if path and path not in survey.routed)
    survey.prefixes = tuple(path.rstrip("/") + "/" for path in survey.mounted)
    return survey


_MAX_DEPTH = 32


def _walk(
    routes: Iterable[Any], prefix: str, survey: _Survey, target: str | None, depth: int
) -> None:
    if depth > _MAX_DEPTH:
        return
    for matched, _ in _expand(routes):
        mount = _mount_prefix(matched)
        children = _children(matched)
        if mount is None:
            if _is_host(matched):
                metrics_app = _metrics_app_in(getattr(matched, "app", None))
                if metrics_app is not None:
                    # Every path of that host: no bare path, but no copy of ours either.
                    survey.hidden[f"Host({getattr(matched, 'host', '?')!r})"] = metrics_app
                    continue
            path_format = getattr(matched, "path_format", None)
            if isinstance(path_format, str):
                survey.routed.add(prefix + path_format)
                if _matches(matched, prefix, target):
                    survey.routes_metrics_path = True
        else:
            metrics_app = _metrics_app_in(getattr(matched, "app", None))
            if metrics_app is not None:
                if prefix + mount:
                    survey.mounted[prefix + mount] = metrics_app
                else:  # a MetricsApp at the root serves every path: no bare path
                    survey.hidden[f"{prefix or '/'} (root mount)"] = metrics_app
                continue
            survey.routed.add(prefix + mount)
            # An application mounted below a prefix gets every path under it; one mounted
            # at the root (static files, say) leaves `metrics_path` to the middleware.
            if children is None and mount and _matches(matched, prefix, target):
                survey.routes_metrics_path = True
        if children is not None:
            # A Mount nests under its prefix; a Host (no path format) nests as it is.
            _walk(children, prefix + (mount or ""), survey, target, depth + 1)


def _matches(route: Any, prefix: str, target: str | None) -> bool:
    """Whether `route` (under `prefix`) matches `target`, or its slash path (Starlette
    redirects `/metrics` to a `/metrics/` route), by the route's own compiled pattern."""
    if target is None or not target.startswith(prefix):
        return False
    regex = getattr(route, "path_regex", None)
    if not isinstance(regex, re.Pattern):
        return False
    rest = target[len(prefix) :] or "/"
    return bool(regex.match(rest) or (not rest.endswith("/") and regex.match(rest + "/")))


def _middlewares_below(app: Any, root: Any, metrics_path: str | None) -> list[PrometheusMiddleware]:
    """The PrometheusMiddlewares down the `.app` chain from `app` to `root` that answer
    `metrics_path` (a library adding one inside the application's own, say)."""
    found: list[PrometheusMiddleware] = []
    if metrics_path is None:
        return found
    node = app
    for _ in range(_MAX_DEPTH):
        if node is None or node is root:
            break
        if isinstance(node, PrometheusMiddleware) and node.metrics_path == metrics_path:
            found.append(node)
        try:
            node = getattr(node, "app", None)
        except Exception:
            break
    return found


def _metrics_app_in(app: Any) -> MetricsApp | None:
    """The MetricsApp that `app` is, or wraps (`AuthMiddleware(MetricsApp())`), if any."""
    for _ in range(_MAX_DEPTH):
        if isinstance(app, MetricsApp):
            return app
        if app is None or _children(app) is not None:
            return None  # routes of their own: walked as routes
        app = getattr(app, "app", None)
    return None


def _with_slash(scope: Scope) -> Scope:
    """`scope` for the same request with `/` appended to its path, as a redirect would."""
    slashed = dict(scope)
    slashed["path"] = scope["path"] + "/"
    raw_path = scope.get("raw_path")
    if isinstance(raw_path, bytes):
        slashed["raw_path"] = raw_path + b"/"
    return slashed


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
