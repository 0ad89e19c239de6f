"""The exporter process follows MetricsApp's rules: one token rule, one Accept negotiation."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from _servers import free_port, stop
from test_mpread_app import run_workers

from gatewayz_metrics.exporter import make_server, start_exporter

TOKEN_ENV = "GATEWAYZ_METRICS_BEARER_TOKEN"
TOKEN_FILE_ENV = "GATEWAYZ_METRICS_BEARER_TOKEN_FILE"


@pytest.fixture
def workers_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory one real worker process recorded into; no token in the environment."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    directory = tmp_path / "mp"
    directory.mkdir()
    run_workers(directory, 1)
    return directory


@contextmanager
def serving(directory: Path, bearer_token: str | None = None) -> Iterator[str]:
    """An in-process exporter over `directory`; its base URL."""
    server = make_server(0, directory=directory, bearer_token=bearer_token)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_exporter_applies_the_token_file(
    workers_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GATEWAYZ_METRICS_BEARER_TOKEN_FILE protects the exporter, its newline stripped."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    monkeypatch.setenv(TOKEN_FILE_ENV, str(token_file))
    with serving(workers_dir) as base:
        refused = httpx.get(f"{base}/metrics")
        allowed = httpx.get(f"{base}/metrics", headers={"authorization": "Bearer s3cret"})
    assert refused.status_code == 401
    assert allowed.status_code == 200
    assert "jobs_total" in allowed.text


def test_the_exporter_strips_the_token_from_the_environment(
    workers_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token with a trailing newline (from a secret) authorizes the scraper, as in MetricsApp."""
    monkeypatch.setenv(TOKEN_ENV, "s3cret\n")
    with serving(workers_dir) as base:
        response = httpx.get(f"{base}/metrics", headers={"authorization": "Bearer s3cret"})
    assert response.status_code == 200


@pytest.mark.parametrize("token", ["", "  \n"], ids=["empty", "blank"])
def test_the_exporter_refuses_an_empty_token(workers_dir: Path, token: str) -> None:
    """`make_server(bearer_token="")` raises instead of serving with a credential of nothing."""
    with pytest.raises(ValueError, match="bearer_token must not be empty"):
        make_server(0, directory=workers_dir, bearer_token=token)
    with pytest.raises(ValueError, match="bearer_token must not be empty"):
        start_exporter(0, directory=workers_dir, bearer_token=token)


def test_start_exporter_passes_its_token_through_the_environment(workers_dir: Path) -> None:
    """`start_exporter(bearer_token=...)` protects the child; the token is not on its argv."""
    port = free_port()
    child = start_exporter(port, directory=workers_dir, bearer_token="s3cret\n")
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 30
        refused: httpx.Response | None = None
        while refused is None:
            assert child.poll() is None, f"the exporter exited with {child.returncode}"
            assert time.monotonic() < deadline, "the exporter did not start within 30 s"
            try:
                refused = httpx.get(url, timeout=1.0)
            except httpx.TransportError:
                time.sleep(0.05)
        allowed = httpx.get(url, headers={"authorization": "Bearer s3cret"})
        cmdline = Path(f"/proc/{child.pid}/cmdline").read_bytes()
    finally:
        stop(child)
    assert refused.status_code == 401
    assert allowed.status_code == 200
    assert b"s3cret" not in cmdline


@pytest.mark.parametrize(
    "accept",
    ["text/plain; version=abc", "application/openmetrics-text; version=1.x"],
    ids=["text", "openmetrics"],
)
def test_the_exporter_answers_a_malformed_accept(workers_dir: Path, accept: str) -> None:
    """A malformed `Accept` gets the text format (as MetricsApp), not a dropped connection;
    a release that parses no versions (< 0.23) takes it as valid, and its choice is kept."""
    from prometheus_client.exposition import choose_encoder

    try:
        expected = choose_encoder(accept)[1].split(";")[0]
    except Exception:
        expected = "text/plain"
    with serving(workers_dir) as base:
        response = httpx.get(f"{base}/metrics", headers={"accept": accept})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(expected)
    assert "jobs_total" in response.text


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_every_negotiated_answer_of_the_exporter_varies(workers_dir: Path, encoding: str) -> None:
    """`Vary: Accept, Accept-Encoding` on every answer that depends on them, gzip or not."""
    with serving(workers_dir) as base:
        response = httpx.get(f"{base}/metrics", headers={"accept-encoding": encoding})
    assert response.status_code == 200
    assert response.headers["vary"] == "Accept, Accept-Encoding"


def test_a_failing_scrape_is_logged_once_per_kind(
    workers_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A directory that breaks every scrape: each one a 500, one log line for all of them."""
    with serving(workers_dir) as base:
        # The directory vanishes under the exporter (a volume unmounted): every read fails.
        for entry in workers_dir.iterdir():
            entry.unlink()
        workers_dir.rmdir()
        (workers_dir.parent / "mp").write_text("not a directory")
        with caplog.at_level(logging.ERROR, logger="gatewayz_metrics"):
            answers = [httpx.get(f"{base}/metrics") for _ in range(3)]
    assert [answer.status_code for answer in answers] == [500, 500, 500]
    assert answers[0].headers["vary"] == "Accept, Accept-Encoding"
    logged = [record for record in caplog.records if "exporter" in record.getMessage()]
    assert len(logged) == 1, [record.getMessage() for record in caplog.records]
    assert os.path.isfile(workers_dir)
