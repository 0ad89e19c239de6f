"""Shared fixtures: every test gets its own registry, never the global one."""

from __future__ import annotations

import os

import pytest
from prometheus_client import CollectorRegistry

# The project's own tests record strictly: an invalid value is a bug to see, not a drop to
# count. Set before any test runs, so the default instance follows it too. Tests of the
# lenient mode remove it with `monkeypatch.delenv`.
os.environ["GATEWAYZ_METRICS_STRICT"] = "1"


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh registry, so tests never fight over prometheus_client's global one."""
    return CollectorRegistry(auto_describe=True)
