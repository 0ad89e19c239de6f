"""Route templates: `/items/{item_id}`, never `/items/42`.

Routing happens inside the application, after the middleware has handed the request on.
Starlette and FastAPI leave the matched route object in `scope["route"]`; that object
knows only its own path, not the prefixes of the mounts and included routers above it.
So the first time a route object is seen, the application's route tree is walked once
and every route object is indexed with its full template; after that a request costs
one dictionary look-up. A route object reachable under two different prefixes (a router
included twice) is ambiguous and is resolved by matching the request against the tree.
Quart (werkzeug rules) is matched against its URL map.
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from gatewayz_metrics._http import UNMATCHED_ENDPOINT
from gatewayz_metrics._types import Scope

RouteResolver = Callable[[Scope], "str | None"]
"""A user-supplied function that names a request's route template, or `None` for unmatched."""

_MAX_DEPTH = 32
_MAX_REBUILDS = 64
_FULL = 2  # starlette.routing.Match.FULL, without importing Starlette
_PARTIAL = 1
_WERKZEUG_PARAM = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")

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
    """The path prefix a mount adds, or None when `route` does not nest routes."""
    path_format = getattr(route, "path_format", None)
    if not isinstance(path_format, str) or not path_format.endswith("/{path}"):
        return None
    return path_format[: -len("/{path}")]


def _nests_routes(route: Any) -> bool:
    return _mount_prefix(route) is not None and _children(route) is not None


def _children(route: Any) -> list[Any] | None:
    """The routes of a mount, router or Starlette/FastAPI application, if it has any."""
    try:
        children = getattr(route, "routes", None)
    except Exception:
        return None
    return list(children) if children else None


class TemplateIndex:
    """Maps route objects of one application to their full templates."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # id(route) -> (route, template or None when ambiguous); the route is kept so
        # that its id cannot be reused by another object.
        self._templates: dict[int, tuple[Any, str | None]] = {}
        self._indexed_root: Any = None
        self._rebuilds = 0

    def resolve(self, scope: Scope, root: Any, root_path: str) -> str:
        """Return the template of the request `scope` that `root` has just handled."""
        route = scope.get("route")
        if route is None:
            if _children(root) is None:
                # Quart is wrapped as `app.asgi_app`, a bound method of the application.
                url_map = getattr(getattr(root, "__self__", root), "url_map", None)
                if url_map is not None:
                    return _match_werkzeug(url_map, scope, root_path)
                return UNMATCHED_ENDPOINT
            # No route left in the scope: a 404, or a mount under a router that does not
            # record mounts (FastAPI). Matching the tree tells the two apart.
            return _match_tree(root, scope, root_path) or UNMATCHED_ENDPOINT
        entry = self._templates.get(id(route))
        if entry is None or entry[0] is not route:
            self._rebuild(root)
            entry = self._templates.get(id(route))
            if entry is None or entry[0] is not route:
                # A route outside the tree we know (added by a sub-application at run
                # time): its own path is the best bounded answer.
                own = getattr(route, "path_format", None)
                if not isinstance(own, str) or _nests_routes(route):
                    return UNMATCHED_ENDPOINT
                return own
        template = entry[1]
        if template is not None:
            return template
        return _match_tree(root, scope, root_path) or UNMATCHED_ENDPOINT

    def _rebuild(self, root: Any) -> None:
        with self._lock:
            if self._indexed_root is root and self._rebuilds >= _MAX_REBUILDS:
                return
            self._rebuilds = self._rebuilds + 1 if self._indexed_root is root else 1
            self._indexed_root = root
            templates: dict[int, tuple[Any, str | None]] = {}
            routes = _children(root)
            if routes is not None:
                _index(routes, "", templates, 0)
            self._templates = templates


def _index(
    routes: Iterable[Any], prefix: str, out: dict[int, tuple[Any, str | None]], depth: int
) -> None:
    if depth > _MAX_DEPTH:
        return
    for matched, original in _expand(routes):
        path_format = getattr(matched, "path_format", None)
        mount = _mount_prefix(matched)
        children = _children(matched)
        if isinstance(path_format, str):
            template = prefix + path_format
            if mount is not None and children is not None:
                # A router inside a mount that matches a request replaces
                # `scope["route"]` with its own route; the mount is left there only when
                # nothing inside it matched: a 404, not the mount's `/{path}` template.
                template = UNMATCHED_ENDPOINT
            for obj in {id(matched): matched, id(original): original}.values():
                known = out.get(id(obj))
                if known is None:
                    out[id(obj)] = (obj, template)
                elif known[1] != template:
                    out[id(obj)] = (obj, None)
        if children is not None:
            # A Mount nests under its prefix; a Host (no path format) nests as it is.
            _index(children, prefix + (mount or ""), out, depth + 1)


def _match_tree(root: Any, scope: Scope, root_path: str) -> str | None:
    """Match the request against the route tree, as the router did, to find its template."""
    probe = {k: v for k, v in scope.items() if k not in ("route", "fastapi", "path_params")}
    probe["root_path"] = root_path
    routes = _children(root)
    return None if routes is None else _match_routes(routes, probe, "", 0)


def _match_routes(
    routes: Iterable[Any], scope: dict[str, Any], prefix: str, depth: int
) -> str | None:
    if depth > _MAX_DEPTH:
        return None
    partial: str | None = None
    for matched, _ in _expand(routes):
        try:
            match, child_scope = matched.matches(scope)
        except Exception:
            continue
        level = getattr(match, "value", match)
        if level not in (_FULL, _PARTIAL):
            continue
        path_format = getattr(matched, "path_format", None)
        mount = _mount_prefix(matched)
        children = _children(matched)
        template: str | None = None
        if children is not None:
            # A mount of routes is only a match if a route inside it matches: a path
            # under the mount that nothing inside matched is a 404, not `/prefix/{path}`.
            inner = {**scope, **child_scope}
            template = _match_routes(children, inner, prefix + (mount or ""), depth + 1)
            if template is None:
                continue
        elif isinstance(path_format, str):
            template = prefix + path_format
        if level == _FULL:
            return template
        partial = partial or template
    return partial


def _match_werkzeug(url_map: Any, scope: Scope, root_path: str) -> str:
    """Template of a Quart (werkzeug) request, `<int:item_id>` written as `{item_id}`."""
    path = scope.get("path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :] or "/"
    try:
        adapter = url_map.bind("localhost")
    except Exception:
        return UNMATCHED_ENDPOINT
    method = scope.get("method")
    for _ in range(2):
        try:
            rule, _ = adapter.match(path, method=method, return_rule=True)
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


def find_mounted(root: Any, predicate: Callable[[Any], bool]) -> dict[str, Any]:
    """Full paths of the routes and mounts whose ASGI app satisfies `predicate`."""
    found: dict[str, Any] = {}
    routes = _children(root)
    if routes is not None:
        _find(routes, "", predicate, found, 0)
    return found


def _find(
    routes: Iterable[Any],
    prefix: str,
    predicate: Callable[[Any], bool],
    found: dict[str, Any],
    depth: int,
) -> None:
    if depth > _MAX_DEPTH:
        return
    for matched, _ in _expand(routes):
        app = getattr(matched, "app", None)
        mount = _mount_prefix(matched)
        path_format = getattr(matched, "path_format", None)
        if app is not None and predicate(app):
            path = prefix + (mount if mount is not None else path_format or "")
            if path:
                found[path] = app
            continue
        children = _children(matched)
        if children is not None:
            _find(children, prefix + (mount or ""), predicate, found, depth + 1)
