"""Every PromQL query that the operations kit under examples/ ships, ready to run.

For tests that check the queries against a real Prometheus (syntax, or results on live data):

- DASHBOARD_QUERIES: (panel title, expr) for every query of the Grafana dashboard, with Grafana's
  template variables replaced by what they mean when "All" is selected ($environment, $provider
  and $model match everything) and by typical values of its built-in intervals.
- DASHBOARD_RAW_QUERIES: the same pairs, variables left as they are.
- RECORDING_RULES: (record name, expr) from examples/prometheus/recording_rules.yml.
- ALERT_RULES: (alert name, expr) from examples/prometheus/alert_rules.yml.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLES_DIR = REPO_ROOT / "examples"
PROMETHEUS_DIR = EXAMPLES_DIR / "prometheus"
RECORDING_RULES_FILE = PROMETHEUS_DIR / "recording_rules.yml"
ALERT_RULES_FILE = PROMETHEUS_DIR / "alert_rules.yml"
DASHBOARD_FILE = EXAMPLES_DIR / "grafana" / "dashboards" / "gatewayz.json"

# Variable name -> replacement. Dashboard variables are multi-select regex matchers whose "All"
# is ".*"; $__rate_interval and $__range get values Grafana would use for a one-day view.
TEMPLATE_VARIABLES: dict[str, str] = {
    "environment": ".*",
    "provider": ".*",
    "model": ".*",
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1d",
}

# $name, ${name} and ${name:format}; a "$" that ends a regex ("foo$") is not a variable.
_VARIABLE = re.compile(r"\$(?:\{(?P<braced>\w+)(?::\w+)?\}|(?P<bare>\w+))")


def substitute_template_variables(expr: str) -> str:
    """Replace Grafana template variables in `expr`; ValueError for one this module lacks."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        try:
            return TEMPLATE_VARIABLES[name]
        except KeyError:
            raise ValueError(f"unknown template variable ${name} in {expr!r}") from None

    return _VARIABLE.sub(replace, expr)


def load_dashboard() -> dict[str, Any]:
    """The Grafana dashboard JSON."""
    dashboard: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    return dashboard


def load_rule_groups(path: Path) -> list[dict[str, Any]]:
    """The `groups` of a Prometheus rule file."""
    groups: list[dict[str, Any]] = yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    return groups


def _dashboard_raw_queries() -> list[tuple[str, str]]:
    return [
        (panel["title"], target["expr"])
        for panel in load_dashboard()["panels"]
        for target in panel.get("targets", [])
    ]


def _rules(path: Path, kind: str) -> list[tuple[str, str]]:
    return [
        (rule[kind], rule["expr"])
        for group in load_rule_groups(path)
        for rule in group["rules"]
        if kind in rule
    ]


DASHBOARD_RAW_QUERIES: list[tuple[str, str]] = _dashboard_raw_queries()
DASHBOARD_QUERIES: list[tuple[str, str]] = [
    (title, substitute_template_variables(expr)) for title, expr in DASHBOARD_RAW_QUERIES
]
RECORDING_RULES: list[tuple[str, str]] = _rules(RECORDING_RULES_FILE, "record")
ALERT_RULES: list[tuple[str, str]] = _rules(ALERT_RULES_FILE, "alert")
