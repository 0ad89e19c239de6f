"""Load torture: 20,000 mixed requests from 200 concurrent clients against a real uvicorn on
127.0.0.1, with 50 concurrent scrapes fired in the middle. Afterwards every count is exact.

The server runs in a process of its own (`tests/_torture_app.py`, a fresh registry), so the
client and the server each have a core. What the clients saw is tallied per (method,
endpoint, status) on the client side; a client that hangs up mid-stream expects 499.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from _servers import free_port, start_logged, stop, wait_serving
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow

APP = Path(__file__).resolve().parent / "_torture_app.py"
REQUESTS = 20_000
CLIENTS = 200
SCRAPES = 50
DEADLINE = 120.0
"""Seconds the whole load may take before the test fails (it takes far less)."""

Key = tuple[str, str, str]
"""(method, endpoint, status_code) as the middleware labels it."""


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of request in the mix: how to send it and what it is labelled."""

    name: str
    weight: int
    method: str
    endpoint: str
    path: Callable[[random.Random], str]
    mode: str = "plain"
    """`plain`, `stream` (read it all), `hangup` (leave after the first event) or `broken`."""
    close: bool = False
    """Ask for `Connection: close`. uvicorn closes the connection after a handler raised,
    although Starlette already sent a complete 500 without saying so; a client that reused
    it would race the close and fail with a ReadError that is no fault of ours."""


CLIENT_ERRORS = (400, 401, 403, 404, 409, 410, 418, 422, 429)
SERVER_ERRORS = (500, 501, 502, 503, 504)
MIX = (
    Kind("plain", 30, "GET", "/ping", lambda r: "/ping"),
    Kind("path-parameter", 24, "GET", "/items/{item_id}", lambda r: f"/items/{r.randrange(10**9)}"),
    Kind("sse", 10, "GET", "/sse", lambda r: "/sse?events=4&delay=0.002", "stream"),
    Kind("4xx", 8, "GET", "/status/{code}", lambda r: f"/status/{r.choice(CLIENT_ERRORS)}"),
    Kind("5xx", 6, "GET", "/status/{code}", lambda r: f"/status/{r.choice(SERVER_ERRORS)}"),
    Kind("unmatched", 4, "GET", "__unmatched__", lambda r: f"/no/such/{r.randrange(10**9)}"),
    Kind("405", 3, "POST", "/ping", lambda r: "/ping"),
    Kind("raises", 6, "GET", "/boom", lambda r: "/boom", close=True),
    Kind("raises-mid-stream", 3, "GET", "/sse-broken", lambda r: "/sse-broken", "broken"),
    # A stream that would go on for a minute: the hang-up always comes before its end, however
    # late a busy client gets round to it.
    Kind("hangup", 6, "GET", "/sse", lambda r: "/sse?events=3000&delay=0.02", "hangup"),
)
"""Weights in percent: plain, path parameters, SSE, 4xx, 5xx, unmatched, 405, a handler that
raises before answering, one whose stream raises after its first event, and clients that
hang up mid-stream."""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The torture app under uvicorn in a subprocess; yields (base URL, its stderr file)."""
    port = free_port()
    log = tmp_path / "server.log"
    process = start_logged(
        [sys.executable, str(APP), str(port)],
        log,
        cwd=APP.parent,
        env={**os.environ, "PYTHONPATH": str(APP.parent.parent)},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        # /_stats is not measured: the counts start at zero for the test.
        wait_serving(f"{url}/_stats", process, log, timeout=30)
        yield url, log
    finally:
        stop(process)


def plan(seed: int = 20_000) -> list[Kind]:
    """REQUESTS kinds in a shuffled order, in the proportions of MIX."""
    kinds = [kind for kind in MIX for _ in range(kind.weight * REQUESTS // 100)]
    assert len(kinds) == REQUESTS, "the weights of MIX must sum to 100"
    random.Random(seed).shuffle(kinds)
    return kinds


async def send_one(client: httpx.AsyncClient, kind: Kind, rnd: random.Random) -> str:
    """Send one request of `kind`; return the status the middleware should record."""
    path = kind.path(rnd)
    if kind.mode == "plain":
        headers = {"connection": "close"} if kind.close else None
        response = await client.request(kind.method, path, headers=headers)
        return str(response.status_code)
    async with client.stream(kind.method, path) as response:
        status = str(response.status_code)
        if kind.mode == "hangup":
            async for _ in response.aiter_raw():
                break  # the first event arrived: hang up, the stream is not finished
            await response.aclose()
            return "499"
        try:
            body = b"".join([chunk async for chunk in response.aiter_raw()])
        except httpx.RemoteProtocolError:
            # The handler raised after its headers went out: the server cut the
            # connection. The client saw that status, and that is what is recorded.
            assert kind.mode == "broken", f"{path} broke off"
            return status
        assert kind.mode == "stream", f"{path} did not break off"
        assert body.count(b"data: ") == 4
        return status


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """(sample name, labels) -> value of an exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def by_labels(scraped: dict[Any, float], name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The samples called `name`, keyed by the values of `labels`."""
    found: dict[tuple[str, ...], float] = {}
    for (sample, pairs), value in scraped.items():
        if sample == name:
            values = dict(pairs)
            found[tuple(values[label] for label in labels)] = value
    return found


async def test_twenty_thousand_mixed_requests_are_counted_exactly(
    server: tuple[str, Path], record_property: Callable[[str, object], None]
) -> None:
    """20,000 requests from 200 clients with 50 concurrent scrapes in the middle: every
    scrape parses and they share renders; afterwards the counters equal what the clients
    saw per status, histogram counts equal the counters, nothing is in progress and no
    internal error was counted or logged."""
    url, log = server
    began = time.perf_counter()
    kinds = plan()
    sent: Counter[Key] = Counter()
    done = 0
    halfway = asyncio.Event()
    queue = iter(enumerate(kinds))

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal done
        for number, kind in queue:
            status = await send_one(client, kind, random.Random(number))
            sent[(kind.method, kind.endpoint, status)] += 1
            done += 1
            if done == REQUESTS // 2:
                halfway.set()

    scrape_texts: list[str] = []
    stats: dict[str, dict[str, int]] = {}

    async def scrape_burst(scrapers: list[httpx.AsyncClient]) -> None:
        # Each scraper opens its connection first (on the excluded /_stats) and keeps it,
        # as Prometheus does: the 50 scrapes then reach the server together instead of
        # one TCP handshake apart.
        await halfway.wait()
        warmed = await asyncio.gather(*(scraper.get("/_stats") for scraper in scrapers))
        assert [r.status_code for r in warmed] == [200] * SCRAPES
        stats["before"] = (await scrapers[0].get("/_stats")).json()
        responses = await asyncio.gather(*(scraper.get("/metrics") for scraper in scrapers))
        stats["after"] = (await scrapers[0].get("/_stats")).json()
        assert [r.status_code for r in responses] == [200] * SCRAPES
        scrape_texts.extend(r.text for r in responses)

    # One client per connection, as 200 real clients would be; it is also what keeps the
    # client side fast (httpx scans its whole pool for each request).
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=1))
            )
            for _ in range(CLIENTS + SCRAPES)
        ]
        scrapers = clients[CLIENTS:]
        load = asyncio.gather(
            scrape_burst(scrapers), *(client_loop(client) for client in clients[:CLIENTS])
        )
        await asyncio.wait_for(load, DEADLINE)
        load_seconds = time.perf_counter() - began
        final = await scrape_until_settled(clients[0], sent)
        final_stats = (await clients[0].get("/_stats")).json()

    # --- the 50 scrapes during the load ---
    for text in scrape_texts:
        during = by_labels(
            samples(text), "http_requests_total", "method", "endpoint", "status_code"
        )
        assert 0 < sum(during.values()) <= REQUESTS
    scrapes = stats["after"]["scrapes"] - stats["before"]["scrapes"]
    renders = stats["after"]["renders"] - stats["before"]["renders"]
    assert scrapes == SCRAPES
    assert renders <= SCRAPES // 2, f"{renders} renders for {scrapes} concurrent scrapes"

    # --- after the load: exact ---
    counted = by_labels(final, "http_requests_total", "method", "endpoint", "status_code")
    assert counted == {key: float(n) for key, n in sent.items()}
    assert sum(counted.values()) == REQUESTS
    per_route: Counter[tuple[str, str]] = Counter()
    for (method, endpoint, _), n in sent.items():
        per_route[(method, endpoint)] += n
    histogram = by_labels(final, "http_request_duration_seconds_count", "method", "endpoint")
    assert histogram == {key: float(n) for key, n in per_route.items()}
    # Every request but /boom's sent its own headers (ServerErrorMiddleware, outside the
    # middleware, answers /boom): the time-to-first-byte histogram says exactly that.
    ttfb = by_labels(final, "http_time_to_first_byte_seconds_count", "method", "endpoint")
    assert ttfb == {key: 0.0 if key[1] == "/boom" else float(n) for key, n in per_route.items()}
    assert set(by_labels(final, "http_requests_in_progress", "method").values()) == {0.0}
    # The known components' series exist at 0 from the start: no fault is a zero.
    faults = by_labels(final, "gatewayz_metrics_internal_errors_total", "component")
    assert {component: n for component, n in faults.items() if n} == {}
    assert faults  # the series exist, so rate() would see a first fault
    assert "gatewayz-metrics" not in log.read_text(errors="replace")

    elapsed = time.perf_counter() - began
    figures = {
        "requests_sent": REQUESTS,
        "requests_counted": int(sum(counted.values())),
        "per_status_sent": status_totals({k: float(n) for k, n in sent.items()}),
        "per_status_counted": status_totals(counted),
        "burst_scrapes": scrapes,
        "burst_renders": renders,
        "scrapes_served_total": final_stats["scrapes"],
        "renders_total": final_stats["renders"],
        "load_seconds": round(load_seconds, 1),
        "test_seconds": round(elapsed, 1),
    }
    for name, figure in figures.items():
        record_property(name, figure)
    print(f"\n[torture-load] {figures}")
    assert elapsed < DEADLINE


def status_totals(counted: dict[Any, float]) -> dict[str, int]:
    """Counted requests per status code, all endpoints together."""
    totals: Counter[str] = Counter()
    for (_, _, status), n in counted.items():
        totals[status] += int(n)
    return dict(sorted(totals.items()))


async def scrape_until_settled(
    client: httpx.AsyncClient, sent: Counter[Key], timeout: float = 15
) -> dict[Any, float]:
    """Scrape until the counters reach what was sent and nothing is in progress.

    A request is counted just after its last byte went out, and a hung-up stream only
    when the server notices: the last few may need a moment.
    """
    expected = {key: float(n) for key, n in sent.items()}
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get("/metrics")
        assert response.status_code == 200
        scraped = samples(response.text)
        counted = by_labels(scraped, "http_requests_total", "method", "endpoint", "status_code")
        idle = set(by_labels(scraped, "http_requests_in_progress", "method").values()) == {0.0}
        if (counted == expected and idle) or time.monotonic() > deadline:
            return scraped
        await asyncio.sleep(0.05)
