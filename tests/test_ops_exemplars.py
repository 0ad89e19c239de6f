"""The ops kit shows exemplars: the latency and TTFT panels ask for them, Grafana's Prometheus
datasource links their `trace_id` to a trace datasource, and the Compose Prometheus keeps them."""

from __future__ import annotations

from typing import Any

import yaml
from promql_queries import EXAMPLES_DIR, load_dashboard

DATASOURCES_FILE = EXAMPLES_DIR / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
COMPOSE_FILE = EXAMPLES_DIR / "docker-compose.prometheus.yml"
EXEMPLAR_PANELS = {
    "Response time percentiles": "http_request_duration_seconds_bucket",
    "Time to first token (p50/p95)": "model_time_to_first_token_seconds_bucket",
}


def _panels() -> dict[str, Any]:
    return {panel["title"]: panel for panel in load_dashboard()["panels"]}


def test_latency_and_ttft_panels_show_exemplars() -> None:
    """Every query of the latency and TTFT panels has `"exemplar": true` on its histogram."""
    panels = _panels()
    for title, histogram in EXEMPLAR_PANELS.items():
        targets = panels[title]["targets"]
        assert targets, title
        for target in targets:
            assert target.get("exemplar") is True, (title, target["refId"])
            assert histogram in target["expr"], (title, target["expr"])


def test_only_histogram_panels_ask_for_exemplars() -> None:
    """No other panel asks for exemplars (a gauge or ratio query has none to show)."""
    for title, panel in _panels().items():
        if title in EXEMPLAR_PANELS:
            continue
        assert all("exemplar" not in target for target in panel["targets"]), title


def test_datasource_links_trace_ids_to_a_trace_datasource() -> None:
    """The Prometheus datasource maps the `trace_id` exemplar label to a trace datasource
    uid (a documented placeholder, `tempo`), in the form Grafana provisioning reads."""
    text = DATASOURCES_FILE.read_text(encoding="utf-8")
    (datasource,) = yaml.safe_load(text)["datasources"]
    (destination,) = datasource["jsonData"]["exemplarTraceIdDestinations"]
    assert destination == {"name": "trace_id", "datasourceUid": "tempo"}
    assert "uid: tempo" in text  # the commented datasource to provision with it


def test_compose_prometheus_stores_exemplars() -> None:
    """The Compose Prometheus runs with exemplar storage on, and the demo it scrapes traces."""
    services = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["services"]
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]
    assert "opentelemetry-sdk" in " ".join(services["gatewayz-api"]["command"])
