"""The operations kit's part for the gateway-native families: the margin rules' promtool
tests catch a broken rule, and the dashboard shows fallbacks, attempts, who refused, margin,
cost and unpriced calls."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _binaries import require_binary
from promql_queries import DASHBOARD_RAW_QUERIES, PROMETHEUS_DIR, RECORDING_RULES_FILE
from test_ops_kit import _report, _run

GATEWAY_PANELS = {
    "Fallbacks by reason": ("model_fallbacks_total",),
    "Upstream attempts per request": ("gateway_request_attempts_sum", "_bucket"),
    "Who refused requests": ("gateway_rejections_total", "provider_rate_limited_total"),
    "Margin per model (1h)": ("provider_model_currency:gatewayz_margin:ratio_rate1h",),
    "Cost and billed value per hour": (
        "provider_model_currency:provider_cost:rate1h",
        "provider_model_currency:gatewayz_billed_value:rate1h",
    ),
    "Calls without a price": ("inference_unpriced_total",),
}

MUTATIONS = [
    pytest.param(
        "expr: 0.001 + 0 * max by (job, environment)",
        "expr: 0.01 + 0 * max by (job, environment)",
        id="credit-value",
    ),
    pytest.param(
        "/ (provider_model_currency:gatewayz_billed_value:rate1h > 0)",
        "/ provider_model_currency:gatewayz_billed_value:rate1h",
        id="margin-without-zero-billing-guard",
    ),
    pytest.param(
        "/ (provider_model_currency:gatewayz_billed_value:rate1h > 0)",
        "/ provider_model_currency:provider_cost:rate1h",
        id="margin-over-cost",
    ),
    pytest.param(
        "sum by (job, environment, provider, model) (rate(credits_used_total[1h]))",
        "sum by (job, environment, provider, model) (rate(credits_used_total[5m]))",
        id="credits-window",
    ),
]


def test_the_dashboard_shows_the_gateway_native_panels() -> None:
    """Each new panel is on the dashboard and queries the families it is about."""
    exprs: dict[str, list[str]] = {}
    for title, expr in DASHBOARD_RAW_QUERIES:
        exprs.setdefault(title, []).append(expr)
    for title, needles in GATEWAY_PANELS.items():
        assert title in exprs, f"missing panel {title!r}"
        text = "\n".join(exprs[title])
        for needle in needles:
            assert needle in text, (title, needle)


@pytest.mark.prometheus
@pytest.mark.parametrize(("old", "new"), MUTATIONS)
def test_the_margin_rule_tests_catch_a_broken_rule(old: str, new: str, tmp_path: Path) -> None:
    """A margin rule changed on purpose makes gateway_rules_test.yml fail."""
    promtool = require_binary("promtool")
    copy = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, copy)
    target = copy / RECORDING_RULES_FILE.name
    text = target.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"mutation no longer applies: {old!r}"
    target.write_text(text.replace(old, new), encoding="utf-8")
    assert _run(promtool, "check", "rules", target).returncode == 0, "mutant must still load"
    result = _run(promtool, "test", "rules", copy / "tests" / "gateway_rules_test.yml")
    assert result.returncode != 0, _report(result)
    assert "FAILED" in result.stdout + result.stderr, _report(result)


@pytest.mark.prometheus
def test_the_margin_rule_tests_pass() -> None:
    """promtool passes gateway_rules_test.yml on the shipped rules."""
    promtool = require_binary("promtool")
    result = _run(promtool, "test", "rules", PROMETHEUS_DIR / "tests" / "gateway_rules_test.yml")
    assert result.returncode == 0, _report(result)
