"""MetricsApp serves multiprocess mode through the fast reader, with upstream's bytes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from _exposition import FAST_READER_ONLY, PROMETHEUS_ACCEPT
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount

from gatewayz_metrics import MetricsApp, PrometheusMiddleware, multiprocess_registry

pytestmark = FAST_READER_ONLY

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKER = textwrap.dedent(
    """
    import sys
    from prometheus_client import Counter, Gauge, Histogram, Summary
    step = int(sys.argv[1])
    c = Counter("jobs", "Jobs.", ["kind"])
    h = Histogram("latency_seconds", "Latency.", ["kind"])
    s = Summary("size_bytes", "Size.")
    g = Gauge("queue", "Queue.", ["q"], multiprocess_mode="livesum")
    m = Gauge("balance", "Balance.", ["user"], multiprocess_mode="mostrecent")
    a = Gauge("temperature", "Per worker.", multiprocess_mode="all")
    for i in range(50):
        c.labels(f"k{i % 7}").inc(step + 1)
        h.labels(f"k{i % 3}").observe(0.01 * i * (step + 1))
        s.observe(i)
        g.labels(f"q{i % 5}").inc()
        m.labels(f"u{i % 4}").set(step * 100 + i)
    a.set(step)
    """
)


def run_workers(directory: Path, count: int) -> None:
    """`count` worker processes record into `directory`, one after the other."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    for step in range(count):
        subprocess.run(
            [sys.executable, "-c", WORKER, str(step)], env=env, check=True, timeout=60,
            cwd=REPO_ROOT,
        )  # fmt: skip


@pytest.mark.parametrize("accept", ["", PROMETHEUS_ACCEPT], ids=["text", "prometheus"])
async def test_multiprocess_scrapes_use_the_fast_reader_and_match_prometheus_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, accept: str
) -> None:
    """A mounted MetricsApp in multiprocess mode answers, gzip or not, with upstream's bytes."""
    run_workers(tmp_path, 3)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    metrics = MetricsApp()
    app = Starlette(
        routes=[Mount("/metrics", metrics)],
        middleware=[Middleware(PrometheusMiddleware, registry=CollectorRegistry())],
    )
    encoder = openmetrics_latest if accept else generate_latest
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for encoding in ("identity", "gzip"):
            response = await client.get(
                "/metrics/", headers={"accept": accept, "accept-encoding": encoding}
            )
            assert response.status_code == 200
            expected_encoding = "gzip" if encoding == "gzip" else None
            assert response.headers.get("content-encoding") == expected_encoding
            body = response.content  # httpx undoes the gzip
            assert body == encoder(multiprocess_registry(tmp_path))
    reader = metrics._mp_reader
    assert reader is not None
    assert reader.fast_reads == 2
