"""Self-observation: every fault component is known in advance, and counted where it belongs."""

from __future__ import annotations

import ast
import os
import struct
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from test_multiprocess_retire import run_workers

import gatewayz_metrics
from gatewayz_metrics._internal import KNOWN_COMPONENTS
from gatewayz_metrics._mpread import FastMultiProcessReader

PACKAGE = Path(gatewayz_metrics.__file__).resolve().parent  # the code under test (wheel too)
INTERNAL = "gatewayz_metrics_internal_errors_total"


def reported_components() -> set[str]:
    """Every literal component the package passes to `report_internal_error` or names as a
    tracker's `_component`; f-strings (per-callback components) are left out."""
    found: set[str] = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) == "report_internal_error"
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
            ):
                found.add(str(node.args[1].value))
            if isinstance(node, ast.Assign) and any(
                getattr(target, "id", None) == "_component" for target in node.targets
            ):
                assert isinstance(node.value, ast.Constant)
                found.add(str(node.value.value))
    found.discard("tracker")  # the abstract base tracker's placeholder, never instantiated
    return found


def test_every_reported_component_is_known_in_advance() -> None:
    """Each component string in the package's source has its series at 0 from the start."""
    reported = reported_components()
    assert len(reported) >= 15  # the grep itself works
    assert reported - set(KNOWN_COMPONENTS) == set()


def test_known_components_name_nothing_the_package_never_reports() -> None:
    """No stale entry: every known component is reported somewhere in the package."""
    assert set(KNOWN_COMPONENTS) - reported_components() == set()


def test_a_retire_fault_is_counted_in_the_serving_apps_registry(tmp_path: Path) -> None:
    """An unreadable dead worker's file, met by a reader on the app's registry, is counted
    there (the registry that app's scrape serves), not in the global REGISTRY."""
    run_workers(tmp_path, 2, modes=("sum",))
    victim, other = sorted(tmp_path.glob("counter_*.db"))
    # The reader's own process writes to the directory: it retires workers that are gone.
    (tmp_path / f"counter_{os.getpid()}.db").write_bytes(other.read_bytes())
    data = victim.read_bytes()
    victim.write_bytes(struct.pack("i", len(data) * 4) + data[4:16])  # cut short
    labels = {"component": "multiprocess.unreadable"}
    global_before = REGISTRY.get_sample_value(INTERNAL, labels) or 0.0
    app_registry = CollectorRegistry()
    reader = FastMultiProcessReader(tmp_path, registry=app_registry)
    body = reader.render(generate_latest)
    assert b"c_total" in body
    assert (tmp_path / f"{victim.name}.unreadable").exists()
    assert app_registry.get_sample_value(INTERNAL, labels) == 1.0
    assert (REGISTRY.get_sample_value(INTERNAL, labels) or 0.0) == global_before
