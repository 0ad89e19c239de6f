"""The operations kit under examples/: Prometheus, Alertmanager, Grafana and Docker Compose.

Configuration is checked with the tools that will load it (promtool, amtool, Alertmanager
itself); the alert and recording rules have promtool unit tests, and these tests make sure those
unit tests cover every alert and would catch a broken rule.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from _binaries import require_binary
from _servers import free_port, stop
from promql_queries import (
    ALERT_RULES,
    DASHBOARD_FILE,
    DASHBOARD_QUERIES,
    DASHBOARD_RAW_QUERIES,
    EXAMPLES_DIR,
    PROMETHEUS_DIR,
    RECORDING_RULES,
    RECORDING_RULES_FILE,
    REPO_ROOT,
    load_dashboard,
    load_rule_groups,
    substitute_template_variables,
)

PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
ALERT_RULES_FILE = PROMETHEUS_DIR / "alert_rules.yml"
RULE_FILES = (RECORDING_RULES_FILE, ALERT_RULES_FILE)
RULE_TEST_DIR = PROMETHEUS_DIR / "tests"
ALERTMANAGER_CONFIG = EXAMPLES_DIR / "alertmanager" / "alertmanager.yml"
COMPOSE_FILE = EXAMPLES_DIR / "docker-compose.prometheus.yml"
GRAFANA_DIR = EXAMPLES_DIR / "grafana"
DASHBOARD_GENERATOR = GRAFANA_DIR / "generate_dashboard.py"
DATASOURCES_FILE = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS_FILE = GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yml"
RUNBOOKS_FILE = REPO_ROOT / "docs" / "runbooks.md"
RUNBOOK_URL = "https://github.com/gatewayz/gatewayz-metrics/blob/main/docs/runbooks.md"
ALERTMANAGER_SECRETS_DIR = "/etc/alertmanager/secrets/"

# The wiki page's ten dashboard panels (its "Top users" split into requests and credits), plus
# time to first token and output tokens per second, which this kit adds.
REQUIRED_PANEL_TITLES = (
    "Request rate",
    "Error rate (%)",
    "Response time percentiles",
    "Tokens used (daily)",
    "Credits used (daily)",
    "Cache hit rate (%)",
    "Provider availability",
    "Top models by usage",
    "Top users by requests",
    "Top users by credits",
    "Rate limited requests",
    "Time to first token (p50/p95)",
    "Output tokens per second",
)

# Labels of the metrics that gatewayz-metrics exposes (besides job, instance, service and
# environment, which Prometheus adds to every series of the target).
METRIC_LABELS: dict[str, frozenset[str]] = {
    name: frozenset(labels.split())
    for name, labels in {
        "up": "",
        "http_requests_total": "method endpoint status_code",
        "http_request_duration_seconds": "method endpoint",
        "http_requests_in_progress": "method",
        "http_request_size_bytes_total": "method endpoint",
        "http_response_size_bytes_total": "method endpoint",
        "http_time_to_first_byte_seconds": "method endpoint",
        "model_inference_requests_total": "provider model status",
        "model_inference_duration_seconds": "provider model",
        "model_time_to_first_token_seconds": "provider model",
        "model_time_per_output_token_seconds": "provider model",
        "tokens_used_total": "provider model token_type",
        "credits_used_total": "provider model user_id",
        "database_queries_total": "table operation",
        "database_query_duration_seconds": "table operation",
        "cache_hits_total": "cache_name",
        "cache_misses_total": "cache_name",
        "cache_size_bytes": "cache_name",
        "rate_limited_requests_total": "limit_type",
        "current_rate_limit": "limit_type",
        "provider_availability": "provider",
        "provider_error_rate": "provider",
        "provider_response_time_seconds": "provider",
        "api_key_usage_total": "api_key_id status",
        "active_api_keys": "status",
        "user_credit_balance": "user_id",
        "trial_active": "status",
        "subscription_count": "plan",
        "active_connections": "connection_type",
        "queue_size": "queue",
        "gatewayz_metrics_label_overflow_total": "metric label",
        "gatewayz_metrics_internal_errors_total": "component",
        "gatewayz_metrics_invalid_values_total": "metric argument",
        "model_fallbacks_total": "from_model to_model reason",
        "model_inference_retries_total": "provider model",
        "gateway_request_attempts": "model",
        "gateway_rejections_total": "scope kind",
        "provider_rate_limited_total": "provider model",
        "provider_cost_total": "provider model currency",
        "inference_unpriced_total": "provider model",
    }.items()
}
RECORDED_METRICS = frozenset(name for name, _ in RECORDING_RULES)

# A selector: metric name (recorded names contain colons) followed by its label matchers.
_SELECTOR = re.compile(r"(?P<metric>[A-Za-z_:][A-Za-z0-9_:]*)\{(?P<matchers>[^}]*)\}")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_IDENTIFIER = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


# --- helpers ---------------------------------------------------------------------------------


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _report(result: subprocess.CompletedProcess[str]) -> str:
    command = " ".join(str(arg) for arg in result.args)
    return f"$ {command}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _alerts() -> dict[str, dict[str, Any]]:
    return {
        rule["alert"]: rule
        for group in load_rule_groups(ALERT_RULES_FILE)
        for rule in group["rules"]
        if "alert" in rule
    }


def _rule_test_files() -> list[Path]:
    return sorted(RULE_TEST_DIR.glob("*.yml"))


def _alert_rule_cases() -> Iterator[tuple[str, bool]]:
    """(alert name, whether the case expects it to fire) for every promtool alert test case."""
    for path in _rule_test_files():
        for test in _load_yaml(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                yield case["alertname"], bool(case.get("exp_alerts"))


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = _load_yaml(COMPOSE_FILE)
    return compose


def _volume_mounts(service: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(type, source, target) of each volume of a Compose service: type is bind or volume."""
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            yield volume["type"], volume["source"], volume["target"]
            continue
        source, target = volume.split(":")[:2]
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        yield kind, source, target


def _environment(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {key: str(value) for key, value in environment.items()}


def _check_promql(exprs: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """promtool's verdict on `exprs`, each written as a recording rule of a throw-away file."""
    promtool = require_binary("promtool")
    rules = {
        "groups": [
            {
                "name": "syntax-check",
                "rules": [
                    {"record": f"syntax_check_{index}", "expr": expr}
                    for index, expr in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "syntax_check_rules.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    return _run(promtool, "check", "rules", path)


def _walk(node: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of a parsed YAML document, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item)


def _http_json(url: str, payload: Any = None) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        body = response.read()
    return json.loads(body) if body else None


def _histogram_series() -> set[str]:
    return {
        f"{name}{suffix}"
        for name in METRIC_LABELS
        if name.endswith("_seconds") or name == "gateway_request_attempts"
        for suffix in ("_bucket", "_sum", "_count")
    }


def _labels_of(metric: str) -> frozenset[str]:
    """Labels of a series: from METRIC_LABELS, or for a recorded one from its rule's by clauses."""
    if metric in RECORDED_METRICS:
        expr = dict(RECORDING_RULES)[metric]
        clauses = re.findall(r"\bby \(([^)]*)\)", expr)
        if not clauses:  # built from other recorded series, e.g. a ratio of two rates
            return frozenset().union(
                *(
                    _labels_of(name)
                    for name in _IDENTIFIER.findall(expr)
                    if name in RECORDED_METRICS
                )
            )
        return frozenset(label.strip() for label in clauses[0].split(",")) - {"le"}
    base = re.sub(r"_(bucket|sum|count)$", "", metric)
    assert base in METRIC_LABELS, f"unknown metric {metric}: add it to METRIC_LABELS"
    return METRIC_LABELS[base]


# --- require_binary ----------------------------------------------------------------------------


def test_require_binary_returns_the_path_of_an_installed_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An executable on PATH is found and its path returned, in CI or not."""
    tool = tmp_path / "some-tool"
    tool.write_text("#!/bin/sh\n", encoding="utf-8")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    assert require_binary("missing-tool", "some-tool") == str(tool)


def test_require_binary_skips_outside_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing binary skips the test when CI is unset."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-tool not found"):
        require_binary("no-such-tool")


@pytest.mark.parametrize("ci", ["true", "1", ""], ids=["true", "1", "empty"])
def test_require_binary_fails_in_ci(
    ci: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing binary fails the test whenever CI is set, whatever its value."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match="no-such-tool not found"):
        require_binary("no-such-tool")


# --- Prometheus configuration and rules ------------------------------------------------------


@pytest.mark.prometheus
def test_prometheus_config_is_valid() -> None:
    """promtool accepts prometheus.yml, including the rule files it names."""
    result = _run(require_binary("promtool"), "check", "config", PROMETHEUS_CONFIG)
    assert result.returncode == 0, _report(result)
    assert "2 rule files found" in result.stdout, _report(result)


def test_prometheus_config_scrapes_the_api_as_documented() -> None:
    """The gatewayz-api job keeps the wiki page's intervals, target and labels."""
    config = _load_yaml(PROMETHEUS_CONFIG)
    assert config["global"]["scrape_interval"] == "15s"
    assert config["global"]["evaluation_interval"] == "15s"
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "gatewayz-api"]
    assert (job["scrape_interval"], job["scrape_timeout"]) == ("10s", "5s")
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [
        {
            "targets": ["gatewayz-api:8000"],
            "labels": {"service": "gatewayz-api", "environment": "production"},
        }
    ]
    assert config["rule_files"] == ["recording_rules.yml", "alert_rules.yml"]
    alertmanagers = config["alerting"]["alertmanagers"]
    assert alertmanagers[0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    assert "credentials_file: /etc/prometheus/metrics-token" in PROMETHEUS_CONFIG.read_text()


@pytest.mark.prometheus
def test_prometheus_bearer_token_block_is_valid_once_uncommented(tmp_path: Path) -> None:
    """Uncommenting the documented authorization block gives a valid config."""
    copy = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, copy)
    token = tmp_path / "metrics-token"
    token.write_text("s3cret\n", encoding="utf-8")
    text, count = re.subn(
        r"^(\s*)# (authorization:|  type: Bearer|  credentials_file: \S+)$",
        r"\1\2",
        PROMETHEUS_CONFIG.read_text(encoding="utf-8"),
        flags=re.MULTILINE,
    )
    assert count == 3, "the commented authorization block changed shape"
    config = copy / "prometheus.yml"
    config.write_text(text.replace("/etc/prometheus/metrics-token", str(token)), encoding="utf-8")
    (job,) = [j for j in _load_yaml(config)["scrape_configs"] if j["job_name"] == "gatewayz-api"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": str(token)}
    result = _run(require_binary("promtool"), "check", "config", config)
    assert result.returncode == 0, _report(result)


@pytest.mark.prometheus
@pytest.mark.parametrize("rule_file", RULE_FILES, ids=lambda path: path.name)
def test_rule_file_is_valid(rule_file: Path) -> None:
    """promtool accepts each rule file."""
    result = _run(require_binary("promtool"), "check", "rules", rule_file)
    assert result.returncode == 0, _report(result)
    assert "SUCCESS" in result.stdout, _report(result)


@pytest.mark.prometheus
@pytest.mark.slow
def test_rule_unit_tests_pass() -> None:
    """promtool test rules passes on every test file under examples/prometheus/tests."""
    test_files = _rule_test_files()
    assert len(test_files) >= 2, test_files
    result = _run(require_binary("promtool"), "test", "rules", *test_files)
    assert result.returncode == 0, _report(result)
    assert result.stdout.count("SUCCESS") == len(test_files), _report(result)


# Each mutation breaks a rule the way a careless edit would; the named promtool test file must
# then fail. Proves the unit tests check values and labels, not merely that rules load.
MUTATIONS = [
    pytest.param(
        ALERT_RULES_FILE,
        'job:http_requests_5xx:ratio_rate5m{job="gatewayz-api"} > 0.05',
        'job:http_requests_5xx:ratio_rate5m{job="gatewayz-api"} > 0.5',
        "alert_rules_test.yml",
        id="5xx-threshold",
    ),
    pytest.param(
        ALERT_RULES_FILE,
        "max by (job, environment, provider) (provider_availability",
        "min by (job, environment, provider) (provider_availability",
        "alert_rules_test.yml",
        id="provider-unavailable-min",
    ),
    pytest.param(
        ALERT_RULES_FILE,
        'up{job="gatewayz-api"} == 0\n        for: 2m',
        'up{job="gatewayz-api"} == 0\n        for: 0m',
        "alert_rules_test.yml",
        id="target-down-no-for",
    ),
    pytest.param(
        ALERT_RULES_FILE,
        '          and\n          (job:credits_used:rate1h{job="gatewayz-api"} offset 1d) > 0\n',
        "",
        "billing_alerts_test.yml",
        id="credits-no-baseline-guard",
    ),
    pytest.param(
        ALERT_RULES_FILE,
        'increase(gatewayz_metrics_invalid_values_total{job="gatewayz-api"}[15m])) > 0',
        'increase(gatewayz_metrics_invalid_values_total{job="gatewayz-api"}[15m])) > 2',
        "self_metrics_alerts_test.yml",
        id="invalid-values-threshold",
    ),
    pytest.param(
        ALERT_RULES_FILE,
        '            gatewayz_metrics_internal_errors_total{job="gatewayz-api"} > 0\n'
        "            unless\n",
        '            gatewayz_metrics_internal_errors_total{job="gatewayz-api"} > 0\n'
        "            and\n",
        "self_metrics_alerts_test.yml",
        id="internal-errors-new-series-arm",
    ),
    pytest.param(
        RECORDING_RULES_FILE,
        'rate(model_inference_requests_total{status=~"error|timeout"}[5m]))\n            or\n'
        "            0 * sum by (job, environment, provider) (rate(",
        'rate(model_inference_requests_total{status!="success"}[5m]))\n            or\n'
        "            0 * sum by (job, environment, provider) (rate(",
        "recording_rules_test.yml",
        id="provider-errors-count-cancellations",
    ),
    pytest.param(
        ALERT_RULES_FILE,
        'provider:gatewayz_slo_inference_errors:ratio_rate5m{job="gatewayz-api"}',
        'provider:gatewayz_slo_inference_errors:ratio_rate1h{job="gatewayz-api"}',
        "slo_rules_test.yml",
        id="burn-rate-without-short-window",
    ),
    pytest.param(
        RECORDING_RULES_FILE,
        "expr: 0.995 + 0 *",
        "expr: 0.95 + 0 *",
        "slo_rules_test.yml",
        id="slo-objective",
    ),
    pytest.param(
        RECORDING_RULES_FILE,
        'rate(model_time_to_first_token_seconds_bucket{le="2.5"}[1h]))',
        'rate(model_time_to_first_token_seconds_bucket{le="5.0"}[1h]))',
        "slo_rules_test.yml",
        id="ttft-threshold",
    ),
    pytest.param(
        RECORDING_RULES_FILE,
        "histogram_quantile(0.95,\n",
        "histogram_quantile(0.9,\n",
        "recording_rules_test.yml",
        id="latency-quantile",
    ),
    pytest.param(
        RECORDING_RULES_FILE,
        "            or cache_name:cache_misses:rate5m\n",
        "",
        "recording_rules_test.yml",
        id="cache-ratio-misses-only",
    ),
]


@pytest.mark.prometheus
@pytest.mark.parametrize(("rule_file", "old", "new", "test_file"), MUTATIONS)
@pytest.mark.slow
def test_rule_unit_tests_catch_a_broken_rule(
    rule_file: Path, old: str, new: str, test_file: str, tmp_path: Path
) -> None:
    """A rule changed on purpose makes its promtool unit tests fail."""
    promtool = require_binary("promtool")
    copy = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, copy)
    target = copy / rule_file.name
    text = target.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"mutation no longer applies to {rule_file.name}: {old!r}"
    target.write_text(text.replace(old, new), encoding="utf-8")
    assert _run(promtool, "check", "rules", target).returncode == 0, "mutant must still load"
    result = _run(promtool, "test", "rules", copy / "tests" / test_file)
    assert result.returncode != 0, _report(result)
    assert "FAILED" in result.stdout + result.stderr, _report(result)


def test_every_alert_has_a_firing_and_a_silent_test_case() -> None:
    """Each alert has a promtool case that expects it to fire and one that expects silence."""
    cases = list(_alert_rule_cases())
    for alert in _alerts():
        assert (alert, True) in cases, f"{alert} has no test case where it fires"
        assert (alert, False) in cases, f"{alert} has no test case with exp_alerts: []"


def test_alert_test_cases_name_existing_alerts() -> None:
    """No promtool case tests an alert that does not exist (it would pass vacuously)."""
    unknown = {name for name, _ in _alert_rule_cases()} - set(_alerts())
    assert not unknown, f"test cases for alerts missing from alert_rules.yml: {unknown}"


def test_recording_rules_are_checked_with_exact_values() -> None:
    """At least a few recording rules are checked by promql_expr_test with exact values."""
    checked = set()
    for path in _rule_test_files():
        for test in _load_yaml(path)["tests"]:
            for case in test.get("promql_expr_test", []):
                assert case["exp_samples"], f"{case['expr']} in {path.name} expects nothing"
                assert all("value" in sample for sample in case["exp_samples"]), case
                checked.add(case["expr"])
    assert len(checked & RECORDED_METRICS) >= 5, sorted(checked)


def test_alerts_have_severity_annotations_and_runbook() -> None:
    """Every alert routes by severity and explains itself, with a runbook section."""
    runbooks = RUNBOOKS_FILE.read_text(encoding="utf-8")
    headings = set(re.findall(r"^## (\S+)$", runbooks, flags=re.MULTILINE))
    for name, rule in _alerts().items():
        assert name.startswith("Gatewayz"), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert annotations["description"].strip(), name
        assert annotations["runbook_url"] == f"{RUNBOOK_URL}#{name.lower()}", name
        assert name in headings, f"docs/runbooks.md has no '## {name}' section"
    assert headings == set(_alerts()), "runbook sections and alerts differ"


def test_recording_rules_are_named_and_commented() -> None:
    """Recording rules follow level:metric:operations and each has a comment above it."""
    for name, _ in RECORDING_RULES:
        assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", name), name
    lines = RECORDING_RULES_FILE.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if line.lstrip().startswith("- record:"):
            previous = next(text for text in reversed(lines[:number]) if text.strip())
            assert previous.lstrip().startswith("#"), f"no comment above: {line.strip()}"


def test_alerts_keep_job_and_environment_labels() -> None:
    """Rules aggregate by job and environment at least: Alertmanager groups and inhibits by them."""
    for name, expr in ALERT_RULES:
        for clause in re.findall(r"\bby \(([^)]*)\)", expr):
            labels = {label.strip() for label in clause.split(",")}
            assert {"job", "environment"} <= labels, f"{name}: by ({clause})"
    for name, expr in RECORDING_RULES:
        for clause in re.findall(r"\bby \(([^)]*)\)", expr):
            labels = {label.strip() for label in clause.split(",")}
            assert {"job", "environment"} <= labels, f"{name}: by ({clause})"


# --- Alertmanager ----------------------------------------------------------------------------


@pytest.mark.prometheus
def test_alertmanager_config_is_valid() -> None:
    """amtool accepts alertmanager.yml."""
    result = _run(require_binary("amtool"), "check-config", ALERTMANAGER_CONFIG)
    assert result.returncode == 0, _report(result)
    assert "SUCCESS" in result.stdout, _report(result)


@pytest.mark.prometheus
@pytest.mark.parametrize(
    ("severity", "receiver"),
    [("critical", "team-critical"), ("warning", "team-warning"), ("info", "team-warning")],
)
def test_alertmanager_routes_by_severity(severity: str, receiver: str) -> None:
    """Critical alerts page, warnings notify, and anything else still reaches a human."""
    result = _run(
        require_binary("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        f"severity={severity}",
        "alertname=GatewayzHigh5xxRatio",
    )
    assert result.returncode == 0, _report(result)
    assert result.stdout.strip() == receiver, _report(result)


def test_alertmanager_receivers_cover_pagerduty_slack_and_email() -> None:
    """Critical goes to PagerDuty and Slack, warning to Slack and email."""
    receivers = {r["name"]: r for r in _load_yaml(ALERTMANAGER_CONFIG)["receivers"]}
    assert {"pagerduty_configs", "slack_configs"} <= set(receivers["team-critical"])
    assert {"slack_configs", "email_configs"} <= set(receivers["team-warning"])


def test_alertmanager_secrets_come_from_files_the_compose_stack_writes() -> None:
    """No secret is inline; every *_file secret is a file the Compose init container writes."""
    config = _load_yaml(ALERTMANAGER_CONFIG)
    inline = {"smtp_auth_password", "auth_password", "api_url", "routing_key", "service_key"}
    pairs = list(_walk(config))
    assert not [key for key, _ in pairs if key in inline], "secrets must be read from files"
    secret_files = {value for key, value in pairs if key.endswith("_file")}
    assert len(secret_files) == 3, secret_files
    services = _compose()["services"]
    mounts = {target: source for _, source, target in _volume_mounts(services["alertmanager"])}
    volume = mounts[ALERTMANAGER_SECRETS_DIR.rstrip("/")]
    writer = services["alertmanager-secrets"]
    writer_mounts = {source: target for _, source, target in _volume_mounts(writer)}
    script = " ".join(writer["command"])
    for path in secret_files:
        assert path.startswith(ALERTMANAGER_SECRETS_DIR), path
        written = f"{writer_mounts[volume]}/{path.removeprefix(ALERTMANAGER_SECRETS_DIR)}"
        assert f"> {written}" in script, f"the init container does not write {path}"
    assert set(_environment(writer)) == {
        "SMTP_PASSWORD",
        "SLACK_WEBHOOK_URL",
        "PAGERDUTY_ROUTING_KEY",
    }


@pytest.mark.prometheus
@pytest.mark.slow
def test_target_down_inhibits_other_alerts_of_its_environment(tmp_path: Path) -> None:
    """In a running Alertmanager, GatewayzTargetDown mutes its environment's other alerts only."""
    alertmanager = require_binary("alertmanager", "prometheus-alertmanager")
    # The real routes and inhibit rules, with receivers that send nothing anywhere.
    config = _load_yaml(ALERTMANAGER_CONFIG)
    config["receivers"] = [{"name": receiver["name"]} for receiver in config["receivers"]]
    config_file = tmp_path / "alertmanager.yml"
    config_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    base = f"http://127.0.0.1:{port}/api/v2"
    with (tmp_path / "alertmanager.log").open("w") as log:
        process = subprocess.Popen(
            [
                alertmanager,
                f"--config.file={config_file}",
                f"--storage.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--cluster.listen-address=",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    _http_json(f"{base}/status")
                    break
                except OSError:
                    assert process.poll() is None, "Alertmanager exited"
                    assert time.monotonic() < deadline, "Alertmanager did not start"
                    time.sleep(0.2)

            def alert(name: str, environment: str, **labels: str) -> dict[str, Any]:
                return {
                    "labels": {
                        "alertname": name,
                        "job": "gatewayz-api",
                        "environment": environment,
                        "severity": "critical",
                        **labels,
                    }
                }

            _http_json(
                f"{base}/alerts",
                [
                    alert("GatewayzTargetDown", "production", instance="gatewayz-api:8000"),
                    alert("GatewayzHigh5xxRatio", "production"),
                    alert("GatewayzHigh5xxRatio", "staging"),
                ],
            )
            states: dict[tuple[str, str], str] = {}
            while time.monotonic() < deadline:
                states = {
                    (a["labels"]["alertname"], a["labels"]["environment"]): a["status"]["state"]
                    for a in _http_json(f"{base}/alerts")
                }
                if states.get(("GatewayzHigh5xxRatio", "production")) == "suppressed":
                    break
                time.sleep(0.2)
        finally:
            stop(process)
    log_text = (tmp_path / "alertmanager.log").read_text()
    assert states == {
        ("GatewayzTargetDown", "production"): "active",
        ("GatewayzHigh5xxRatio", "production"): "suppressed",
        ("GatewayzHigh5xxRatio", "staging"): "active",
    }, log_text


# --- Docker Compose --------------------------------------------------------------------------


def test_compose_file_defines_the_stack() -> None:
    """The Compose file parses and has the API, Prometheus, Alertmanager and Grafana."""
    services = _compose()["services"]
    assert {"gatewayz-api", "prometheus", "alertmanager", "grafana"} <= set(services)
    api_command = " ".join(services["gatewayz-api"]["command"])
    assert "uvicorn examples.gateway.app:app --host 0.0.0.0 --port 8000" in api_command
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["alertmanager"]["image"].startswith("prom/alertmanager:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")


def test_compose_bind_mounts_exist() -> None:
    """Every bind-mounted path exists in the repository, relative to the Compose file."""
    binds = [
        (name, source)
        for name, service in _compose()["services"].items()
        for kind, source, _ in _volume_mounts(service)
        if kind == "bind"
    ]
    assert len(binds) >= 7, binds
    for name, source in binds:
        assert (COMPOSE_FILE.parent / source).exists(), f"{name}: {source} does not exist"


def test_compose_depends_on_names_services() -> None:
    """Every depends_on entry names another service of the file."""
    services = _compose()["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert dependency != name, name


def test_compose_named_volumes_are_declared() -> None:
    """Every named volume a service uses is declared at the top level."""
    compose = _compose()
    declared = set(compose.get("volumes") or {})
    used = {
        source
        for service in compose["services"].values()
        for kind, source, _ in _volume_mounts(service)
        if kind == "volume"
    }
    assert used, "Prometheus and Grafana need persistent volumes"
    assert used <= declared, f"undeclared volumes: {used - declared}"


def test_compose_prometheus_mounts_config_and_every_rule_file() -> None:
    """Prometheus in Compose finds its config and each rule file it names, and keeps its data."""
    prometheus = _compose()["services"]["prometheus"]
    mounts = {target: (kind, source) for kind, source, target in _volume_mounts(prometheus)}
    config_dir = "/etc/prometheus"
    assert mounts[f"{config_dir}/prometheus.yml"] == ("bind", "./prometheus/prometheus.yml")
    for rule_file in _load_yaml(PROMETHEUS_CONFIG)["rule_files"]:
        assert mounts[f"{config_dir}/{rule_file}"] == ("bind", f"./prometheus/{rule_file}")
    assert mounts["/prometheus"][0] == "volume"
    assert "--storage.tsdb.retention.time=${PROMETHEUS_RETENTION:-15d}" in prometheus["command"]


def test_compose_grafana_password_comes_from_the_environment() -> None:
    """Grafana's admin password is required from the environment, never a default "admin"."""
    grafana = _compose()["services"]["grafana"]
    password = _environment(grafana)["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), password
    assert "admin/admin" not in COMPOSE_FILE.read_text(encoding="utf-8")


def test_compose_grafana_mounts_provisioning_and_dashboards() -> None:
    """Grafana gets the provisioning files, and the dashboards where the provider looks."""
    grafana = _compose()["services"]["grafana"]
    mounts = {target: source for kind, source, target in _volume_mounts(grafana) if kind == "bind"}
    providers = _load_yaml(DASHBOARD_PROVIDERS_FILE)["providers"]
    dashboards_path = providers[0]["options"]["path"]
    assert (COMPOSE_FILE.parent / mounts[dashboards_path]).resolve() == DASHBOARD_FILE.parent
    provisioning = GRAFANA_DIR / "provisioning"
    for kind in ("datasources", "dashboards"):
        source = mounts[f"/etc/grafana/provisioning/{kind}"]
        assert (COMPOSE_FILE.parent / source).resolve() == provisioning / kind


# --- Grafana ---------------------------------------------------------------------------------


def test_grafana_datasource_is_the_compose_prometheus() -> None:
    """The provisioned datasource has uid prometheus, Prometheus' URL, and is the default."""
    (datasource,) = _load_yaml(DATASOURCES_FILE)["datasources"]
    assert datasource["uid"] == "prometheus"
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert datasource["isDefault"] is True
    for panel in load_dashboard()["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]


def test_dashboard_json_is_up_to_date() -> None:
    """The committed dashboard is exactly what generate_dashboard.py produces."""
    result = _run(sys.executable, DASHBOARD_GENERATOR, "--check")
    assert result.returncode == 0, _report(result)


def test_dashboard_check_detects_a_stale_file(tmp_path: Path) -> None:
    """generate_dashboard.py --check fails, with a diff, when the file was edited by hand."""
    stale = tmp_path / "gatewayz.json"
    text = DASHBOARD_FILE.read_text(encoding="utf-8")
    stale.write_text(text.replace('"Request rate"', '"Requests"', 1), encoding="utf-8")
    result = _run(sys.executable, DASHBOARD_GENERATOR, "--check", "--output", stale)
    assert result.returncode == 1, _report(result)
    assert re.search(r'^-\s+"title": "Requests",$', result.stderr, re.MULTILINE), _report(result)
    assert stale.read_text(encoding="utf-8") != text, "--check must not rewrite the file"


def test_dashboard_generator_writes_the_file(tmp_path: Path) -> None:
    """Without --check the generator writes the dashboard, byte for byte the committed one."""
    output = tmp_path / "out" / "gatewayz.json"
    result = _run(sys.executable, DASHBOARD_GENERATOR, "--output", output)
    assert result.returncode == 0, _report(result)
    assert output.read_bytes() == DASHBOARD_FILE.read_bytes()


def test_dashboard_has_the_required_panels() -> None:
    """The wiki page's ten panels, time to first token and output tokens/s are on the dashboard."""
    panels = load_dashboard()["panels"]
    titles = [panel["title"] for panel in panels]
    missing = set(REQUIRED_PANEL_TITLES) - set(titles)
    assert not missing, f"missing panels: {missing}"
    assert len(titles) == len(set(titles)), "duplicate panel titles"
    assert len({panel["id"] for panel in panels}) == len(panels), "duplicate panel ids"


def test_every_panel_has_a_query() -> None:
    """Each panel has at least one target, and every target has a non-empty expression."""
    for panel in load_dashboard()["panels"]:
        assert panel.get("targets"), f"{panel['title']} has no targets"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"{panel['title']}: empty expr"


def test_dashboard_template_variables() -> None:
    """environment, provider and model are multi-select variables with an All of ".*"."""
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert variables["environment"]["query"] == (
        'label_values(up{job="gatewayz-api"}, environment)'
    )
    assert variables["provider"]["query"] == (
        "label_values(model_inference_requests_total, provider)"
    )
    assert variables["model"]["query"] == (
        'label_values(model_inference_requests_total{provider=~"$provider"}, model)'
    )
    for name in ("environment", "provider", "model"):
        variable = variables[name]
        assert variable["type"] == "query", name
        assert variable["multi"] is True, name
        assert variable["includeAll"] is True, name
        assert variable["allValue"] == ".*", name
        assert variable["datasource"]["uid"] == "prometheus", name


def test_dashboard_queries_filter_by_the_template_variables() -> None:
    """Every selector filters by job and $environment, and by $provider/$model where it can."""
    for title, expr in DASHBOARD_RAW_QUERIES:
        selectors = list(_SELECTOR.finditer(expr))
        assert selectors, f"{title}: no selector with label matchers in {expr}"
        # A metric named without {...} would escape the filters.
        unquoted = _STRING.sub('""', expr)
        named = {m.group() for m in _IDENTIFIER.finditer(unquoted)}
        metrics = named & (set(METRIC_LABELS) | RECORDED_METRICS | _histogram_series())
        assert metrics == {s.group("metric") for s in selectors}, f"{title}: bare metric in {expr}"
        for selector in selectors:
            metric, matchers = selector.group("metric"), selector.group("matchers")
            labels = _labels_of(metric)
            assert 'job="gatewayz-api"' in matchers, f"{title}: {metric}"
            assert 'environment=~"$environment"' in matchers, f"{title}: {metric}"
            if "provider" in labels:
                assert 'provider=~"$provider"' in matchers, f"{title}: {metric}"
            if "model" in labels:
                assert 'model=~"$model"' in matchers, f"{title}: {metric}"


def test_dashboard_queries_only_use_existing_recording_rules() -> None:
    """A recorded series on the dashboard is produced by recording_rules.yml."""
    for title, expr in DASHBOARD_RAW_QUERIES:
        for selector in _SELECTOR.finditer(expr):
            metric = selector.group("metric")
            if ":" in metric:
                assert metric in RECORDED_METRICS, f"{title}: {metric} is not recorded"


@pytest.mark.prometheus
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every dashboard query, with template variables substituted."""
    result = _check_promql([expr for _, expr in DASHBOARD_QUERIES], tmp_path)
    assert result.returncode == 0, _report(result)
    assert f"SUCCESS: {len(DASHBOARD_QUERIES)} rules found" in result.stdout, _report(result)


@pytest.mark.prometheus
def test_promql_check_rejects_the_wiki_pages_invalid_query(tmp_path: Path) -> None:
    """The syntax check has teeth: the wiki page's topk(... by (user_id)) is rejected."""
    result = _check_promql(["topk(10, increase(credits_used_total[24h]) by (user_id))"], tmp_path)
    assert result.returncode != 0, _report(result)


def test_template_variables_are_all_substituted() -> None:
    """DASHBOARD_QUERIES holds no Grafana variable; an unknown variable is an error."""
    assert len(DASHBOARD_QUERIES) == len(DASHBOARD_RAW_QUERIES) >= len(REQUIRED_PANEL_TITLES)
    for title, expr in DASHBOARD_QUERIES:
        assert not re.search(r"\$\{?\w", expr), f"{title}: {expr}"
    assert substitute_template_variables('x{a=~"$model|b$"}[$__range]') == 'x{a=~".*|b$"}[1d]'
    with pytest.raises(ValueError, match=r"\$tenant"):
        substitute_template_variables('x{tenant=~"$tenant"}')
    assert len(RECORDING_RULES) >= 10
    assert len(ALERT_RULES) == len(_alerts())
