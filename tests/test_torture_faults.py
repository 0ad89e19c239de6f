"""Faults: a user's collector that raises, every exception an application can raise, faults in
our own bookkeeping, and workers killed with SIGKILL in multiprocess mode.

The promise each time: the application's requests are answered as if the middleware were not
there, every request is accounted once, exceptions come out unchanged, and `/metrics` fails
loudly (a short 500, logged once per kind) only while the fault lasts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _apps import FRAMEWORKS, STREAM_CHUNKS, build_app
from _asgi import Message, RecordingSend, ScriptedReceive, client_for, http_scope
from fastapi import FastAPI
from fastapi import HTTPException as FastAPIHTTPException
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from gatewayz_metrics import GatewayMetrics, MetricsApp, PrometheusMiddleware, mark_dead_workers
from gatewayz_metrics import _internal as internal

ENDPOINT = "/raw"
REPO_ROOT = Path(__file__).resolve().parent.parent
INTERNAL_ERRORS = "gatewayz_metrics_internal_errors_total"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
SECRET = "password=hunter2@10.0.0.7"
"""Put in exception messages: it must reach the log, never a response."""


@pytest.fixture(autouse=True)
def fresh_log_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget which internal faults were logged, so each test sees its own first log."""
    monkeypatch.setattr(internal, "_logged", set())


def all_samples(registry: CollectorRegistry, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called `name`: sorted labels -> value."""
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def internal_errors(registry: CollectorRegistry) -> dict[str, float]:
    """`gatewayz_metrics_internal_errors_total` by component, faults seen only (the known
    components' series exist at 0 from the start)."""
    return {dict(k)["component"]: v for k, v in all_samples(registry, INTERNAL_ERRORS).items() if v}


def statuses(registry: CollectorRegistry) -> dict[str, float]:
    """`http_requests_total` per status code, all endpoints and methods together."""
    totals: dict[str, float] = {}
    for labels, value in all_samples(registry, "http_requests_total").items():
        status = dict(labels)["status_code"]
        totals[status] = totals.get(status, 0.0) + value
    return totals


def fault_logs(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    """Messages logged by gatewayz_metrics that contain `text`."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "gatewayz_metrics" and text in r.getMessage()
    ]


# --- 3. a collector of the user that raises ----------------------------------------------


class TheirError(Exception):
    """A user's exception type."""


class FaultyCollector:
    """A collector of the user: fine, or failing in one of several ways."""

    def __init__(self) -> None:
        self.fault: str | None = None

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        if self.fault == "raises":
            raise RuntimeError(f"the database refused: {SECRET}")
        if self.fault == "raises-their-own":
            raise TheirError(SECRET)
        if self.fault == "slow-then-raises":
            time.sleep(0.05)
            raise TimeoutError(SECRET)
        if self.fault == "yields-garbage":
            yield SECRET  # type: ignore[misc]
            return
        if self.fault == "bad-value":
            family = GaugeMetricFamily("their_value", "A value of theirs.", labels=["who"])
            family.add_metric([SECRET], "not a number")  # type: ignore[arg-type]
            yield family
            return
        yield GaugeMetricFamily("their_value", "A value of theirs.", value=1)


COLLECTOR_FAULTS = ["raises", "raises-their-own", "slow-then-raises", "yields-garbage", "bad-value"]


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=FRAMEWORKS)
async def test_a_raising_collector_fails_scrapes_loudly_and_requests_not_at_all(
    framework: str, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """Five kinds of collector fault, each under concurrent traffic: every scrape (GET, HEAD,
    OpenMetrics, gzip) is a short plain-text 500 without the details, each kind is logged
    once, every application request succeeds and is counted; once the fault is gone the
    next scrape is a 200."""
    collector = FaultyCollector()
    registry.register(collector)
    app = build_app(framework, registry)
    scrape_variants: list[tuple[str, dict[str, str]]] = [
        ("GET", {}),
        ("HEAD", {}),
        ("GET", {"Accept": OPENMETRICS}),
        ("GET", {"Accept-Encoding": "gzip"}),
    ]
    app_requests = 0
    with caplog.at_level(logging.ERROR, logger="gatewayz_metrics"):
        async with client_for(app) as client:
            for fault in COLLECTOR_FAULTS:
                collector.fault = fault
                scrapes = [
                    client.request(method, "/metrics", headers=headers)
                    for method, headers in scrape_variants * 5
                ]
                requests = [client.get("/ping") for _ in range(20)] + [
                    client.get(f"/items/{n}") for n in range(20)
                ]
                answers = await asyncio.gather(*scrapes, *requests)
                app_requests += len(requests)
                failed, served = answers[: len(scrapes)], answers[len(scrapes) :]
                assert [r.status_code for r in served] == [200] * len(requests)
                assert served[0].text == "pong"
                for response in failed:
                    assert response.status_code == 500, fault
                    assert response.headers["content-type"].startswith("text/plain")
                    assert len(response.content) < 80
                    assert SECRET not in response.text
                    assert "hunter2" not in response.text
                    if response.request.method == "GET":
                        assert response.text.startswith("metrics collection failed: ")
                    else:
                        assert response.content == b""
                collector.fault = None
                recovered = await client.get("/metrics")
                assert recovered.status_code == 200, fault
                assert "their_value 1.0" in recovered.text
            final = await client.get("/metrics")

    reasons = [
        "metrics collection failed: RuntimeError",
        "metrics collection failed: TheirError",
        "metrics collection failed: TimeoutError",
    ]
    for reason in reasons:
        assert len(fault_logs(caplog, reason)) == 1, reason
    # Garbage and a bad value fail inside the encoder, each with a type of its own; all
    # five kinds together were logged once each, not once per scrape.
    assert len(fault_logs(caplog, "metrics collection failed")) == len(COLLECTOR_FAULTS)
    counted = {
        (s.labels["endpoint"], s.labels["status_code"]): s.value
        for family in text_string_to_metric_families(final.text)
        for s in family.samples
        if s.name == "http_requests_total"
    }
    assert sum(counted.values()) == app_requests
    assert internal_errors(registry) == {}


class CountingCollector:
    """A collector of the user that raises on the calls numbered in `failing`."""

    def __init__(self, failing: set[int]) -> None:
        self.failing = failing
        self.calls = 0

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        self.calls += 1
        if self.calls in self.failing:
            raise ConnectionError(SECRET)
        yield GaugeMetricFamily("their_value", "A value of theirs.", value=1)


async def test_a_collector_fault_is_theirs_and_their_collector_runs_once(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """A collector that fails on one scrape, beside metrics of the fast renderer: that scrape
    is the 500 naming their exception, their collector ran once for it (a failing collector
    is not run a second time), nothing is counted or logged as a fault of ours, and the next
    scrape is a 200."""
    collector = CountingCollector(failing={1, 3})
    registry.register(collector)
    Counter("ours", "A metric of the fast renderer.", registry=registry).inc()
    app = MetricsApp(registry)
    answers = []
    with caplog.at_level(logging.ERROR, logger="gatewayz_metrics"):
        for _ in range(4):
            send = RecordingSend()
            await app(http_scope("/metrics"), ScriptedReceive(), send)
            answers.append((send.status, send.body if send.status == 500 else b""))
    failed = (500, b"metrics collection failed: ConnectionError\n")
    assert answers == [failed, (200, b""), failed, (200, b"")]
    assert collector.calls == 4
    assert internal_errors(registry) == {}
    assert fault_logs(caplog, "internal error") == []
    assert len(fault_logs(caplog, "metrics collection failed: ConnectionError")) == 1


# --- 4. any exception the application raises ------------------------------------------------


class AppError(Exception):
    """An application's own exception."""


class AppBaseError(BaseException):
    """An application's own BaseException, outside the Exception hierarchy."""


EXCEPTIONS: list[Any] = [
    pytest.param(lambda: ValueError(SECRET), id="ValueError"),
    pytest.param(lambda: KeyError("missing"), id="KeyError"),
    pytest.param(lambda: RuntimeError("runtime"), id="RuntimeError"),
    pytest.param(lambda: OSError(5, "I/O error"), id="OSError"),
    pytest.param(lambda: ConnectionResetError("upstream reset"), id="ConnectionResetError"),
    pytest.param(lambda: TimeoutError("upstream timeout"), id="TimeoutError"),
    pytest.param(lambda: AppError("app"), id="AppError"),
    pytest.param(lambda: AppBaseError("app base"), id="AppBaseError"),
    pytest.param(lambda: HTTPException(status_code=418), id="starlette.HTTPException"),
    pytest.param(lambda: asyncio.CancelledError(), id="CancelledError"),
    pytest.param(lambda: KeyboardInterrupt(), id="KeyboardInterrupt"),
    pytest.param(lambda: SystemExit(2), id="SystemExit"),
    pytest.param(lambda: GeneratorExit(), id="GeneratorExit"),
]
if sys.version_info >= (3, 11):
    EXCEPTIONS += [
        pytest.param(
            lambda: ExceptionGroup("many", [ValueError("a"), AppError("b")]),  # noqa: F821
            id="ExceptionGroup",
        ),
        pytest.param(
            lambda: BaseExceptionGroup("cancelled", [asyncio.CancelledError()]),  # noqa: F821
            id="BaseExceptionGroup-of-CancelledError",
        ),
    ]
PHASES = ["before-start", "after-start", "after-end"]


def expected_status(exc: BaseException, phase: str) -> str:
    """What the middleware records: the status sent, 500 if none, 499 if cancelled first."""
    if phase == "after-end":
        return "200"
    if isinstance(exc, asyncio.CancelledError) or (
        # A nursery or task group re-raises the cancellation of its tasks as a group (trio
        # always does): a group of cancellations only is the request being cancelled.
        isinstance(exc, BaseException)
        and type(exc).__name__ == "BaseExceptionGroup"
        and all(isinstance(inner, asyncio.CancelledError) for inner in exc.exceptions)  # type: ignore[attr-defined]
    ):
        return "499"  # servers cancel the request task when the client goes away
    return "500" if phase == "before-start" else "200"


def raising_app(exc: BaseException, phase: str) -> Callable[..., Any]:
    """A bare ASGI app that raises `exc` before, during or after its response."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        if phase == "before-start":
            raise exc
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        if phase == "after-start":
            raise exc
        await send({"type": "http.response.body", "body": b"end"})
        raise exc

    return app


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("make", EXCEPTIONS)
async def test_any_exception_is_accounted_once_and_propagated_unchanged(
    make: Callable[[], BaseException], phase: str, registry: CollectorRegistry
) -> None:
    """Whatever the app raises, whenever: the very same exception object comes out, the
    server got exactly the app's messages, one request is counted with the status sent
    (500 before any, 499 for a cancellation before the end) and nothing stays in progress."""
    exc = make()
    bare_send = RecordingSend()
    with pytest.raises(BaseException) as bare:  # noqa: PT011 - any exception, compared below
        await raising_app(exc, phase)(http_scope(ENDPOINT), ScriptedReceive(), bare_send)
    assert bare.value is exc

    exc = make()
    middleware = PrometheusMiddleware(
        raising_app(exc, phase), registry=registry, route_resolver=lambda scope: ENDPOINT
    )
    send = RecordingSend()
    with pytest.raises(BaseException) as measured:  # noqa: PT011 - any exception, compared below
        await middleware(http_scope(ENDPOINT), ScriptedReceive(), send)
    assert measured.value is exc
    assert measured.value.__traceback__ is not None
    assert send.messages == bare_send.messages
    assert statuses(registry) == {expected_status(exc, phase): 1.0}
    labels = {"method": "GET", "endpoint": ENDPOINT}
    assert registry.get_sample_value("http_request_duration_seconds_count", labels) == 1
    assert registry.get_sample_value("http_requests_in_progress", {"method": "GET"}) == 0
    assert internal_errors(registry) == {}


STREAM_EXCEPTIONS = [
    p
    for p in EXCEPTIONS
    if p.id in {"ValueError", "AppError", "AppBaseError", "CancelledError", "ExceptionGroup"}
]


def streaming_app(exc: BaseException, registry: CollectorRegistry | None) -> Starlette:
    """A Starlette app whose `/stream` body iterator raises `exc` after two chunks."""

    async def chunks() -> AsyncIterator[bytes]:
        yield STREAM_CHUNKS[0]
        yield STREAM_CHUNKS[1]
        raise exc

    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(chunks(), media_type="text/plain")

    app = Starlette(routes=[Route("/stream", stream)])
    if registry is not None:
        app.add_middleware(PrometheusMiddleware, registry=registry)
    return app


@pytest.mark.parametrize("spec_version", ["2.4", "2.3"])
@pytest.mark.parametrize("make", STREAM_EXCEPTIONS)
async def test_an_exception_inside_a_streaming_body_is_accounted_once_and_propagated(
    make: Callable[[], BaseException], spec_version: str, registry: CollectorRegistry
) -> None:
    """A StreamingResponse whose iterator raises mid-body (ASGI 2.4: no disconnect listener;
    2.3: Starlette's task group): what escapes Starlette without the middleware escapes it
    with the middleware, the same object; the request is counted once with the sent 200
    (499 for a cancellation) and nothing stays in progress."""

    async def outcome(app: Starlette) -> tuple[BaseException | None, RecordingSend]:
        scope = {**http_scope("/stream"), "asgi": {"version": "3.0", "spec_version": spec_version}}
        send = RecordingSend()
        try:
            await app(scope, ScriptedReceive(), send)
        except BaseException as raised:  # compared with the baseline's
            return raised, send
        return None, send  # anyio's task group takes a CancelledError for its own cancel

    baseline_exc = make()
    baseline, bare_send = await outcome(streaming_app(baseline_exc, None))
    exc = make()
    got, send = await outcome(streaming_app(exc, registry))
    assert type(got) is type(baseline)
    assert (got is exc) == (baseline is baseline_exc)
    assert send.messages == bare_send.messages
    assert send.body.startswith(STREAM_CHUNKS[0] + STREAM_CHUNKS[1])
    # A cancellation that reaches the middleware is a 499; one that anyio's task group
    # swallows (2.3) ends the app normally, with the 200 it had sent.
    expected = "499" if isinstance(got, asyncio.CancelledError) else "200"
    assert statuses(registry) == {expected: 1.0}
    assert registry.get_sample_value("http_requests_in_progress", {"method": "GET"}) == 0
    assert internal_errors(registry) == {}


async def test_http_exceptions_become_their_status_and_are_not_propagated(
    registry: CollectorRegistry,
) -> None:
    """Exceptions the framework turns into responses (Starlette's and FastAPI's
    HTTPException, FastAPI's validation error) are counted with the status the client got."""
    app = FastAPI()

    @app.get("/teapot")
    async def teapot() -> None:
        raise FastAPIHTTPException(status_code=418, detail=SECRET)

    @app.get("/gone")
    async def gone() -> None:
        raise HTTPException(status_code=410)

    @app.get("/typed/{number}")
    async def typed(number: int) -> int:
        return number

    app.add_middleware(PrometheusMiddleware, registry=registry)
    async with client_for(app, raise_app_exceptions=True) as client:
        got = [(await client.get(path)).status_code for path in ("/teapot", "/gone", "/typed/x")]
    assert got == [418, 410, 422]
    assert statuses(registry) == {"418": 1.0, "410": 1.0, "422": 1.0}
    assert internal_errors(registry) == {}


# --- 5. faults in our own bookkeeping ---------------------------------------------------------


def _send_then(messages: list[Message]) -> Callable[..., Any]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        for message in messages:
            await send(message)

    return app


def _start(status: Any) -> Message:
    return {"type": "http.response.start", "status": status, "headers": []}


OK_BODY: Message = {"type": "http.response.body", "body": b"ok"}


def _raise(exc: BaseException) -> Callable[[Any], str]:
    def resolver(scope: Any) -> str:
        raise exc

    return resolver


# (name, app messages, receive script, route_resolver, component, exception type)
OWN_FAULTS: list[Any] = [
    pytest.param(
        [_start(200), OK_BODY], None, _raise(ValueError(SECRET)), "middleware.record",
        "ValueError", id="resolver-raises",
    ),
    pytest.param(
        [_start(200), OK_BODY], None, lambda scope: 42, "middleware.record", "TypeError",
        id="resolver-returns-int",
    ),
    pytest.param(
        [_start("200"), OK_BODY], None, None, "middleware.record", "TypeError",
        id="status-is-a-str",
    ),
    pytest.param(
        [_start(True), OK_BODY], None, None, "middleware.record", "TypeError",
        id="status-is-a-bool",
    ),
    pytest.param(
        [_start(200), {"type": "http.response.body", "body": None}], None, None,
        "middleware.send", "TypeError", id="body-is-none",
    ),
    pytest.param(
        [_start(200), {"type": "http.response.body", "body": 7}], None, None,
        "middleware.send", "TypeError", id="body-is-an-int",
    ),
    pytest.param(
        [_start(200), ["not", "a", "dict"], OK_BODY], None, None, "middleware.send",
        "TypeError", id="message-is-a-list",
    ),
    pytest.param(
        [_start(200), OK_BODY], [{"type": "http.request", "body": None}], None,
        "middleware.receive", "TypeError", id="received-body-is-none",
    ),
    pytest.param(
        [_start(200), OK_BODY], [None], None, "middleware.receive", "TypeError",
        id="received-message-is-none",
    ),
    pytest.param(
        [_start(200), OK_BODY], [{"body": b"x"}], None, "middleware.receive", "KeyError",
        id="received-message-has-no-type",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("messages", "inbox", "resolver", "component", "kind"), OWN_FAULTS)
async def test_a_fault_in_our_bookkeeping_is_logged_once_counted_and_harmless(
    messages: list[Message],
    inbox: list[Any] | None,
    resolver: Callable[[Any], str] | None,
    component: str,
    kind: str,
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A label callback that raises or returns garbage, a status, body or received message
    of an unexpected type: three requests, three faults counted under the component, one
    log line (without the secret in the message), and the server and the app exchange
    exactly the messages they would without the middleware."""
    inbox = inbox if inbox is not None else [{"type": "http.request", "body": b""}]

    async def exchange(app: Callable[..., Any]) -> tuple[list[Any], type[BaseException] | None]:
        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        try:
            await app(http_scope(ENDPOINT), ScriptedReceive(list(inbox)), send)
        except BaseException as exc:  # compared with the bare app's outcome
            return sent, type(exc)
        return sent, None

    bare = await exchange(_send_then(messages))
    options: dict[str, Any] = {"route_resolver": resolver or (lambda scope: ENDPOINT)}
    middleware = PrometheusMiddleware(_send_then(messages), registry=registry, **options)
    with caplog.at_level(logging.ERROR, logger="gatewayz_metrics"):
        for _ in range(3):
            assert await exchange(middleware) == bare
    assert internal_errors(registry) == {component: 3.0}
    logged = [
        r
        for r in caplog.records
        if r.name == "gatewayz_metrics" and "internal error" in r.getMessage()
    ]
    assert len(logged) == 1
    assert component in logged[0].getMessage()
    assert logged[0].exc_info is not None
    assert logged[0].exc_info[0] is not None
    assert logged[0].exc_info[0].__name__ == kind
    assert SECRET not in logged[0].getMessage()
    assert registry.get_sample_value("http_requests_in_progress", {"method": "GET"}) == 0


async def test_faulty_gauge_callbacks_and_secret_detector_never_fail_a_scrape(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that raises, one returning values of the wrong type, and a secret
    detector that raises: every scrape is a 200, the good values show, a value the detector
    could not judge is fingerprinted (fail closed), each fault is counted and logged once."""

    def detector(value: str) -> bool:
        if value.startswith("boom"):
            raise RuntimeError(SECRET)
        return False

    metrics = GatewayMetrics(registry, secret_detector=detector)
    metrics.register_gauge_callback("queue_size", lambda: 1 / 0)  # type: ignore[arg-type, return-value]
    metrics.register_gauge_callback(
        "active_connections",
        lambda: {"db": 3, "redis": "many", 42: 1, "provider": None, "queue": -1},  # type: ignore[dict-item]
    )
    metrics.record_credits_used("openai", "gpt-4o", "alice", 1.0)
    metrics.record_credits_used("openai", "gpt-4o", "boom-user", 2.0)
    app = MetricsApp(registry)
    with caplog.at_level(logging.ERROR, logger="gatewayz_metrics"):
        bodies = []
        for _ in range(5):
            send = RecordingSend()
            await app(http_scope("/metrics"), ScriptedReceive(), send)
            assert send.status == 200
            bodies.append(send.body.decode())
    text = bodies[-1]
    assert 'active_connections{connection_type="db"} 3.0' in text
    assert 'user_id="alice"' in text
    assert "boom-user" not in text
    assert 'user_id="sha256:' in text
    errors = internal_errors(registry)
    assert errors["secret_detector"] == 1  # judged once, then cached
    assert errors["callback:queue_size"] >= 5
    assert errors["callback:active_connections"] >= 5 * 4
    logged = fault_logs(caplog, "internal error")
    assert len(logged) == 4  # detector; ZeroDivisionError; TypeError and ValueError of values
    assert not [message for message in logged if SECRET in message]


# --- 6. multiprocess: workers killed with SIGKILL --------------------------------------------

WORKER = textwrap.dedent(
    """
    import asyncio, os, sys
    from gatewayz_metrics import PrometheusMiddleware

    acked = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    hold = asyncio.Event()

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        if scope["path"] == "/hold":
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
            await hold.wait()  # mid-request when the SIGKILL comes
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        return {"type": "http.request", "body": b"x" * 10}

    async def send(message):
        pass

    def scope(path):
        return {"type": "http", "method": "GET", "path": path, "headers": []}

    async def main():
        middleware = PrometheusMiddleware(
            app, metrics_path=None, route_resolver=lambda s: s["path"]
        )
        held = asyncio.ensure_future(middleware(scope("/hold"), receive, send))
        await asyncio.sleep(0)
        done = 0
        while True:
            # 300 endpoints: new keys keep growing the files, so a kill may land mid-growth.
            await middleware(scope(f"/r/{done % 300}"), receive, send)
            done += 1
            os.write(acked, b"%d\\n" % done)
            if done % 50 == 0:
                await asyncio.sleep(0)

    asyncio.run(main())
    """
)
# A worker killed after creating its first file and before sizing it: an empty file.
UNSIZED_WORKER = (
    "import os, signal, sys\n"
    "open(os.path.join(sys.argv[1], f'counter_{os.getpid()}.db'), 'a+b')\n"
    "os.kill(os.getpid(), signal.SIGKILL)\n"
)
SCRAPING_WORKER = textwrap.dedent(
    """
    import os
    from prometheus_client import Counter, generate_latest
    from gatewayz_metrics import multiprocess_registry

    Counter("scraper_runs", "Runs of the scraping worker.").inc()
    print(os.getpid())
    print(generate_latest(multiprocess_registry()).decode())
    """
)
KILLS = 6


def last_ack(path: Path) -> int:
    """The number of requests the worker had finished when it died."""
    lines = path.read_bytes().split(b"\n")
    complete = [line for line in lines[:-1] if line]
    return int(complete[-1]) if complete else 0


def scrape(directory: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """A multiprocess scrape through `MetricsApp()`; http sample totals by sample name."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))
    send = RecordingSend()
    asyncio.run(MetricsApp()(http_scope("/metrics"), ScriptedReceive(), send))
    assert send.status == 200, send.body
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(send.body.decode()):
        for sample in family.samples:
            if sample.name.startswith("http_") and sample.labels.get("endpoint") != "/hold":
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


@pytest.mark.slow
def test_workers_killed_mid_request_leave_the_directory_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six workers SIGKILLed at random instants while recording (one request held open in
    each), and one killed between creating and sizing its file: after each kill the next
    scrape is a 200 whose counts are within one request of what the workers had finished;
    retiring the dead (as a scraping worker does) leaves nothing in progress and loses
    nothing."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(REPO_ROOT)}
    rnd = random.Random(6)
    finished = 0
    for kill in range(KILLS):
        acks = tmp_path / f"acks{kill}"
        worker = subprocess.Popen([sys.executable, "-c", WORKER, str(acks)], env=env)
        try:
            deadline = time.monotonic() + 30
            while not acks.exists() or last_ack(acks) < 10:
                assert worker.poll() is None, "the worker died on its own"
                assert time.monotonic() < deadline, "the worker never got going"
                time.sleep(0.01)
            time.sleep(rnd.uniform(0.0, 0.4))
        finally:
            worker.send_signal(signal.SIGKILL)
            assert worker.wait(timeout=10) == -signal.SIGKILL
        finished += last_ack(acks)
        totals = scrape(directory, monkeypatch)
        counted = totals["http_requests_total"]
        assert finished <= counted <= finished + kill + 1
        # A worker killed between counting a request and observing its duration leaves
        # the histogram one behind: at most one per worker killed.
        observed = totals["http_request_duration_seconds_count"]
        assert counted - (kill + 1) <= observed <= counted

    subprocess.run([sys.executable, "-c", UNSIZED_WORKER, str(directory)], env=env, check=False)
    empty = [file for file in directory.glob("counter_*.db") if file.stat().st_size == 0]
    assert len(empty) == 1
    before = scrape(directory, monkeypatch)
    assert before["http_requests_total"] == counted
    assert before["http_requests_in_progress"] >= KILLS  # the dead, until they are retired

    # A scraping worker retires the dead ones (what uvicorn --workers relies on).
    scraped = subprocess.run(
        [sys.executable, "-c", SCRAPING_WORKER],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert scraped.returncode == 0, scraped.stderr
    assert "gatewayz-metrics" not in scraped.stderr
    parsed = list(text_string_to_metric_families(scraped.stdout.split("\n", 1)[1]))
    assert any(family.name == "http_requests" for family in parsed)
    scraper_pid = int(scraped.stdout.split("\n", 1)[0])
    # The scraping worker retired every dead worker; only the scraper itself is left.
    assert mark_dead_workers(directory) == (scraper_pid,)
    after = scrape(directory, monkeypatch)
    assert after["http_requests_total"] == counted
    assert after.get("http_requests_in_progress", 0.0) == 0  # no live worker, no series
    assert not list(directory.glob("counter_[0-9]*.db"))
