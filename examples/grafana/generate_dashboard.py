"""Generate the Gatewayz Grafana dashboard, examples/grafana/dashboards/gatewayz.json.

    python examples/grafana/generate_dashboard.py           # (re)write the JSON
    python examples/grafana/generate_dashboard.py --check   # exit 1 if the JSON is out of date

The JSON is committed so that Grafana can provision it as is; this script is its source. Change
the panels here, regenerate, and commit both (CI runs --check).

Why plain dicts rather than the grafana-foundation-sdk package: the SDK requires Python 3.11
(its builders use typing.Self) while this project supports 3.10; its PyPI releases carry a
timestamp epoch ("1769699998!10.1.0"), so an unpinned install picks the Grafana 10.1 schema of
the newest build rather than the newest Grafana; and its output changes between builds, which
would tie --check to one exact SDK build. The dashboard JSON model is small and stable, so the
script uses only the standard library.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

JSON = dict[str, Any]

DASHBOARD_PATH = Path(__file__).resolve().parent / "dashboards" / "gatewayz.json"

# The uid given to the datasource in provisioning/datasources/prometheus.yml.
DATASOURCE: JSON = {"type": "prometheus", "uid": "prometheus"}

# Label matchers. Every metric carries job and environment (target labels from prometheus.yml);
# the domain metrics that have provider and model labels are filtered by those too. Template
# variables are multi-select with "All" = ".*", hence =~.
JOB = 'job="gatewayz-api"'
ENV = f'{JOB}, environment=~"$environment"'
PROVIDER = f'{ENV}, provider=~"$provider"'
PROVIDER_MODEL = f'{PROVIDER}, model=~"$model"'

PANEL_WIDTH = 12
PANEL_HEIGHT = 8
GRID_COLUMNS = 24


@dataclass(frozen=True)
class Query:
    """One Prometheus query of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False
    exemplar: bool = False
    """Show the exemplars of the histogram (trace ids; Prometheus needs
    --enable-feature=exemplar-storage, and the datasource links them to traces)."""


@dataclass(frozen=True)
class Panel:
    """What differs between panels; to_json() fills in the rest."""

    title: str
    kind: str  # Grafana panel type: timeseries, stat, bargauge or table
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    min: float | None = None
    max: float | None = None
    # (color, lower bound); the first step's bound is always None ("from -infinity").
    thresholds: tuple[tuple[str, float | None], ...] = (("green", None),)
    mappings: tuple[JSON, ...] = ()
    options: JSON = field(default_factory=dict)
    custom: JSON = field(default_factory=dict)
    transformations: tuple[JSON, ...] = ()
    interval: str | None = None

    def to_json(self, panel_id: int, x: int, y: int) -> JSON:
        """The panel in Grafana's dashboard JSON model, placed at (x, y)."""
        defaults: JSON = {
            "unit": self.unit,
            "thresholds": {
                "mode": "absolute",
                "steps": [{"color": color, "value": value} for color, value in self.thresholds],
            },
            "mappings": list(self.mappings),
        }
        if self.min is not None:
            defaults["min"] = self.min
        if self.max is not None:
            defaults["max"] = self.max
        if self.custom:
            defaults["custom"] = self.custom
        panel: JSON = {
            "id": panel_id,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "datasource": DATASOURCE,
            "gridPos": {"h": PANEL_HEIGHT, "w": PANEL_WIDTH, "x": x, "y": y},
            "targets": [_target(query, chr(ord("A") + i)) for i, query in enumerate(self.queries)],
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": self.options,
        }
        if self.transformations:
            panel["transformations"] = list(self.transformations)
        if self.interval is not None:
            panel["interval"] = self.interval
        return panel


def _target(query: Query, ref_id: str) -> JSON:
    target: JSON = {
        "refId": ref_id,
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": query.expr,
        "legendFormat": query.legend,
        "range": not query.instant,
        "instant": query.instant,
    }
    if query.table:
        target["format"] = "table"
    if query.exemplar:
        target["exemplar"] = True
    return target


def _quantile(q: str, bucket: str, selector: str, by: str = "") -> str:
    """histogram_quantile over rates of buckets summed by le (and `by`)."""
    labels = f"{by}, le" if by else "le"
    return (
        f"histogram_quantile({q}, sum by ({labels}) "
        f"(rate({bucket}{{{selector}}}[$__rate_interval])))"
    )


def _ratio(numerator: str, denominator: str) -> str:
    """numerator / denominator that reads 0, not "no data", when the numerator has no series."""
    return f"({numerator} or 0 * {denominator}) / {denominator}"


def _http_share(status_code: str) -> str:
    """Share of HTTP requests whose status code matches the regex `status_code`."""
    return _ratio(
        f'sum(rate(http_requests_total{{{ENV}, status_code=~"{status_code}"}}[$__rate_interval]))',
        f"sum(rate(http_requests_total{{{ENV}}}[$__rate_interval]))",
    )


def _budget_fraction(slo: str) -> str:
    """1 - objective of an SLO: its error budget as a ratio."""
    return f'(1 - job:gatewayz_slo_objective:ratio{{{ENV}, slo="{slo}"}})'


def _budget_left(sli: str, selector: str, slo: str) -> str:
    """Share of the 30-day error budget left: 1 - average error ratio / budget."""
    return (
        f"1 - avg_over_time({sli}:ratio_rate5m{{{selector}}}[30d])"
        f" / on (job, environment) group_left () {_budget_fraction(slo)}"
    )


def _burn_rate(sli: str, selector: str, slo: str) -> str:
    """Error ratio over the last hour divided by the error budget."""
    return (
        f"{sli}:ratio_rate1h{{{selector}}}"
        f" / on (job, environment) group_left () {_budget_fraction(slo)}"
    )


BARGAUGE: JSON = {
    "displayMode": "gradient",
    "orientation": "horizontal",
    "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
    "showUnfilled": True,
}
TIMESERIES: JSON = {
    "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
    "tooltip": {"mode": "multi", "sort": "desc"},
}
LINES: JSON = {"drawStyle": "line", "fillOpacity": 10, "lineWidth": 1, "showPoints": "never"}
STACKED: JSON = {**LINES, "stacking": {"group": "A", "mode": "normal"}}
HIDE_TIME: tuple[JSON, ...] = ({"id": "organize", "options": {"excludeByName": {"Time": True}}},)

PANELS: tuple[Panel, ...] = (
    Panel(
        title="Request rate",
        kind="timeseries",
        description="HTTP requests per second by endpoint (route template).",
        queries=(
            Query(
                f"sum by (endpoint) (rate(http_requests_total{{{ENV}}}[$__rate_interval]))",
                "{{endpoint}}",
            ),
        ),
        unit="reqps",
        min=0,
        options=TIMESERIES,
        custom=STACKED,
    ),
    Panel(
        title="Error rate (%)",
        kind="timeseries",
        description=(
            "Share of HTTP requests answered with 5xx (server errors) and 4xx (client errors, "
            "including 429 rate limited and 499 client disconnected)."
        ),
        queries=(Query(_http_share("5.."), "5xx"), Query(_http_share("4.."), "4xx")),
        unit="percentunit",
        min=0,
        thresholds=(("green", None), ("red", 0.05)),
        options=TIMESERIES,
        custom={**LINES, "thresholdsStyle": {"mode": "dashed"}},
    ),
    Panel(
        title="Response time percentiles",
        kind="timeseries",
        description=(
            "p50, p95 and p99 of HTTP request duration over all endpoints. The dots are "
            "exemplars: one request each, linked to its trace."
        ),
        queries=tuple(
            Query(
                _quantile(q, "http_request_duration_seconds_bucket", ENV),
                f"p{name}",
                exemplar=True,
            )
            for q, name in (("0.5", "50"), ("0.95", "95"), ("0.99", "99"))
        ),
        unit="s",
        min=0,
        options=TIMESERIES,
        custom=LINES,
    ),
    Panel(
        title="Rate limited requests",
        kind="timeseries",
        description="Requests refused by the rate limiter per second, by limit type.",
        queries=(
            Query(
                "sum by (limit_type) "
                f"(rate(rate_limited_requests_total{{{ENV}}}[$__rate_interval]))",
                "{{limit_type}}",
            ),
        ),
        unit="reqps",
        min=0,
        options=TIMESERIES,
        custom=LINES,
    ),
    Panel(
        title="Tokens used (daily)",
        kind="timeseries",
        description=(
            "Tokens over the trailing 24 hours at each point in time, input and output "
            "(recording rule provider_model_token_type:tokens_used:increase24h)."
        ),
        queries=(
            Query(
                "sum by (token_type) "
                f"(provider_model_token_type:tokens_used:increase24h{{{PROVIDER_MODEL}}})",
                "{{token_type}}",
            ),
        ),
        min=0,
        options=TIMESERIES,
        custom=STACKED,
    ),
    Panel(
        title="Credits used (daily)",
        kind="timeseries",
        description=(
            "Credits over the trailing 24 hours at each point in time, by provider "
            "(recording rule provider_model:credits_used:increase24h)."
        ),
        queries=(
            Query(
                f"sum by (provider) (provider_model:credits_used:increase24h{{{PROVIDER_MODEL}}})",
                "{{provider}}",
            ),
        ),
        min=0,
        options=TIMESERIES,
        custom=STACKED,
    ),
    Panel(
        title="Output tokens per second",
        kind="timeseries",
        description="Generated (output) tokens per second: the gateway's throughput by model.",
        queries=(
            Query(
                "sum by (provider, model) (rate(tokens_used_total"
                f'{{{PROVIDER_MODEL}, token_type="output"}}[$__rate_interval]))',
                "{{provider}}/{{model}}",
            ),
        ),
        unit="short",
        min=0,
        options=TIMESERIES,
        custom=STACKED,
    ),
    Panel(
        title="Time to first token (p50/p95)",
        kind="timeseries",
        description=(
            "How long streaming users wait for the first token, by provider. The dots are "
            "exemplars: one call each, linked to its trace."
        ),
        queries=tuple(
            Query(
                _quantile(
                    q, "model_time_to_first_token_seconds_bucket", PROVIDER_MODEL, "provider"
                ),
                f"{{{{provider}}}} p{name}",
                exemplar=True,
            )
            for q, name in (("0.5", "50"), ("0.95", "95"))
        ),
        unit="s",
        min=0,
        options=TIMESERIES,
        custom=LINES,
    ),
    Panel(
        title="Provider availability",
        kind="stat",
        description=(
            "Whether providers are reachable. Each worker reports its own view; min by (provider) "
            "shows a provider as unavailable as soon as one worker sees it down (the "
            "GatewayzProviderUnavailable alert waits until all of them do)."
        ),
        queries=(
            Query(
                f"min by (provider) (provider_availability{{{PROVIDER}}})",
                "{{provider}}",
                instant=True,
            ),
        ),
        thresholds=(("red", None), ("green", 1)),
        mappings=(
            {
                "type": "value",
                "options": {
                    "0": {"text": "Unavailable", "color": "red", "index": 0},
                    "1": {"text": "Available", "color": "green", "index": 1},
                },
            },
        ),
        options={
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "value_and_name",
        },
    ),
    Panel(
        title="Provider error ratio",
        kind="timeseries",
        description=(
            "Share of inference requests per provider that ended in error or timeout (client "
            "cancellations excluded), from counters rather than the per-process "
            "provider_error_rate gauge."
        ),
        queries=(
            Query(
                _ratio(
                    "sum by (provider) (rate(model_inference_requests_total"
                    f'{{{PROVIDER_MODEL}, status=~"error|timeout"}}[$__rate_interval]))',
                    "sum by (provider) "
                    f"(rate(model_inference_requests_total{{{PROVIDER_MODEL}}}[$__rate_interval]))",
                ),
                "{{provider}}",
            ),
        ),
        unit="percentunit",
        min=0,
        thresholds=(("green", None), ("red", 0.1)),
        options=TIMESERIES,
        custom={**LINES, "thresholdsStyle": {"mode": "dashed"}},
    ),
    Panel(
        title="Cache hit rate (%)",
        kind="timeseries",
        description=(
            "Share of cache lookups that hit, per cache, over 5 minutes "
            "(recording rule cache_name:cache_hit:ratio_rate5m)."
        ),
        queries=(Query(f"cache_name:cache_hit:ratio_rate5m{{{ENV}}}", "{{cache_name}}"),),
        unit="percentunit",
        min=0,
        max=1,
        options=TIMESERIES,
        custom=LINES,
    ),
    Panel(
        title="Top models by usage",
        kind="bargauge",
        description="The 10 models with the most inference requests in the selected time range.",
        queries=(
            Query(
                "topk(10, sum by (provider, model) "
                f"(increase(model_inference_requests_total{{{PROVIDER_MODEL}}}[$__range])))",
                "{{provider}}/{{model}}",
                instant=True,
            ),
        ),
        min=0,
        options=BARGAUGE,
    ),
    Panel(
        title="Top users by credits",
        kind="table",
        description=(
            "The 10 users who used the most credits over the last 24 hours "
            "(topk over the recording rule user_id:credits_used:increase24h)."
        ),
        queries=(
            Query(
                f"topk(10, user_id:credits_used:increase24h{{{ENV}}})",
                instant=True,
                table=True,
            ),
        ),
        options={"showHeader": True, "sortBy": [{"displayName": "Value", "desc": True}]},
        transformations=HIDE_TIME,
    ),
    Panel(
        title="Top users by requests",
        kind="table",
        description=(
            "The 10 API keys (each belongs to one user) with the most requests in the selected "
            "time range."
        ),
        queries=(
            Query(
                f"topk(10, sum by (api_key_id) (increase(api_key_usage_total{{{ENV}}}[$__range])))",
                instant=True,
                table=True,
            ),
        ),
        options={"showHeader": True, "sortBy": [{"displayName": "Value", "desc": True}]},
        transformations=HIDE_TIME,
    ),
    Panel(
        title="Error budget remaining (30d)",
        kind="bargauge",
        description=(
            "Share of each SLO's 30-day error budget still unspent: 100 % is untouched, 0 % is "
            "spent, below 0 the objective is missed. Objectives are the series "
            "job:gatewayz_slo_objective:ratio (recording_rules.yml); see docs/runbooks.md."
        ),
        queries=(
            Query(_budget_left("job:gatewayz_slo_http_errors", ENV, "api-availability"), "API"),
            Query(
                _budget_left(
                    "provider:gatewayz_slo_inference_errors", PROVIDER, "provider-availability"
                ),
                "{{provider}} availability",
            ),
            Query(
                _budget_left("provider:gatewayz_slo_ttft_slow", PROVIDER, "provider-ttft"),
                "{{provider}} TTFT",
            ),
        ),
        unit="percentunit",
        max=1,
        thresholds=(("red", None), ("orange", 0), ("green", 0.25)),
        options=BARGAUGE,
    ),
    Panel(
        title="Burn rate (1h)",
        kind="timeseries",
        description=(
            "How fast each SLO spends its error budget over the last hour: 1 spends it in exactly "
            "30 days. The burn-rate alerts page at 14.4 (with the 5-minute window) and at 6 over "
            "six hours (with 30 minutes)."
        ),
        queries=(
            Query(_burn_rate("job:gatewayz_slo_http_errors", ENV, "api-availability"), "API"),
            Query(
                _burn_rate(
                    "provider:gatewayz_slo_inference_errors", PROVIDER, "provider-availability"
                ),
                "{{provider}} availability",
            ),
            Query(
                _burn_rate("provider:gatewayz_slo_ttft_slow", PROVIDER, "provider-ttft"),
                "{{provider}} TTFT",
            ),
        ),
        min=0,
        thresholds=(("green", None), ("orange", 6), ("red", 14.4)),
        options=TIMESERIES,
        custom={**LINES, "thresholdsStyle": {"mode": "dashed"}},
    ),
    Panel(
        title="Fallbacks by reason",
        kind="timeseries",
        description=(
            "Requests moved from one model to another per second, by reason (error, timeout, "
            "rate_limited, context_window, content_policy, other): model_fallbacks_total, "
            "filtered on the model the request left."
        ),
        queries=(
            Query(
                "sum by (from_model, to_model, reason) (rate(model_fallbacks_total"
                f'{{{ENV}, from_model=~"$model"}}[$__rate_interval]))',
                "{{from_model}} → {{to_model}} ({{reason}})",
            ),
        ),
        unit="reqps",
        min=0,
        options=TIMESERIES,
        custom=STACKED,
    ),
    Panel(
        title="Upstream attempts per request",
        kind="timeseries",
        description=(
            "Upstream calls a request takes, by the model asked for (1 = answered at the "
            "first try): the average per model and the p95 over all (gateway_request_attempts)."
        ),
        queries=(
            Query(
                "sum by (model) (rate(gateway_request_attempts_sum"
                f'{{{ENV}, model=~"$model"}}[$__rate_interval]))'
                " / sum by (model) (rate(gateway_request_attempts_count"
                f'{{{ENV}, model=~"$model"}}[$__rate_interval]))',
                "{{model}} average",
            ),
            Query(
                _quantile("0.95", "gateway_request_attempts_bucket", f'{ENV}, model=~"$model"'),
                "p95",
            ),
        ),
        min=1,
        options=TIMESERIES,
        custom=LINES,
    ),
    Panel(
        title="Who refused requests",
        kind="timeseries",
        description=(
            "Requests refused per second by the gateway's own limits, by scope and kind "
            "(gateway_rejections_total), next to the calls each provider refused with its own "
            "429 (provider_rate_limited_total, fallbacks included)."
        ),
        queries=(
            Query(
                f"sum by (scope, kind) (rate(gateway_rejections_total{{{ENV}}}[$__rate_interval]))",
                "gateway: {{scope}} {{kind}}",
            ),
            Query(
                "sum by (provider) "
                f"(rate(provider_rate_limited_total{{{PROVIDER_MODEL}}}[$__rate_interval]))",
                "upstream 429: {{provider}}",
            ),
        ),
        unit="reqps",
        min=0,
        options=TIMESERIES,
        custom=LINES,
    ),
    Panel(
        title="Margin per model (1h)",
        kind="timeseries",
        description=(
            "(billed - cost) / billed per model over the last hour: credits at "
            "job:gatewayz_credit_value:ratio (the setting in recording_rules.yml) against "
            "provider_cost_total. Below 0 the model loses money; unpriced models have no margin "
            "(see Calls without a price)."
        ),
        queries=(
            Query(
                f"provider_model_currency:gatewayz_margin:ratio_rate1h{{{PROVIDER_MODEL}}}",
                "{{provider}}/{{model}}",
            ),
        ),
        unit="percentunit",
        thresholds=(("red", None), ("green", 0)),
        options=TIMESERIES,
        custom={**LINES, "thresholdsStyle": {"mode": "dashed"}},
    ),
    Panel(
        title="Cost and billed value per hour",
        kind="timeseries",
        description=(
            "What upstream calls cost per hour (provider_cost_total) and what the credits billed "
            "for them are worth (credits_used_total times the value of a credit), at the rate "
            "of the last hour."
        ),
        queries=(
            Query(
                "3600 * sum by (currency) "
                f"(provider_model_currency:provider_cost:rate1h{{{PROVIDER_MODEL}}})",
                "cost ({{currency}})",
            ),
            Query(
                "3600 * sum by (currency) "
                f"(provider_model_currency:gatewayz_billed_value:rate1h{{{PROVIDER_MODEL}}})",
                "billed ({{currency}})",
            ),
        ),
        min=0,
        options=TIMESERIES,
        custom=LINES,
    ),
    Panel(
        title="Calls without a price",
        kind="bargauge",
        description=(
            "Upstream calls in the selected time range whose cost is unknown "
            "(inference_unpriced_total): add their models to the pricing table, or their "
            "cost is missing from the margin."
        ),
        queries=(
            Query(
                "sum by (provider, model) "
                f"(increase(inference_unpriced_total{{{PROVIDER_MODEL}}}[$__range]))",
                "{{provider}}/{{model}}",
                instant=True,
            ),
        ),
        min=0,
        options=BARGAUGE,
    ),
)


def _variable(name: str, label: str, query: str) -> JSON:
    """A multi-select query variable whose "All" matches everything (regex .*)."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "definition": query,
        "refresh": 2,  # on time range change, so new providers and models show up
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "hide": 0,
        "regex": "",
        "skipUrlSync": False,
    }


VARIABLES: tuple[JSON, ...] = (
    _variable("environment", "Environment", 'label_values(up{job="gatewayz-api"}, environment)'),
    _variable("provider", "Provider", "label_values(model_inference_requests_total, provider)"),
    _variable(
        "model",
        "Model",
        'label_values(model_inference_requests_total{provider=~"$provider"}, model)',
    ),
)


def build_dashboard() -> JSON:
    """The whole dashboard, panels laid out two per row."""
    panels = []
    for index, panel in enumerate(PANELS):
        x = (index * PANEL_WIDTH) % GRID_COLUMNS
        y = (index * PANEL_WIDTH) // GRID_COLUMNS * PANEL_HEIGHT
        panels.append(panel.to_json(panel_id=index + 1, x=x, y=y))
    return {
        "uid": "gatewayz-api",
        "title": "Gatewayz API",
        "description": "HTTP traffic, AI usage and providers of the Gatewayz API.",
        "tags": ["gatewayz", "prometheus"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [],
        "templating": {"list": list(VARIABLES)},
        "panels": panels,
    }


def render() -> str:
    """The dashboard as the exact text committed to the repository."""
    return json.dumps(build_dashboard(), indent=2) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the file differs from what would be generated",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DASHBOARD_PATH,
        help=f"dashboard file (default: {DASHBOARD_PATH})",
    )
    args = parser.parse_args(argv)
    output: Path = args.output
    expected = render()
    if args.check:
        actual = output.read_text(encoding="utf-8") if output.exists() else ""
        if actual == expected:
            return 0
        diff = difflib.unified_diff(
            actual.splitlines(keepends=True),
            expected.splitlines(keepends=True),
            fromfile=f"{output} (committed)",
            tofile=f"{output} (generated)",
        )
        sys.stderr.writelines(diff)
        sys.stderr.write(f"\n{output} is out of date: run {Path(__file__).name} and commit it.\n")
        return 1
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(expected, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
