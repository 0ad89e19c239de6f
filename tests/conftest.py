"""Shared fixtures: every test gets its own registry, never the global one."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh registry, so tests never fight over prometheus_client's global one."""
    return CollectorRegistry(auto_describe=True)
