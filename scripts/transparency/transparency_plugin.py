"""pytest plugin: run a test suite with every ASGI application wrapped, and record its messages.

Loaded with `-p transparency_plugin` (this folder on PYTHONPATH). The environment chooses:

- `GATEWAYZ_TRANSPARENCY=bare`: every application the suite runs is wrapped in a
  recorder only;
- `GATEWAYZ_TRANSPARENCY=wrapped`: every application is wrapped in
  `recorder(PrometheusMiddleware(recorder(app), registry=CollectorRegistry()))`;
- `GATEWAYZ_TRANSPARENCY_MIDDLEWARE`: `module:name` of the middleware (default
  `gatewayz_metrics:PrometheusMiddleware`);
- `GATEWAYZ_TRANSPARENCY_FRAMEWORKS`: whose ASGI classes are guarded (default
  `starlette fastapi quart`);
- `GATEWAYZ_TRANSPARENCY_OUT`: the JSON-lines file that receives one record per test:
  its outcome, how many applications were wrapped, and the normalised ASGI messages.

Applications are caught where a server meets them, so that the recording is what a server
would see: `starlette.testclient.TestClient` (HTTP, websockets and lifespan),
`httpx.ASGITransport` / `httpx2.ASGITransport`, and any direct call (a test calling
`await app(scope, receive, send)`, uvicorn, Quart's test client) of an ASGI class of
Starlette, FastAPI or Quart made outside an already wrapped application. Calls made
inside a wrapped application (routing, mounts, middleware) are the application's own and
pass untouched, so each application is wrapped once, at its outermost layer, as a user
adds the middleware.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import importlib
import inspect
import json
import os
import pkgutil
import re
import warnings
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import pytest

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MODE = os.environ.get("GATEWAYZ_TRANSPARENCY", "")
OUT = os.environ.get("GATEWAYZ_TRANSPARENCY_OUT", "")
# "module:callable" taking (app, registry=...): the middleware under test in wrapped mode;
# PrometheusMiddleware unless the harness's own test swaps in a deliberately broken one.
MIDDLEWARE = os.environ.get(
    "GATEWAYZ_TRANSPARENCY_MIDDLEWARE", "gatewayz_metrics:PrometheusMiddleware"
)

# Set while a call runs inside a wrapped application: calls of framework classes made
# there belong to the application and must not be wrapped a second time.
_inside: contextvars.ContextVar[bool] = contextvars.ContextVar("transparency_inside", default=False)

# Nondeterminism that differs between two bare runs, never between bare and wrapped:
# object addresses, random multipart boundaries and ids, thread idents, dates, tmp dirs.
# (Set ordering is fixed by PYTHONHASHSEED in the runner; signed timestamps and races
# are left to the reruns, see compare.py.)
_NORMALISERS = [
    (re.compile(r"0x[0-9a-fA-F]{6,}"), "0xADDR"),
    (
        re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"),
        "UUID",
    ),
    (re.compile(r"(?<![0-9a-zA-Z])[0-9a-f]{9,}(?![0-9a-zA-Z])"), "HEX"),
    (re.compile(r"(?<![0-9.])\d{10,}(?![0-9])"), "BIGINT"),
    (
        re.compile(
            r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d[ -](?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug"
            r"|Sep|Oct|Nov|Dec)[ -]\d{4} \d\d:\d\d:\d\d GMT"
        ),
        "HTTPDATE",
    ),
    (re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:?\d\d|Z)?"), "ISODATE"),
    (re.compile(r"name='Task-\d+'"), "name='Task-N'"),
    (re.compile(r"pytest-of-[^/\\']+[/\\]pytest-\d+"), "PYTEST_TMP"),
    (re.compile(r"/tmp/tmp[a-z0-9_]{6,}"), "/tmp/TMP"),
    (re.compile(r"\b\d+\.\d{5,}\b"), "FLOAT"),
]
_MAX_EVENT = 4000  # longer events (big bodies) are kept as a digest


_CANCELLED = re.compile(r"^(?:receive|send)-raised '(?:Cancelled|CancelledError)'$")
_CANCELLED_END = re.compile(r"""^raised ["'](?:Cancelled|CancelledError)\b""")
_DISCONNECT = "receive {type: 'http.disconnect'}"
_ENDED = "after the last message: disconnected, cancelled or returned"


def _is_last_message(event: str) -> bool:
    return event.startswith("send ") and (
        ("'http.response.body'" in event and "more_body: True" not in event)
        or "'websocket.close'" in event
    )


def canonical(events: list[str]) -> list[str]:
    """One connection's events with the scheduler's races taken out.

    Once an application has sent its last message (the final body, or a websocket close),
    how its task ends is up to the event loop and the client, in a bare run as in a
    wrapped one: Starlette's disconnect listener receives `http.disconnect` or is
    cancelled first, a websocket app's pending send returns or is cancelled when the test
    client closes. Those endings become one marker; anything else after the last message
    (a second response, an error other than a cancellation) stays as it was. And when a
    task group is cancelled, the order in which its pending receive and send see the
    cancellation is the scheduler's too: a run of cancellations is sorted.
    """
    result: list[str] = []
    done = False
    ended = False
    for event in events:
        if done and (
            event in (_DISCONNECT, "returned")
            or _CANCELLED.match(event)
            or _CANCELLED_END.match(event)
        ):
            ended = True
            continue
        done = done or _is_last_message(event)
        result.append(event)
    if ended:
        result.append(_ENDED)
    start = 0
    while start < len(result):
        end = start
        while end < len(result) and _CANCELLED.match(result[end]):
            end += 1
        if end > start:
            result[start:end] = sorted(result[start:end])
            start = end
        else:
            start += 1
    return result


class _State:
    test: str = "<session>"
    wrapped_apps = 0
    direct_wraps = 0
    # Applications wrapped outside any test: module-level `client = TestClient(app)`,
    # built while the suite is collected.
    wrapped_outside_tests = 0
    # connection key -> list of events; a connection is one call of an application.
    connections: dict[tuple[str, int], list[str]] = {}
    serial = 0
    direct: dict[int, tuple[object, ASGIApp]] = {}


def _norm_value(value: Any, depth: int = 0) -> str:
    if depth > 6:
        return "..."
    if isinstance(value, dict):
        items = sorted((str(k), _norm_value(v, depth + 1)) for k, v in value.items())
        return "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_norm_value(v, depth + 1) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if isinstance(value, (str, bytes, bytearray, int, float, bool)) or value is None:
        return repr(value)
    # Objects (apps, routes, state, loops) are compared by type: their identity differs
    # between any two runs.
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


def normalise(kind: str, value: Any) -> str:
    """One recorded event as a stable string."""
    text = f"{kind} {_norm_value(value)}"
    for pattern, replacement in _NORMALISERS:
        text = pattern.sub(replacement, text)
    if len(text) > _MAX_EVENT:
        digest = hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest()
        text = f"{text[:200]}... ({len(text)} chars, sha256 {digest})"
    return text


# The one key PrometheusMiddleware adds to the scope on purpose (documented in the README):
# the registries measuring the request, so that a second middleware on the same registry
# does not count it twice. Every other key must be the bare run's.
_OWN_SCOPE_KEY = "gatewayz_metrics.measured_by"


def _scope_view(scope: Scope) -> dict[str, Any]:
    # The scope as handed over; keys the framework adds later are not part of it.
    return {key: value for key, value in scope.items() if key != _OWN_SCOPE_KEY}


class Recorder:
    """Records one application's calls: the scope, every message received and sent."""

    def __init__(self, app: ASGIApp, stream: str) -> None:
        self.app = app
        self.stream = stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        _State.serial += 1
        events: list[str] = []
        _State.connections[(self.stream, _State.serial)] = events
        events.append(normalise("scope", _scope_view(scope)))

        async def recording_receive() -> Message:
            try:
                message = await receive()
            except BaseException as exc:
                events.append(normalise("receive-raised", type(exc).__name__))
                raise
            events.append(normalise("receive", message))
            return message

        async def recording_send(message: Message) -> None:
            events.append(normalise("send", message))
            try:
                await send(message)
            except BaseException as exc:
                events.append(normalise("send-raised", type(exc).__name__))
                raise

        token = _inside.set(True)
        try:
            await self.app(scope, recording_receive, recording_send)
        except BaseException as exc:
            events.append(normalise("raised", f"{type(exc).__qualname__}: {exc}"))
            raise
        finally:
            _inside.reset(token)
        events.append("returned")


def wrap(app: Any) -> Any:
    """The application as this run serves it: recorded, and in wrapped mode measured."""
    if isinstance(app, Recorder) or not callable(app):
        return app
    _State.wrapped_apps += 1
    if _State.test.startswith("<"):
        _State.wrapped_outside_tests += 1
    if MODE == "wrapped":
        from prometheus_client import CollectorRegistry

        module, _, name = MIDDLEWARE.partition(":")
        middleware = getattr(importlib.import_module(module), name)
        inner = middleware(Recorder(app, "inner"), registry=CollectorRegistry())
        return Recorder(inner, "outer")
    return Recorder(app, "outer")


def _is_asgi_call(function: Any) -> bool:
    if not inspect.iscoroutinefunction(function):
        return False
    try:
        names = list(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return False
    return names[1:4] == ["scope", "receive", "send"]


def _guard(original: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    @functools.wraps(original)
    async def guarded(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
        if _inside.get():
            await original(self, scope, receive, send)
            return
        # Called from outside any wrapped application: a server, or a test by hand.
        entry = _State.direct.get(id(self))
        if entry is None or entry[0] is not self:
            _State.direct_wraps += 1
            entry = (self, wrap(functools.partial(original, self)))
            _State.direct[id(self)] = entry
        await entry[1](scope, receive, send)

    return guarded


FRAMEWORKS = os.environ.get("GATEWAYZ_TRANSPARENCY_FRAMEWORKS", "starlette fastapi quart").split()
_MODULES = {
    "starlette": [
        "starlette.applications",
        "starlette.routing",
        "starlette.responses",
        "starlette.staticfiles",
    ],
    "fastapi": ["fastapi.applications", "fastapi.routing", "fastapi.responses", "fastapi.sse"],
    "quart": ["quart.app"],
}


def _framework_modules() -> list[str]:
    names = [name for framework in FRAMEWORKS for name in _MODULES.get(framework, [])]
    for package in (f"{framework}.middleware" for framework in FRAMEWORKS):
        try:
            module = importlib.import_module(package)
        except ImportError:
            continue
        names.extend(info.name for info in pkgutil.iter_modules(module.__path__, f"{package}."))
    return names


def _install() -> list[str]:
    guarded: list[str] = []
    for name in _framework_modules():
        try:
            with warnings.catch_warnings():
                # starlette.middleware.wsgi warns that it is deprecated, on import.
                warnings.simplefilter("ignore")
                module = importlib.import_module(name)
        except Exception:  # an optional dependency of that module is absent
            continue
        for cls in vars(module).values():
            if not isinstance(cls, type) or cls.__module__ != name:
                continue
            call = cls.__dict__.get("__call__")
            if call is not None and _is_asgi_call(call):
                cls.__call__ = _guard(call)  # type: ignore[method-assign,operator]
                guarded.append(f"{name}.{cls.__qualname__}")

    try:
        from starlette import testclient
    except ImportError:
        pass
    else:
        original_init = testclient.TestClient.__init__

        @functools.wraps(original_init)
        def client_init(self: Any, app: Any, *args: Any, **kwargs: Any) -> None:
            if not testclient._is_asgi3(app):
                app = testclient._WrapASGI2(app)
            original_init(self, wrap(app), *args, **kwargs)

        testclient.TestClient.__init__ = client_init  # type: ignore[method-assign]
        guarded.append("starlette.testclient.TestClient")

    for client in ("httpx", "httpx2"):
        try:
            transport = importlib.import_module(client).ASGITransport
        except (ImportError, AttributeError):
            continue
        guarded.append(f"{client}.ASGITransport")
        _patch_transport(transport)
    return guarded


def _patch_transport(transport: Any) -> None:
    original_init = transport.__init__

    @functools.wraps(original_init)
    def transport_init(self: Any, app: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, wrap(app), *args, **kwargs)

    transport.__init__ = transport_init


class _Collector:
    def __init__(self, out: str) -> None:
        self.out = open(out, "w", encoding="utf-8")  # noqa: SIM115 - closed at session end
        self.phases: dict[str, list[str]] = {}

    def start(self, nodeid: str) -> None:
        _State.test = nodeid
        _State.wrapped_apps = 0
        _State.direct_wraps = 0
        _State.connections = {}
        _State.direct = {}
        self.phases[nodeid] = []

    def report(self, report: pytest.TestReport) -> None:
        outcome = report.outcome
        if hasattr(report, "wasxfail"):
            outcome = "xfailed" if report.skipped else "xpassed"
        if report.when == "call" or outcome != "passed":
            self.phases.setdefault(report.nodeid, []).append(f"{report.when}:{outcome}")

    def finish(self, nodeid: str) -> None:
        phases = self.phases.pop(nodeid, [])
        outcomes = [phase.split(":", 1)[1] for phase in phases]
        outcome = "passed"
        for candidate in ("failed", "xpassed", "xfailed", "skipped"):
            if candidate in outcomes:
                outcome = candidate
                break
        streams: dict[str, list[list[str]]] = {}
        for (stream, _serial), events in _State.connections.items():
            streams.setdefault(stream, []).append(canonical(events))
        for conns in streams.values():
            # Concurrent connections may start in any order; within one, order matters.
            conns.sort()
        record = {
            "id": nodeid,
            "outcome": outcome,
            "phases": phases,
            "wrapped_apps": _State.wrapped_apps,
            "direct_wraps": _State.direct_wraps,
            "streams": streams,
        }
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()
        _State.test = "<between tests>"
        _State.connections = {}
        _State.direct = {}

    def close(self) -> None:
        summary = {"id": "", "wrapped_outside_tests": _State.wrapped_outside_tests}
        self.out.write(json.dumps(summary) + "\n")
        self.out.close()


_collector: _Collector | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _collector
    # pytest-xdist's marker, used by FastAPI's suite; xdist itself is not needed.
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist grouping")
    if MODE not in ("bare", "wrapped"):
        raise pytest.UsageError("GATEWAYZ_TRANSPARENCY must be 'bare' or 'wrapped'")
    if not OUT:
        raise pytest.UsageError("GATEWAYZ_TRANSPARENCY_OUT must name the results file")
    guarded = _install()
    _collector = _Collector(OUT)
    config.stash[_guarded_key] = guarded


_guarded_key = pytest.StashKey[list[str]]()


def pytest_report_header(config: pytest.Config) -> str:
    return f"transparency: {MODE}, {len(config.stash[_guarded_key])} wrapping points"


def pytest_runtest_logstart(nodeid: str, location: object) -> None:
    assert _collector is not None
    _collector.start(nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    assert _collector is not None
    _collector.report(report)


def pytest_runtest_logfinish(nodeid: str, location: object) -> None:
    assert _collector is not None
    _collector.finish(nodeid)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _collector is not None:
        _collector.close()
