"""The same class of fault as a recording call raising into a request, found elsewhere:
scrape-time gauge callbacks and the creation of the default instance."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gatewayz_metrics._domain import GatewayMetrics

INTERNAL = "gatewayz_metrics_internal_errors_total"
REPO = Path(__file__).resolve().parents[1]


class Unconvertible:
    """A value whose conversion to float fails with an unexpected exception type."""

    def __float__(self) -> float:
        raise RuntimeError("a lazy value whose source is gone")


def test_a_callback_value_that_cannot_convert_spares_the_scrape(
    registry: CollectorRegistry,
) -> None:
    """A callback value that raises something other than TypeError/ValueError on conversion
    drops that value only; the scrape answers and the fault is counted."""
    metrics = GatewayMetrics(registry)
    metrics.set_cache_size("kept", 5)
    values: dict[str, object] = {"rpm": 3, "broken": Unconvertible(), "huge": 10**400}
    # Deliberately not a Mapping[str, float]: what a buggy callback really returns.
    metrics.register_gauge_callback("current_rate_limit", lambda: values)  # type: ignore[arg-type,return-value]
    metrics.register_gauge_callback("queue_size", lambda: {"jobs": 3, "huge": 10**400})
    text = generate_latest(registry).decode()
    assert 'current_rate_limit{limit_type="rpm"} 3.0' in text
    assert 'queue_size{queue="jobs"} 3.0' in text
    assert 'limit_type="broken"' not in text
    assert 'limit_type="huge"' not in text
    assert 'queue="huge"' not in text
    assert 'cache_size_bytes{cache_name="kept"} 5.0' in text
    # Reading a sample collects again (and runs the callbacks): stop them first.
    metrics.clear_gauge_callback("current_rate_limit")
    metrics.clear_gauge_callback("queue_size")
    get = registry.get_sample_value
    assert get(INTERNAL, {"component": "callback:current_rate_limit"}) == 2
    assert get(INTERNAL, {"component": "callback:queue_size"}) == 1


def test_a_registered_callback_has_a_fault_series_from_the_start(
    registry: CollectorRegistry,
) -> None:
    """`internal_errors_total{component="callback:<family>"}` exists at 0 once registered."""
    metrics = GatewayMetrics(registry)
    metrics.register_gauge_callback("queue_size", lambda: {"jobs": 1})
    assert registry.get_sample_value(INTERNAL, {"component": "callback:queue_size"}) == 0


CLASH_SCRIPT = textwrap.dedent(
    """
    from prometheus_client import REGISTRY, Counter, generate_latest
    import gatewayz_metrics

    # The application already has a metric of the same name in the default registry.
    Counter("tokens_used", "the app's own", registry=REGISTRY)
    gatewayz_metrics.record_tokens_used("p", "m", 3, 4)
    with gatewayz_metrics.track_model_inference("p", "m") as call:
        call.set_usage(input_tokens=1, output_tokens=2)
    print("served")
    """
)


@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
def test_a_default_registry_clash_never_fails_a_request_in_lenient_mode(strict: bool) -> None:
    """The module-level helpers' default instance cannot register its families: lenient mode
    logs the fault and goes on; strict mode raises the clear error."""
    env = {k: v for k, v in os.environ.items() if k != "GATEWAYZ_METRICS_STRICT"}
    if strict:
        env["GATEWAYZ_METRICS_STRICT"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", CLASH_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    if strict:
        assert result.returncode != 0
        assert "cannot register its domain metrics" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "served"
        assert "cannot register its domain metrics" in result.stderr
