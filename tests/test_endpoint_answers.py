"""What `MetricsApp` answers: content negotiation that never raises, `Vary` on every answer
that depends on `Accept`/`Accept-Encoding`, and single-flight renders that never hand a
scrape a render begun before it arrived."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from _asgi import RecordingSend, ScriptedReceive, client_for, http_scope
from _collectors import GatedCollector, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

from gatewayz_metrics import MetricsApp, PrometheusMiddleware
from gatewayz_metrics._exposition import negotiate

TEXT_004 = "text/plain; version=0.0.4; charset=utf-8"
VARY = b"Accept, Accept-Encoding"


async def scrape(
    app: MetricsApp, *headers: tuple[bytes, bytes], method: str = "GET"
) -> RecordingSend:
    """One raw-ASGI request to `app`, as a server would make it."""
    send = RecordingSend()
    await app(http_scope("/", method=method, headers=headers), ScriptedReceive(), send)
    return send


# --- negotiation ----------------------------------------------------------------------

MALFORMED = [
    # prometheus_client's choose_encoder raises on these:
    "text/plain; version=abc",
    "application/openmetrics-text; version=1.x",
    "text/plain; version=x.0.0",
    "application/openmetrics-text; version=a.b.c",
    "application/openmetrics-text; version=1.0.x",
    "text/plain; version=1..0",
    # and answers these with the text format already (kept as guards):
    "text/plain; version=",
    ";;;=,,,=;",
    "\x00\xff\x7f garbage",
]


@pytest.mark.parametrize("accept", MALFORMED)
async def test_a_malformed_accept_gets_the_text_format(
    accept: str, registry: CollectorRegistry
) -> None:
    """An Accept header prometheus_client cannot parse is answered in the text format.

    prometheus_client before 0.23 parses no versions: there such a range is valid, and its
    choice (OpenMetrics) is kept, as for every header it accepts."""
    Counter("demo_events", "Demo.", registry=registry).inc()
    send = await scrape(MetricsApp(registry), (b"accept", accept.encode("latin-1")))
    assert send.status == 200
    try:
        _, expected = choose_encoder(accept)
    except Exception:
        expected = TEXT_004
    assert send.headers[b"content-type"] == expected.encode()
    if expected == TEXT_004:
        families = {f.name for f in text_string_to_metric_families(send.body.decode())}
        assert "demo_events" in families
    else:
        assert b"demo_events_total 1.0" in send.body


async def test_a_malformed_range_does_not_hide_a_valid_one(registry: CollectorRegistry) -> None:
    """`version=1.x` first, a valid OpenMetrics range next: the valid one is served."""
    accept = (
        b"application/openmetrics-text; version=1.x, application/openmetrics-text; version=1.0.0"
    )
    send = await scrape(MetricsApp(registry), (b"accept", accept))
    assert send.status == 200
    assert send.headers[b"content-type"].startswith(b"application/openmetrics-text; version=1.0.0")
    assert send.body.endswith(b"# EOF\n")


_MEDIA_TYPES = ["text/plain", "application/openmetrics-text", "*/*", "text/*", "garbage", ""]
_PARAMETERS = [
    "version=0.0.4",
    "version=1.0.0",
    "version=2.0.0",
    "version=1.x",
    "version=abc",
    "version=",
    "version=1..0",
    "escaping=underscores",
    "escaping=allow-utf-8",
    "escaping=bogus",
    "charset=utf-8",
    "q=0.5",
    "=",
    "",
]
_MEDIA_RANGE = st.tuples(
    st.sampled_from(_MEDIA_TYPES), st.lists(st.sampled_from(_PARAMETERS), max_size=3)
).map(lambda parts: "; ".join([parts[0], *parts[1]]))
_ACCEPT = st.one_of(
    st.lists(_MEDIA_RANGE, min_size=1, max_size=3).map(", ".join),
    st.text(alphabet=st.characters(max_codepoint=255), max_size=40),
)


@settings(max_examples=400, deadline=None)
@given(_ACCEPT)
def test_negotiation_never_raises_and_agrees_with_prometheus_client(accept: str) -> None:
    """For any header, `negotiate` answers; where `choose_encoder` does not raise, the same
    encoder family and content type as prometheus_client."""
    encoder, content_type = negotiate(accept)
    assert callable(encoder)
    try:
        expected = choose_encoder(accept)
    except Exception:
        return
    assert content_type == expected[1]


# --- Vary --------------------------------------------------------------------------------


class FailingCollector:
    """A custom collector that raises."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        raise RuntimeError("backend down")


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    "headers",
    [(), ((b"accept-encoding", b"gzip"),), ((b"accept", b"application/openmetrics-text"),)],
    ids=["plain", "gzip", "openmetrics"],
)
async def test_every_negotiated_answer_varies_on_accept_and_accept_encoding(
    method: str, headers: tuple[tuple[bytes, bytes], ...], registry: CollectorRegistry
) -> None:
    """200s (plain, gzip, OpenMetrics, GET and HEAD) carry `Vary: Accept, Accept-Encoding`."""
    send = await scrape(MetricsApp(registry), *headers, method=method)
    assert send.status == 200
    assert send.headers[b"vary"] == VARY


async def test_a_failed_render_varies_too(registry: CollectorRegistry) -> None:
    """The 500 of a failing collector is an answer for one negotiated format: `Vary` too."""
    registry.register(FailingCollector())
    send = await scrape(MetricsApp(registry))
    assert send.status == 500
    assert send.headers[b"vary"] == VARY


async def test_the_middleware_served_endpoint_varies(registry: CollectorRegistry) -> None:
    """`/metrics` served by the middleware itself carries `Vary` through httpx."""

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("not reached")

    async with client_for(PrometheusMiddleware(app, registry=registry)) as client:
        response = await client.get("/metrics")
    assert response.headers["vary"] == "Accept, Accept-Encoding"


# --- single-flight ----------------------------------------------------------------------


def writes(body: bytes) -> float:
    """The value of `writes_total` in an exposition."""
    for family in text_string_to_metric_families(body.decode()):
        if family.name == "writes":
            return float(family.samples[0].value)
    raise AssertionError("no writes_total")


async def test_a_scrape_arriving_during_a_render_sees_writes_made_before_it_arrived(
    registry: CollectorRegistry,
) -> None:
    """A write made after a render began and before a second scrape arrived is in the second
    scrape's answer; scrapes arriving during a render share the next render."""
    counter = Counter("writes", "Writes.", registry=registry)
    gated = GatedCollector()
    registry.register(gated)
    app = MetricsApp(registry)
    first = asyncio.ensure_future(scrape(app))
    await wait_for(gated.started)  # the first render has begun and read writes_total
    counter.inc()
    later = [asyncio.ensure_future(scrape(app)) for _ in range(3)]
    for _ in range(10):
        await asyncio.sleep(0)  # the three have arrived and wait
    assert not first.done()
    gated.release.set()
    answers = [await first, *[await task for task in later]]
    assert [a.status for a in answers] == [200] * 4
    assert [writes(a.body) for a in answers] == [0.0, 1.0, 1.0, 1.0]
    assert (app.scrapes, app.renders) == (4, 2)


async def test_a_cancelled_first_scrape_leaves_its_render_to_the_others(
    registry: CollectorRegistry,
) -> None:
    """The client of the scrape that started a render goes away: the render goes on, and the
    scrapes queued behind it are answered."""
    counter = Counter("writes", "Writes.", registry=registry)
    gated = GatedCollector()
    registry.register(gated)
    app = MetricsApp(registry)
    first = asyncio.ensure_future(scrape(app))
    await wait_for(gated.started)
    counter.inc()
    queued = asyncio.ensure_future(scrape(app))
    await asyncio.sleep(0)
    first.cancel()
    gated.release.set()
    answer = await queued
    assert answer.status == 200
    assert writes(answer.body) == 1.0
    assert first.cancelled()
