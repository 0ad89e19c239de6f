"""What the exposition tests share: the Accept header a real Prometheus sends, and the mark
of the modules that test the fast multiprocess reader."""

from __future__ import annotations

import pytest

from gatewayz_metrics import _compat

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
"""What Prometheus 2.42 and 3.x send (captured from a real Prometheus)."""

FAST_READER_ONLY = pytest.mark.skipif(
    not _compat.multiprocess_fast(),
    reason="the fast multiprocess reader serves only the prometheus-client releases it was "
    "proven on; others read through MultiProcessCollector (tests/test_compat.py)",
)
"""`pytestmark` of the modules that test the fast multiprocess reader."""
