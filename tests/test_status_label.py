"""One `status_code` rule for the middleware and `track_http_request`: bounded label values."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gatewayz_metrics import GatewayMetrics, PrometheusMiddleware
from gatewayz_metrics._http import OTHER_STATUS, status_label
from gatewayz_metrics._types import Message


def recorded_statuses(registry: CollectorRegistry) -> dict[str, float]:
    """`http_requests_total` by `status_code`."""
    return {
        sample.labels["status_code"]: sample.value
        for metric in registry.collect()
        if metric.name == "http_requests"
        for sample in metric.samples
        if sample.name == "http_requests_total"
    }


async def test_statuses_outside_100_to_599_share_one_series(registry: CollectorRegistry) -> None:
    """A proxy forwarding 50 garbage statuses (and 0, 99, 600) adds one `other` series, not 53."""
    current = [0]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": current[0], "headers": []})
        await send({"type": "http.response.body", "body": b""})

    wrapped = PrometheusMiddleware(app, registry=registry, route_resolver=lambda s: "/proxy")

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        pass

    garbage = [*range(1000, 1050), 0, 99, 600, -200]
    for status in [*garbage, 200, 599]:
        current[0] = status
        scope = {"type": "http", "method": "GET", "path": "/proxy", "headers": []}
        await wrapped(scope, receive, send)
    assert recorded_statuses(registry) == {OTHER_STATUS: len(garbage), "200": 1.0, "599": 1.0}


@pytest.mark.parametrize(
    ("status", "label"),
    [(100, "100"), (200, "200"), (599, "599"), (99, "other"), (600, "other"), (10**30, "other")],
)
def test_status_label_keeps_valid_codes_and_folds_the_rest(status: int, label: str) -> None:
    """100-599 is the code itself; any other int is `other`."""
    assert status_label(status) == label


@pytest.mark.parametrize("status", ["200", True, None, [200]], ids=["str", "bool", "none", "list"])
def test_status_label_refuses_a_status_that_is_not_an_int(status: object) -> None:
    """A non-int status is an application bug: TypeError (the middleware counts it as ours)."""
    with pytest.raises(TypeError, match="non-integer status"):
        status_label(status)


def test_track_http_request_labels_with_the_same_rule(registry: CollectorRegistry) -> None:
    """An exception carrying an out-of-range status is a 500, a valid one its own code."""
    metrics = GatewayMetrics(registry)

    class CarriedStatusError(Exception):
        def __init__(self, status_code: int) -> None:
            self.status_code = status_code

    for status in (1000, 404):
        with pytest.raises(CarriedStatusError), metrics.track_http_request("GET", "/x"):
            raise CarriedStatusError(status)
    with metrics.track_http_request("GET", "/x") as request:
        request.set_status(299)
    assert recorded_statuses(registry) == {"500": 1.0, "404": 1.0, "299": 1.0}
