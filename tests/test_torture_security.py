"""Security: no request data but the method and the route template reaches the exposition, and
with a bearer token every way to the metrics is closed without it, compared in constant time.
"""

from __future__ import annotations

import hmac
import json
import secrets
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from _apps import FRAMEWORKS, build_app
from _asgi import client_for
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, Counter
from starlette.applications import Starlette
from starlette.routing import Mount

from gatewayz_metrics import BEARER_TOKEN_ENV, GatewayMetrics, MetricsApp, PrometheusMiddleware

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
TOKEN = "scrape-" + "Zk29fQm7Lp4Xv8Rt1Nc6Wb3Hy5Jd0Gs"


def secret(kind: str) -> str:
    """A fresh credential-shaped marker that no exposition could contain by chance."""
    return f"sk-live-{kind}-{secrets.token_urlsafe(24)}"


def leaks(markers: dict[str, str], texts: list[str]) -> list[str]:
    """The markers of which any 12-character piece appears in any of `texts`."""
    found = []
    for name, marker in markers.items():
        pieces = {marker[i : i + 12] for i in range(0, len(marker) - 11, 4)}
        if any(piece in text for piece in pieces for text in texts):
            found.append(name)
    return found


async def scrapes(client: httpx.AsyncClient, headers: dict[str, str] | None = None) -> list[str]:
    """The text and OpenMetrics expositions, plain and gzipped (decoded by httpx)."""
    texts = []
    for variant in ({}, {"Accept": OPENMETRICS}, {"Accept-Encoding": "gzip"}):
        response = await client.get("/metrics", headers={**(headers or {}), **variant})
        assert response.status_code == 200
        texts.append(response.text)
    return texts


# --- 9. no request data in the exposition -----------------------------------------------------


@pytest.mark.parametrize("framework", FRAMEWORKS, ids=FRAMEWORKS)
async def test_no_request_data_but_method_and_route_reaches_the_exposition(
    framework: str, registry: CollectorRegistry, record_property: Callable[[str, object], None]
) -> None:
    """Credentials in headers (Authorization, X-Api-Key, Cookie, Host, User-Agent,
    Forwarded), in query strings, in matched and unmatched paths, in bodies and in a
    made-up method: none of them appears anywhere in any exposition format."""
    markers = {
        name: secret(name)
        for name in (
            "authorization", "x-api-key", "cookie", "user-agent", "forwarded", "referer",
            "query-api-key", "query-token", "unmatched-path", "nested-path", "body", "method",
            "metrics-query", "host",
        )
    }  # fmt: skip
    account = str(secrets.randbelow(10**18) + 10**17)  # a numeric id in a templated path
    markers["path-parameter"] = account
    headers = {
        "Authorization": f"Bearer {markers['authorization']}",
        "X-Api-Key": markers["x-api-key"],
        "Cookie": f"session={markers['cookie']}",
        "User-Agent": markers["user-agent"],
        "X-Forwarded-For": markers["forwarded"],
        "Referer": f"https://example.com/{markers['referer']}",
    }
    query = {"api_key": markers["query-api-key"], "token": markers["query-token"]}
    app = build_app(framework, registry)
    async with client_for(app) as client:
        for path in ("/ping", f"/items/{account}", "/stream", "/boom"):
            await client.get(path, headers=headers, params=query)
        await client.get(f"/v1/keys/{markers['unmatched-path']}", headers=headers)
        await client.get(f"/ping/{markers['nested-path']}/{'x' * 200}", headers=headers)
        await client.post(
            "/echo", headers=headers, content=json.dumps({"api_key": markers["body"]})
        )
        await client.request(markers["method"].upper().replace("_", "-"), "/ping")
        await client.get("/ping", headers={"Host": f"{markers['host'].lower()}.example.com"})
        await client.get("/metrics", params={"api_key": markers["metrics-query"]})
        texts = await scrapes(client)
    assert all("http_requests_total" in text for text in texts)
    found = leaks(markers, texts)
    record_property("markers_checked", len(markers))
    record_property("secrets_found", len(found))
    print(f"\n[torture-security] {framework}: {len(markers)} markers, secrets found: {found}")
    assert found == []


async def test_credentials_a_gateway_records_on_purpose_are_fingerprinted(
    registry: CollectorRegistry,
) -> None:
    """A gateway that records `user_id=api_key` and the key of each request, as the wiki
    page does: the keys never appear, their fingerprints do."""
    metrics = GatewayMetrics(registry)
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, str]:
        key = request.headers["authorization"].removeprefix("Bearer ")
        metrics.record_api_key_usage(key, "valid")
        metrics.record_credits_used("openai", "gpt-4o", key, 0.5)
        metrics.set_user_credit_balance(key, 9.5)
        return {"ok": "yes"}

    app.add_middleware(PrometheusMiddleware, registry=registry)
    markers = {f"key{n}": secret(f"key{n}") for n in range(5)}
    async with client_for(app) as client:
        for marker in markers.values():
            response = await client.post(
                "/v1/chat/completions", headers={"Authorization": f"Bearer {marker}"}
            )
            assert response.status_code == 200
        texts = await scrapes(client)
    assert leaks(markers, texts) == []
    usage = [line for line in texts[0].splitlines() if line.startswith("api_key_usage_total{")]
    assert len(usage) == len(markers)
    assert all('api_key_id="sha256:' in line for line in usage)


# --- 10. the bearer token closes every way in ------------------------------------------------


def middleware_served(framework: str, registry: CollectorRegistry) -> Any:
    """The middleware serves /metrics itself, with the token."""
    return build_app(framework, registry, bearer_token=TOKEN)


def mounted(framework: str, registry: CollectorRegistry) -> Any:
    """A MetricsApp with the token mounted at /metrics; the middleware answers the bare path."""
    app: Starlette | FastAPI = build_app(framework, registry)
    app.mount("/metrics", MetricsApp(registry, bearer_token=TOKEN))
    return app


def standalone(framework: str, registry: CollectorRegistry) -> Any:
    """A MetricsApp on its own (the separate-port setup), the token from the environment."""
    Counter("http_requests", "Requests of the public app.", registry=registry).inc()
    return Starlette(routes=[Mount("/metrics", MetricsApp(registry))])


SETUPS: list[Any] = [
    pytest.param(middleware_served, framework, id=f"middleware-{framework}")
    for framework in FRAMEWORKS
] + [
    pytest.param(mounted, "starlette", id="mounted-starlette"),
    pytest.param(mounted, "fastapi", id="mounted-fastapi"),
    pytest.param(standalone, "starlette", id="standalone-env-token"),
]
PATHS = ["/metrics", "/metrics/", "/%6Detrics", "//metrics", "/metrics/x"]
QUERIES: list[dict[str, str]] = [
    {},
    {"name[]": "http_requests_total"},
    {"name[]": "http_requests_total", "token": TOKEN},
]
NEGOTIATION = [{}, {"Accept": OPENMETRICS}, {"Accept-Encoding": "gzip"}]
WRONG_AUTHORIZATION: list[dict[str, str]] = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": f"Bearer {TOKEN[:-1]}X"},  # same length, last character wrong
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": f"Bearer {TOKEN}{TOKEN}"},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": TOKEN},
    {"Cookie": f"token={TOKEN}"},
    {"X-Api-Key": TOKEN},
]
EXPOSITION_MARKS = ("# HELP", "# TYPE", "http_requests", "process_")


@pytest.mark.parametrize(("setup", "framework"), SETUPS)
async def test_the_token_closes_every_way_to_the_metrics(
    setup: Callable[[str, CollectorRegistry], Any],
    framework: str,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    record_property: Callable[[str, object], None],
) -> None:
    """Every path spelling, GET and HEAD, `name[]` filters, OpenMetrics and gzip, each with
    eleven wrong credentials: never an exposition, and a 401 wherever the metrics are; with
    the token, the metrics."""
    monkeypatch.setenv(BEARER_TOKEN_ENV, TOKEN)
    app = setup(framework, registry)
    refused = answered = 0
    async with client_for(app) as client:
        await client.get("/ping")
        for path in PATHS:
            for method in ("GET", "HEAD"):
                for query in QUERIES:
                    for negotiation in NEGOTIATION:
                        url = f"http://testserver{path}"  # "//metrics" is a path, not a host
                        allowed = await client.request(
                            method,
                            url,
                            params=query,
                            headers={**negotiation, "Authorization": f"Bearer {TOKEN}"},
                        )
                        serves_metrics = allowed.status_code == 200 and (
                            method == "HEAD" or "# TYPE" in allowed.text
                        )
                        if serves_metrics:
                            answered += 1
                        for wrong in WRONG_AUTHORIZATION:
                            response = await client.request(
                                method, url, params=query, headers={**negotiation, **wrong}
                            )
                            shown = response.text
                            assert not any(mark in shown for mark in EXPOSITION_MARKS), (
                                method, path, query, negotiation, wrong, response.status_code
                            )  # fmt: skip
                            if serves_metrics:
                                assert response.status_code == 401, (path, wrong)
                                assert response.headers["www-authenticate"].startswith("Bearer")
                                refused += 1
                            else:
                                assert response.status_code != 200, (method, path)
    # /metrics (and its percent-encoded spelling) is served in every setup.
    assert answered >= 2 * 2 * len(QUERIES) * len(NEGOTIATION)
    record_property("refused", refused)
    print(f"\n[torture-security] {framework}: {answered} authorized, {refused} refused")


async def test_the_token_is_compared_with_compare_digest_whatever_the_input(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every credential offered, of any length or scheme (and none), goes through
    `hmac.compare_digest` against the token: no early exit tells how much matched."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((bytes(a), bytes(b)))
        return real(a, b)

    # The very function `_exposition` calls, whatever else imported it.
    monkeypatch.setattr("gatewayz_metrics._exposition.hmac.compare_digest", spy)
    offered = {
        "none": None,
        "empty": "",
        "scheme only": "Bearer",
        "shorter": f"Bearer {TOKEN[:5]}",
        "longer": f"Bearer {TOKEN}{'x' * 100}",
        "same length": f"Bearer {TOKEN[:-1]}X",
        "other scheme": f"Basic {TOKEN}",
        "right": f"Bearer {TOKEN}",
    }
    async with client_for(MetricsApp(registry, bearer_token=TOKEN)) as client:
        got = {}
        for name, authorization in offered.items():
            headers = {} if authorization is None else {"Authorization": authorization}
            got[name] = (await client.get("/metrics", headers=headers)).status_code
    assert got == {name: 200 if name == "right" else 401 for name in offered}
    assert len(calls) == len(offered)
    assert {b for _, b in calls} == {TOKEN.encode()}
    assert (TOKEN[:5].encode(), TOKEN.encode()) in calls  # a wrong length is compared too
