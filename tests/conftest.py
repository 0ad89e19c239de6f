"""Shared fixtures: every test gets its own registry, never the global one."""

from __future__ import annotations

import importlib.util
import os
import sysconfig
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

# The project's own tests record strictly: an invalid value is a bug to see, not a drop to
# count. Set before any test runs, so the default instance follows it too. Tests of the
# lenient mode remove it with `monkeypatch.delenv`.
os.environ["GATEWAYZ_METRICS_STRICT"] = "1"


def pytest_sessionstart(session: pytest.Session) -> None:
    """With GATEWAYZ_EXPECT_INSTALLED set (CI's wheel check), refuse to run unless the package
    under test is the installed one: a source tree on sys.path would test the wrong code."""
    if not os.environ.get("GATEWAYZ_EXPECT_INSTALLED"):
        return
    # find_spec locates the package without importing it (tests of import-time behaviour
    # must find it not yet imported).
    spec = importlib.util.find_spec("gatewayz_metrics")
    if spec is None or spec.origin is None:
        raise pytest.UsageError("gatewayz_metrics is not installed")
    where = Path(spec.origin).resolve()
    site_packages = Path(sysconfig.get_paths()["purelib"]).resolve()
    if not where.is_relative_to(site_packages):
        raise pytest.UsageError(
            f"gatewayz_metrics was imported from {where}, not from {site_packages}"
        )


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh registry, so tests never fight over prometheus_client's global one."""
    return CollectorRegistry(auto_describe=True)
