"""`gatewayz-metrics inspect` applies the package's own rules: its caps and its token rule."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from _servers import uvicorn_thread
from prometheus_client import CollectorRegistry, Counter, generate_latest

from gatewayz_metrics import DEFAULT_LABEL_CAPS, MetricsApp
from gatewayz_metrics._exposition import BEARER_TOKEN_ENV, BEARER_TOKEN_FILE_ENV
from gatewayz_metrics._gateway import MAX_CURRENCIES
from gatewayz_metrics._http import DEFAULT_MAX_ENDPOINTS
from gatewayz_metrics._inspect import main


def run(*argv: str) -> tuple[int, str]:
    """Run the inspector in-process; return its exit code and standard output."""
    out = io.StringIO()
    code = main(list(argv), stdout=out)
    return code, out.getvalue()


def test_every_bounded_label_of_the_package_has_its_default_cap(tmp_path: Path) -> None:
    """Fallback models, currencies and endpoints near the package's caps are reported so."""
    registry = CollectorRegistry()
    model_cap = DEFAULT_LABEL_CAPS["model"]
    fallbacks = Counter("model_fallbacks", "F.", ["from_model", "to_model"], registry=registry)
    for i in range(model_cap - 1):
        fallbacks.labels(f"m{i}", f"n{i}").inc()
    cost = Counter("provider_cost", "C.", ["currency"], registry=registry)
    for i in range(MAX_CURRENCIES - 1):
        cost.labels(f"C{i:02d}").inc()
    requests = Counter("http_requests", "R.", ["endpoint"], registry=registry)
    for i in range(DEFAULT_MAX_ENDPOINTS - 1):
        requests.labels(f"/e{i}").inc()
    path = tmp_path / "m.txt"
    path.write_bytes(generate_latest(registry))
    code, out = run("inspect", str(path), "--json")
    assert code == 0, out
    near = {(n["metric"], n["label"]): n["cap"] for n in json.loads(out)["near_cap"]}
    assert near == {
        ("model_fallbacks_total", "from_model"): model_cap,
        ("model_fallbacks_total", "to_model"): model_cap,
        ("provider_cost_total", "currency"): MAX_CURRENCIES,
        ("http_requests_total", "endpoint"): DEFAULT_MAX_ENDPOINTS,
    }


@pytest.fixture
def protected() -> Iterator[str]:
    """A token-protected MetricsApp on a real uvicorn; its URL."""
    registry = CollectorRegistry()
    Counter("jobs", "J.", registry=registry).inc()
    with uvicorn_thread(MetricsApp(registry, bearer_token="s3cret"), log_level="critical") as base:
        yield f"{base}/"


def test_the_inspector_reads_the_token_file_as_metrics_app_does(
    protected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GATEWAYZ_METRICS_BEARER_TOKEN_FILE (with its newline) gives the inspector the token."""
    monkeypatch.delenv(BEARER_TOKEN_ENV, raising=False)
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    monkeypatch.setenv(BEARER_TOKEN_FILE_ENV, str(token_file))
    code, out = run("inspect", protected, "--json")
    assert code == 0, out
    assert "jobs_total" in {family["name"] for family in json.loads(out)["families"]}


def test_the_inspector_names_a_token_file_it_cannot_read(
    protected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An unreadable token file: exit 2 with MetricsApp's message, not a traceback."""
    monkeypatch.delenv(BEARER_TOKEN_ENV, raising=False)
    monkeypatch.setenv(BEARER_TOKEN_FILE_ENV, str(tmp_path / "missing"))
    assert run("inspect", protected)[0] == 2
    assert f"{BEARER_TOKEN_FILE_ENV}: cannot read" in capsys.readouterr().err
