"""`gatewayz-metrics inspect`: series, caps, self-metrics and secrets of one endpoint."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _servers import free_port, start_logged, stop, uvicorn_thread, wait_serving
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from gatewayz_metrics import GatewayMetrics, PrometheusMiddleware
from gatewayz_metrics._inspect import _progress_line, main

ROOT = Path(__file__).resolve().parent.parent
LEAKED = [
    "sk-proj-Zq8XbT2vLm9KcR4wYp7N",
    "ghp_a1B2c3D4e5F6g7H8i9J0kLmN",
    "AKIAIOSFODNN7EXAMPLEKEY",
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b",
]


def run(*argv: str) -> tuple[int, str]:
    """Run the inspector in-process; return its exit code and standard output."""
    out = io.StringIO()
    code = main(list(argv), stdout=out)
    return code, out.getvalue()


def hostile_exposition(path: Path, *, openmetrics: bool = False) -> Path:
    """A registry written with bare prometheus_client, as a careless app would: keys in a
    label, terminal escapes, 950 models against a cap of 200, an overflow value."""
    registry = CollectorRegistry()
    credits = Counter("credits_used", "Credits.", ["user_id"], registry=registry)
    for key in LEAKED:
        credits.labels(key).inc()
    credits.labels("user-42").inc(3)
    credits.labels("\x1b[31mred\nline").inc()
    models = Gauge("model_seen", "Models.", ["model"], registry=registry)
    for i in range(950):
        models.labels(f"model-{i}").set(i)
    overflow = Counter("api_key_usage", "Usage.", ["api_key_id"], registry=registry)
    overflow.labels("__other__").inc(7)
    encode = generate_openmetrics if openmetrics else generate_latest
    path.write_bytes(encode(registry))
    return path


def test_a_hostile_registry_is_reported_without_echoing_its_secrets(tmp_path: Path) -> None:
    """Secret-looking values are counted per metric and label, never printed."""
    code, out = run("inspect", str(hostile_exposition(tmp_path / "m.txt")))
    assert code == 0
    assert "SECRET credits_used_total{user_id}: 4 value(s)" in out
    for key in LEAKED:
        assert key not in out
        assert key[:12] not in out
    assert "user-42" in out  # an ordinary value is shown
    assert "\x1b" not in out  # a terminal escape in a label value is shown escaped
    assert "CAP model_seen{model}: 950 values, over the default cap of 200" in out
    assert "CAP api_key_usage_total{api_key_id}: reached its cap" in out


def test_fail_on_secret_exits_non_zero_and_json_names_metric_and_label(tmp_path: Path) -> None:
    """`--fail-on-secret` turns a leaked credential into exit 1; `--json` keeps it hidden."""
    path = hostile_exposition(tmp_path / "m.txt")
    code, out = run("inspect", str(path), "--fail-on-secret", "--json")
    assert code == 1
    report = json.loads(out)
    assert report["secrets"] == [{"metric": "credits_used_total", "label": "user_id", "values": 4}]
    assert not any(key in out for key in LEAKED)
    assert report["failures"] == ["label values that look like credentials (--fail-on-secret)"]
    families = {f["name"]: f for f in report["families"]}
    assert families["model_seen"]["series"] == 950
    assert families["credits_used_total"]["labels"][0]["values"] == 6


def test_near_cap_uses_the_caps_the_application_sets(tmp_path: Path) -> None:
    """A label is reported near its cap from 90% of it; `--cap` gives the app's own cap."""
    path = hostile_exposition(tmp_path / "m.txt")
    _, out = run("inspect", str(path), "--json")
    near = {(n["metric"], n["label"]): n for n in json.loads(out)["near_cap"]}
    assert near[("model_seen", "model")]["cap"] == 200
    _, out = run("inspect", str(path), "--json", "--cap", "model=1000")
    flagged = {(n["metric"], n["label"]) for n in json.loads(out)["near_cap"]}
    assert ("model_seen", "model") in flagged  # 950 of 1000
    _, out = run("inspect", str(path), "--json", "--cap", "model=2000")
    flagged = {(n["metric"], n["label"]) for n in json.loads(out)["near_cap"]}
    assert ("model_seen", "model") not in flagged


def test_max_series_is_a_ci_gate(tmp_path: Path) -> None:
    """More series than `--max-series` exits 1; at or under it exits 0."""
    path = hostile_exposition(tmp_path / "m.txt")
    _, out = run("inspect", str(path), "--json")
    series = json.loads(out)["series"]
    assert run("inspect", str(path), "--max-series", str(series))[0] == 0
    code, out = run("inspect", str(path), "--max-series", str(series - 1))
    assert code == 1
    assert f"FAIL {series:,} series, more than --max-series" in out


def test_openmetrics_and_gzip_files_are_read(tmp_path: Path) -> None:
    """A saved OpenMetrics exposition (gzip-compressed or not) gives the same series."""
    import gzip

    text_path = hostile_exposition(tmp_path / "m.txt")
    om_path = hostile_exposition(tmp_path / "m.om", openmetrics=True)
    gz_path = tmp_path / "m.om.gz"
    gz_path.write_bytes(gzip.compress(om_path.read_bytes()))
    series = {
        p.name: {
            f["name"]: f["series"]
            for f in json.loads(run("inspect", str(p), "--json")[1])["families"]
        }
        for p in (text_path, om_path, gz_path)
    }
    assert series["m.om"] == series["m.om.gz"]
    # OpenMetrics adds _created samples to counters; every other family is the same.
    assert series["m.om"]["model_seen"] == series["m.txt"]["model_seen"] == 950


def test_unreadable_input_is_exit_2_with_a_reason(tmp_path: Path) -> None:
    """A missing file, a non-exposition and a refused connection exit 2 and say why."""
    garbage = tmp_path / "g.txt"
    garbage.write_text("this is { not an exposition\n")
    for source in (str(tmp_path / "missing"), str(garbage), f"http://127.0.0.1:{free_port()}/m"):
        assert run("inspect", source)[0] == 2


@pytest.fixture
def protected() -> Iterator[str]:
    """A Starlette app with token-protected /metrics and leaked-looking traffic, on uvicorn."""
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)

    async def chat(request: object) -> PlainTextResponse:
        # The source document's pattern: the API key as user_id. The package fingerprints it.
        metrics.record_credits_used("openai", "gpt-4o", LEAKED[0], 1.5)
        metrics.record_tokens_used("openai", "gpt-4o", 10, 20)
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/v1/chat", chat, methods=["POST"])])
    app.add_middleware(PrometheusMiddleware, registry=registry, bearer_token="s3cret-token")
    with uvicorn_thread(app, log_level="critical") as base:
        for _ in range(3):
            httpx.post(f"{base}/v1/chat")
        yield f"{base}/metrics"


@pytest.mark.slow
def test_a_token_protected_endpoint_needs_the_token(
    protected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No token: exit 2 naming the fix. `--token` or the environment variable: a report."""
    monkeypatch.delenv("GATEWAYZ_METRICS_BEARER_TOKEN", raising=False)
    assert run("inspect", protected)[0] == 2
    assert run("inspect", protected, "--token", "wrong")[0] == 2
    code, out = run("inspect", protected, "--token", "s3cret-token", "--fail-on-secret", "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["wire_bytes"] < report["bytes"]  # gzip asked for, as Prometheus does
    families = {f["name"]: f for f in report["families"]}
    # One POST series, and its `_created` gauge, which a text-format scrape stores too.
    assert families["http_requests_total"]["series"] == 2
    assert families["credits_used_total"]["labels"][-1]["name"] == "user_id"
    assert report["secrets"] == []
    assert "gatewayz_metrics_label_overflow_total" in report["self_metrics"]
    monkeypatch.setenv("GATEWAYZ_METRICS_BEARER_TOKEN", "s3cret-token\n")
    assert run("inspect", protected)[0] == 0


@pytest.mark.slow
def test_the_demo_gateway_is_clean_under_the_console_script(tmp_path: Path) -> None:
    """The demo under uvicorn, traffic on: the console script reports no secret, exit 0."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("GATEWAYZ_METRICS_BEARER_TOKEN", None)
    log = tmp_path / "demo.log"
    command = [sys.executable, "-m", "examples.gateway", "--port", str(port)]
    demo = start_logged([*command, "--log-level", "warning"], log, cwd=ROOT, env=env)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        wait_serving(url, demo, log, timeout=30)
        deadline = time.monotonic() + 30
        while "model_inference_requests_total" not in httpx.get(url).text:
            assert time.monotonic() < deadline, "the demo's traffic recorded no inference"
            time.sleep(0.5)
        script = Path(sys.executable).with_name("gatewayz-metrics")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "gatewayz_metrics"]
        done = subprocess.run(
            [*command, "inspect", url, "--fail-on-secret", "--max-series", "20000"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        stop(demo)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK no label value looks like a credential" in done.stdout
    assert "http_request_duration_seconds" in done.stdout
    assert "gatewayz_metrics_internal_errors_total: 0" in done.stdout


MULTIPROCESS_APP = """
from prometheus_client import Counter
from gatewayz_metrics import MetricsApp
hits = Counter("worker_hits", "Hits per worker.", ["route"])
async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/hit":
        hits.labels("/hit").inc()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await metrics(scope, receive, send)
metrics = MetricsApp()
"""


@pytest.mark.slow
def test_a_multiprocess_endpoint_sums_the_workers(tmp_path: Path) -> None:
    """uvicorn --workers 2 in multiprocess mode: one series however many workers wrote it."""
    (tmp_path / "mp_app.py").write_text(MULTIPROCESS_APP)
    multiproc = tmp_path / "multiproc"
    multiproc.mkdir()
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    log = tmp_path / "uvicorn.log"
    command = [sys.executable, "-m", "uvicorn", "mp_app:app", "--port", str(port)]
    server = start_logged([*command, "--workers", "2"], log, cwd=tmp_path, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_serving(f"{base}/metrics", server, log, timeout=30)
        for _ in range(40):
            with httpx.Client() as client:  # new connections spread over the workers
                client.get(f"{base}/hit")
        code, out = run("inspect", f"{base}/metrics", "--json")
    finally:
        stop(server, timeout=15)
    assert code == 0, out
    assert len(list(multiproc.glob("counter_*.db"))) >= 1
    families = {f["name"]: f for f in json.loads(out)["families"]}
    assert families["worker_hits_total"]["series"] == 1


def test_the_progress_line_appears_only_for_slow_scrapes() -> None:
    """Nothing for a quick scrape; a carriage-return line once half a second has passed."""
    stream = io.StringIO()
    show = _progress_line(stream)
    show(1000, 0.1)
    assert stream.getvalue() == ""
    show(2_500_000, 0.75)
    assert stream.getvalue() == "\rscraping... 2.5 MB in 0.8 s"
