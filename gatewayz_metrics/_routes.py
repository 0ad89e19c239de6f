"""Route templates: `/items/{item_id}`, never `/items/42`.

Routing happens inside the application, after the middleware has handed the request on,
so the label is read from what the router recorded, never guessed from the path:

- Starlette and FastAPI leave the matched route object in `scope["route"]` (FastAPI's
  mounts only `scope["endpoint"]`). That object knows only its own path, not the prefixes
  of the mounts and included routers above it, so the first time a route object is seen
  the application's route tree is walked once, looking through everything a mount may
  wrap (middleware objects with `.app`, sub-applications with their own middleware
  stack), and every route object is indexed with its full template; after that a request
  costs a dictionary look-up. The tree walked is the one below the middleware (the app it
  wraps), so a middleware on a mounted sub-application labels from where it sits.
- A route object reachable under several prefixes (one sub-application mounted twice, a
  router included twice) is told apart by matching the request path against the
  candidates' own compiled patterns: regular expressions only, so no path convertor,
  custom `matches()` or other user code runs a second time.
- When the router below the middleware recorded nothing, it matched nothing (a 404) or was
  never reached (an auth middleware's 401, a CORS preflight): the request path is matched
  against the indexed routes' compiled patterns and `methods`, in the routers' order, so a
  401 keeps the template its path would reach and a 404 is `__unmatched__`, again without
  running user code.
- Quart records the rule it matched in its request context; a receiver on Quart's
  `request_started` signal copies it into the scope. Where no rule was recorded (a 405,
  which werkzeug reports without its rule, or a request that failed before dispatch) the
  request is matched against the URL map a second time, with the request's host and
  scheme; werkzeug then runs the rule's converters (`to_python`) again.
"""

from __future__ import annotations

import re
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from gatewayz_metrics._http import UNMATCHED_ENDPOINT
from gatewayz_metrics._types import Scope

RouteResolver = Callable[[Scope], "str | None"]
"""A user-supplied function that names a request's route template, or `None` for unmatched."""

QUART_RULE_KEY = "gatewayz_metrics.url_rule"
"""Scope key where the rule Quart matched is left for the middleware (see `watch_quart`)."""

_MAX_DEPTH = 32
_MAX_REBUILDS = 64
_MAX_CANDIDATES = 64
_WERKZEUG_PARAM = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
_DEFAULT_PORTS = {"http": ":80", "ws": ":80", "https": ":443", "wss": ":443"}

_UNRESOLVED: Any = object()
_iter_route_contexts_cache: Any = _UNRESOLVED


def _iter_route_contexts() -> Callable[[list[Any]], Iterator[Any]] | None:
    """FastAPI's `iter_route_contexts`, imported on first need.

    Importing the package must not import a web framework (FastAPI brings pydantic: a few
    hundred milliseconds, paid by Quart apps and gunicorn arbiters too). Routes that need
    it can only exist once FastAPI is imported, so it is only looked up then.
    """
    global _iter_route_contexts_cache
    found = _iter_route_contexts_cache
    if found is _UNRESOLVED:
        found = None
        if "fastapi" in sys.modules:
            try:  # FastAPI >= 0.137 includes routers lazily; its public way to see through.
                from fastapi.routing import iter_route_contexts as found
            except ImportError:  # pragma: no cover - depends on the installed FastAPI
                found = None
        _iter_route_contexts_cache = found
    return found  # type: ignore[no-any-return]


def _expand(routes: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
    """Yield (route as matched, route object left in `scope["route"]`) for a route list."""
    routes = list(routes)
    lazy = [route for route in routes if hasattr(route, "effective_route_contexts")]
    iter_route_contexts = _iter_route_contexts() if lazy else None
    if iter_route_contexts is not None:
        for context in iter_route_contexts(routes):
            yield context, context.original_route
    else:
        for route in routes:
            yield route, route


def _mount_prefix(route: Any) -> str | None:
    """The path prefix a mount adds, or None when `route` is not a mount."""
    path_format = getattr(route, "path_format", None)
    if not isinstance(path_format, str) or not path_format.endswith("/{path}"):
        return None
    return path_format[: -len("/{path}")]


def _is_host(route: Any) -> bool:
    return isinstance(getattr(route, "host_regex", None), re.Pattern)


def _route_list(app: Any) -> list[Any] | None:
    try:
        routes = getattr(app, "routes", None)
    except Exception:
        return None
    if isinstance(routes, (list, tuple)) and routes:
        return list(routes)
    return None


def unwrap(app: Any) -> Any:
    """The router-like application below `app`'s wrappers (or `app` if there is none).

    Middleware objects keep the application they wrap in `.app` (Starlette's, uvicorn's,
    ours and most others), a Starlette/FastAPI application exposes its router's routes
    whatever middleware stack it builds, and Quart is wrapped as `app.asgi_app`, a bound
    method of the application.
    """
    seen = 0
    node = app
    while node is not None and seen <= _MAX_DEPTH:
        if _route_list(node) is not None or _quart_of(node) is not None:
            return node
        try:
            inner = getattr(node, "app", None)
        except Exception:
            inner = None
        if inner is None or inner is node:
            break
        node = inner
        seen += 1
    return app


def _quart_of(app: Any) -> Any:
    """The Quart (werkzeug URL map) application `app` is, or is a bound method of."""
    owner = getattr(app, "__self__", app)
    if getattr(owner, "url_map", None) is not None and hasattr(owner, "config"):
        return owner
    return None


def _children(route: Any) -> list[Any] | None:
    """The routes nested in a mount or host (through its wrappers), or in an application."""
    routes = _route_list(route)
    if routes is not None:
        return routes
    if _mount_prefix(route) is None and not _is_host(route):
        return None  # a Route's `.app` is its endpoint, not a nested application
    inner = unwrap(getattr(route, "app", None))
    return None if inner is None else _route_list(inner)


@dataclass(frozen=True, slots=True)
class _Candidate:
    """One place of a route object in the tree: its template and the path to it."""

    template: str
    # Outermost mount/host first, the route itself last: their compiled patterns tell
    # apart the places of an object reachable under several prefixes.
    chain: tuple[Any, ...]
    # A mount whose application matched nothing inside it (a 404 under the mount).
    nests: bool = False
    # A mount of a Quart application: its own rule completes the template.
    quart: Any = None


class TemplateIndex:
    """Maps route objects of one application to their full templates."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # id(object) -> (object, its places); the object is kept so that its id cannot be
        # reused by another object. Route objects and endpoints have separate maps.
        self._routes: dict[int, tuple[Any, list[_Candidate]]] = {}
        self._endpoints: dict[int, tuple[Any, list[_Candidate]]] = {}
        # id(route) -> (route, template) for route objects with one plain place.
        self._simple: dict[int, tuple[Any, str]] = {}
        # Every place a request can end, in the routers' order.
        self._ordered: list[_Candidate] = []
        self._indexed_root: Any = None
        self._rebuilds = 0
        self._seen_root: Any = None
        self._root_quart: Any = None

    def resolve(
        self,
        scope: Scope,
        root: Any,
        root_path: str,
        route_path: str,
        before: tuple[Any, Any] = (None, None),
    ) -> str:
        """The template of the request `scope` that `root` (the app wrapped) has handled.

        `root_path` and `route_path` are the scope's as the request reached the middleware,
        `before` its `route` and `endpoint` then (set by a router above the middleware).
        """
        route = scope.get("route")
        if route is not None and route is not before[0]:
            # The common case, one look-up: a route object with one place in the tree.
            known = self._simple.get(id(route))
            if known is not None and known[0] is route:
                return known[1]
        if root is not self._seen_root:
            # A Quart application below the middleware labels from its own URL map.
            self._root_quart = _quart_of(unwrap(root))
            if self._root_quart is not None:
                watch_quart(self._root_quart)
            self._seen_root = root
        quart = self._root_quart
        if quart is not None:
            return _quart_template(quart, scope, root_path, route_path)
        endpoint = scope.get("endpoint")
        if route is before[0]:
            route = None
        if endpoint is before[1]:
            endpoint = None
        if route is None and endpoint is None:
            # The router below recorded nothing: it matched nothing (a 404), or it was
            # never reached (an auth middleware's 401, a CORS preflight, a middleware that
            # copied the scope). Only templates can tell, never user code.
            return self._match_templates(scope, root, root_path, route_path)
        result: str | None = None
        for obj, is_endpoint in ((route, False), (endpoint, True)):
            if obj is None:
                continue
            places = self._places(obj, is_endpoint, root)
            if places is None:
                continue
            candidate, rest = _choose(places, scope, route_path)
            if candidate is None:
                return UNMATCHED_ENDPOINT
            if candidate.nests:
                # Nothing inside the mount recorded a route, unless the endpoint (what
                # FastAPI records for its mounts) names something deeper.
                result = UNMATCHED_ENDPOINT
                continue
            if candidate.quart is not None:
                prefix = candidate.template
                inner_root = root_path + route_path[: len(route_path) - len(rest)]
                inner = _quart_template(candidate.quart, scope, inner_root, rest)
                return inner if inner == UNMATCHED_ENDPOINT else prefix + inner
            return candidate.template
        if result is not None:
            return result
        # A route outside the tree we know (added by a sub-application at run time, or
        # behind a wrapper that hides its application): its own path is the best
        # bounded answer.
        own = getattr(route, "path_format", None)
        if not isinstance(own, str) or _mount_prefix(route) is not None:
            return UNMATCHED_ENDPOINT
        return own

    def _match_templates(self, scope: Scope, root: Any, root_path: str, route_path: str) -> str:
        """The first template whose compiled patterns match the request, as a router would.

        Regular expressions and the routes' `methods` only: no convertor, no `matches()`.
        """
        if self._indexed_root is not root:
            self._rebuild(root)
        method = scope.get("method")
        partial: str | None = None
        for place in self._ordered:
            rest = _follow(place.chain, scope, route_path)
            if rest is None:
                continue
            if place.quart is not None:
                inner_root = root_path + route_path[: len(route_path) - len(rest)]
                inner = _quart_template(place.quart, scope, inner_root, rest)
                return inner if inner == UNMATCHED_ENDPOINT else place.template + inner
            methods = getattr(place.chain[-1], "methods", None)
            if not methods or method in methods:
                return place.template
            partial = partial or place.template
        return partial or UNMATCHED_ENDPOINT

    def prepare(self, root: Any) -> None:
        """Index `root` before its first request, so Quart apps in it record their rules."""
        if self._indexed_root is not root:
            self._rebuild(root)

    def _places(self, obj: Any, endpoint: bool, root: Any) -> list[_Candidate] | None:
        entry = (self._endpoints if endpoint else self._routes).get(id(obj))
        if entry is None or entry[0] is not obj:
            self._rebuild(root)
            entry = (self._endpoints if endpoint else self._routes).get(id(obj))
            if entry is None or entry[0] is not obj:
                return None
        return entry[1]

    def _rebuild(self, root: Any) -> None:
        with self._lock:
            if self._indexed_root is root and self._rebuilds >= _MAX_REBUILDS:
                return
            self._rebuilds = self._rebuilds + 1 if self._indexed_root is root else 1
            self._indexed_root = root
            routes: dict[int, tuple[Any, list[_Candidate]]] = {}
            endpoints: dict[int, tuple[Any, list[_Candidate]]] = {}
            ordered: list[_Candidate] = []
            top_app = unwrap(root)
            quart = _quart_of(top_app)
            if quart is not None:
                watch_quart(quart)
            top = _route_list(top_app)
            if top is not None:
                _index(top, "", (), routes, endpoints, ordered, 0)
            self._simple = {
                key: (obj, places[0].template)
                for key, (obj, places) in routes.items()
                if len(places) == 1 and not places[0].nests and places[0].quart is None
            }
            self._routes, self._endpoints, self._ordered = routes, endpoints, ordered


def _add(out: dict[int, tuple[Any, list[_Candidate]]], obj: Any, place: _Candidate) -> None:
    if obj is None:
        return
    entry = out.get(id(obj))
    if entry is None:
        out[id(obj)] = (obj, [place])
    elif len(entry[1]) < _MAX_CANDIDATES:
        entry[1].append(place)


def _index(
    routes: Iterable[Any],
    prefix: str,
    chain: tuple[Any, ...],
    out: dict[int, tuple[Any, list[_Candidate]]],
    endpoints: dict[int, tuple[Any, list[_Candidate]]],
    ordered: list[_Candidate],
    depth: int,
) -> None:
    if depth > _MAX_DEPTH:
        return
    for matched, original in _expand(routes):
        mount = _mount_prefix(matched)
        host = _is_host(matched)
        children = _children(matched) if mount is not None or host else None
        here = (*chain, matched)
        nested_app = getattr(matched, "app", None) if mount is not None or host else None
        if children is not None:
            # A router inside a mount that matches a request replaces `scope["route"]`
            # with its own route; the mount is left there only when nothing inside it
            # matched: a 404, not the mount's `/{path}` template.
            place = _Candidate(UNMATCHED_ENDPOINT, here, nests=True)
            _index(children, prefix + (mount or ""), here, out, endpoints, ordered, depth + 1)
        elif mount is not None or host:
            quart = _quart_of(unwrap(nested_app))
            if quart is not None:
                watch_quart(quart)
                place = _Candidate(prefix + (mount or ""), here, quart=quart)
            else:
                place = _Candidate(prefix + (mount or "") + "/{path}", here)
        else:
            path_format = getattr(matched, "path_format", None)
            if not isinstance(path_format, str):
                continue
            place = _Candidate(prefix + path_format, here)
            nested_app = getattr(matched, "endpoint", None)
        if not place.nests and not _websocket_only(matched):
            ordered.append(place)
        for obj in {id(matched): matched, id(original): original}.values():
            _add(out, obj, place)
        # Starlette's Mount and Host record their application as `scope["endpoint"]`
        # (all FastAPI records for a mount); a Route records its endpoint.
        _add(endpoints, nested_app, place)


def _choose(
    places: list[_Candidate], scope: Scope, route_path: str
) -> tuple[_Candidate | None, str]:
    """The place of a route object that routed this request, and the path left below it."""
    if len(places) == 1 and places[0].quart is None:
        return places[0], ""
    for place in places:
        rest = _follow(place.chain, scope, route_path)
        if rest is not None:
            return place, rest
    return None, ""


def _follow(chain: tuple[Any, ...], scope: Scope, path: str) -> str | None:
    """Match `path` through the compiled patterns of `chain`; the path left, or None.

    Only the routes' regular expressions run, never a convertor or `matches()`.
    """
    rest = path
    for node in chain:
        host_regex = getattr(node, "host_regex", None)
        if isinstance(host_regex, re.Pattern):
            if not host_regex.match(_host(scope)):
                return None
            continue
        regex = getattr(node, "path_regex", None)
        if not isinstance(regex, re.Pattern):
            return None
        match = regex.match(rest)
        if match is None:
            return None
        if _mount_prefix(node) is not None:
            rest = "/" + (match.groupdict().get("path") or "")
    return rest


def _websocket_only(route: Any) -> bool:
    """A WebSocket route (Starlette's, FastAPI's): an HTTP request never matches it."""
    target = getattr(route, "original_route", route)
    return any(cls.__name__ == "WebSocketRoute" for cls in type(target).__mro__)


def _host(scope: Scope) -> str:
    """The request's Host header, lower-cased and without its port, as Starlette matches it."""
    try:
        for name, value in scope.get("headers") or ():
            if name == b"host":
                host: str = bytes(value).decode("latin-1").lower()
                if host.startswith("["):
                    return host.split("]", 1)[0] + "]"
                return host.split(":", 1)[0]
    except (TypeError, ValueError):
        pass  # malformed headers: no host routing could have matched them either
    return ""


# --- Quart ---------------------------------------------------------------------------

_watched: weakref.WeakSet[Any] = weakref.WeakSet()
_watch_lock = threading.Lock()


def watch_quart(app: Any) -> None:
    """Have Quart leave the rule it matched in the scope, once per Quart application.

    Quart matches a request when it pushes the request context and keeps the rule on the
    request (whose `scope` is the dict the middleware handed on); `request_started` is
    sent inside that context, after matching and before any user hook can fail.
    """
    try:
        if app in _watched:
            return
    except TypeError:  # pragma: no cover - Quart applications are hashable and weak-referable
        return
    with _watch_lock:
        if app in _watched:
            return
        try:
            from quart.signals import request_started
        except ImportError:  # pragma: no cover - a URL-map app that is not Quart
            return
        request_started.connect(_record_quart_rule, sender=app, weak=False)
        _watched.add(app)


async def _record_quart_rule(sender: Any, **_: Any) -> None:
    # An async receiver: Quart would run a sync one in a thread for every request.
    from quart import request

    try:
        rule = request.url_rule
        scope: Any = request.scope  # the dict the middleware handed on
    except Exception:  # pragma: no cover - outside a request context
        return
    if rule is not None and isinstance(scope, dict):
        scope[QUART_RULE_KEY] = rule


def _quart_template(app: Any, scope: Scope, root_path: str, path: str) -> str:
    """Template of a Quart (werkzeug) request, `<int:item_id>` written as `{item_id}`."""
    rule = scope.get(QUART_RULE_KEY)
    if rule is not None:
        text = getattr(rule, "rule", None)
        return _WERKZEUG_PARAM.sub(r"{\1}", text) if isinstance(text, str) else UNMATCHED_ENDPOINT
    return _match_werkzeug(app, scope, root_path, path)


def _match_werkzeug(app: Any, scope: Scope, root_path: str, path: str) -> str:
    """Match the request against the URL map, as Quart does, when Quart recorded no rule."""
    try:
        adapter = _bind(app, scope, root_path)
    except Exception:
        return UNMATCHED_ENDPOINT
    method = scope.get("method")
    for _ in range(2):
        try:
            rule, _ = adapter.match(path or "/", method=method, return_rule=True)
        except Exception as exc:
            # MethodNotAllowed names the methods that do match this path: match with one
            # of them to learn the rule (the response is a 405 of a known route).
            valid = getattr(exc, "valid_methods", None)
            if not valid:
                return UNMATCHED_ENDPOINT
            method = sorted(valid)[0]
            continue
        return _WERKZEUG_PARAM.sub(r"{\1}", rule.rule)
    return UNMATCHED_ENDPOINT


def _bind(app: Any, scope: Scope, root_path: str) -> Any:
    """Bind the URL map to the request's host and scheme, as Quart's `create_url_adapter`."""
    url_map = app.url_map
    scheme = scope.get("scheme") or "http"
    host = ""
    for name, value in scope.get("headers") or ():
        if name == b"host":
            host = value.decode("latin-1").lower()
            break
    if not host:
        server = scope.get("server")
        host = f"{server[0]}:{server[1]}" if server and server[1] is not None else "localhost"
    host = host.removesuffix(_DEFAULT_PORTS.get(scheme, "\0"))
    server_name = app.config.get("SERVER_NAME")
    subdomain: str | None = None
    if not getattr(app, "subdomain_matching", False):
        subdomain = url_map.default_subdomain or None
    bind_host = host if server_name is None else server_name.lower()
    bind_host = bind_host.removesuffix(_DEFAULT_PORTS.get(scheme, "\0"))
    if subdomain is None and not url_map.host_matching:
        request_parts = host.split(".")
        config_parts = bind_host.split(".")
        offset = -len(config_parts)
        if request_parts[offset:] != config_parts:
            subdomain = "<invalid>"
        else:
            subdomain = ".".join(filter(None, request_parts[:offset]))
    return url_map.bind(bind_host, root_path or None, subdomain, scheme, scope.get("method"))
