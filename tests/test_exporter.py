"""The separate exporter process serves every worker's metrics, exact, off the serving workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _exposition import PROMETHEUS_ACCEPT
from _servers import child_processes, free_port
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.parser import text_string_to_metric_families
from test_mpread_app import run_workers
from test_multiprocess import Server, wait_for

from gatewayz_metrics import multiprocess_registry
from gatewayz_metrics.exporter import make_server

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def exporter(tmp_path: Path) -> Iterator[str]:
    """An in-process exporter over three workers' files, with a bearer token; its base URL."""
    run_workers(tmp_path, 3)
    server = make_server(0, directory=tmp_path, bearer_token="s3cret")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host!s}:{port}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


AUTH = {"authorization": "Bearer s3cret"}


def test_the_exporter_answers_with_prometheus_clients_bytes(exporter: str, tmp_path: Path) -> None:
    """Text and OpenMetrics (gzip, Prometheus' Accept) bodies are upstream's, byte for byte."""
    text = httpx.get(f"{exporter}/metrics", headers=AUTH)
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert text.content == generate_latest(multiprocess_registry(tmp_path))
    headers = {**AUTH, "accept": PROMETHEUS_ACCEPT, "accept-encoding": "gzip"}
    om = httpx.get(f"{exporter}/metrics", headers=headers)
    assert om.status_code == 200
    assert om.headers["content-encoding"] == "gzip"
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    assert om.content == openmetrics_latest(multiprocess_registry(tmp_path))  # type: ignore[no-untyped-call]


def test_the_exporter_requires_its_token_and_serves_one_path(exporter: str) -> None:
    """No token or a wrong one: 401; another path: 404; POST: 405; HEAD: headers only."""
    assert httpx.get(f"{exporter}/metrics").status_code == 401
    wrong = httpx.get(f"{exporter}/metrics", headers={"authorization": "Bearer s3cre"})
    assert wrong.status_code == 401
    assert httpx.get(f"{exporter}/other", headers=AUTH).status_code == 404
    assert httpx.post(f"{exporter}/metrics", headers=AUTH).status_code == 405
    head = httpx.head(f"{exporter}/metrics", headers=AUTH)
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) > 0


def test_the_exporter_filters_by_name(exporter: str, tmp_path: Path) -> None:
    """`name[]` keeps exactly the samples of those names, with upstream's values."""
    response = httpx.get(f"{exporter}/metrics?name[]=jobs_total&name[]=queue", headers=AUTH)
    assert response.status_code == 200
    served = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    everything = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in multiprocess_registry(tmp_path).collect()
        for s in family.samples
    }
    expected = {
        key: value for key, value in everything.items() if key[0] in ("jobs_total", "queue")
    }
    assert served == expected
    assert len(expected) == 7 + 5


GUNICORN_CONF = textwrap.dedent(
    """
    from gatewayz_metrics import check_multiproc_dir, gunicorn_child_exit
    from gatewayz_metrics.exporter import start_exporter

    worker_class = "uvicorn_worker.UvicornWorker"
    workers = 3

    def on_starting(server):
        check_multiproc_dir(clean_stale=True)

    def when_ready(server):
        start_exporter(port={port})

    child_exit = gunicorn_child_exit
    """
)


@pytest.mark.slow
def test_gunicorn_workers_are_scraped_through_the_exporter_exactly(tmp_path: Path) -> None:
    """gunicorn + 3 uvicorn workers, exporter started in when_ready: exact, and it exits too."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    port, exporter_port = free_port(), free_port()
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(GUNICORN_CONF.format(port=exporter_port))
    argv = [
        sys.executable, "-m", "gunicorn", "-c", str(conf),
        "examples.multiprocess.app:app", "-b", f"127.0.0.1:{port}",
    ]  # fmt: skip
    server = Server(argv, directory, port, tmp_path / "gunicorn.log")
    try:
        server.wait_ready(3)
        exporter_url = f"http://127.0.0.1:{exporter_port}/metrics"

        def exporter_up() -> bool:
            try:
                return httpx.get(exporter_url).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(exporter_up, "the exporter")
        answered = server.requests(60)
        time.sleep(0.2)  # a response is on the wire a few microseconds before its count
        body = httpx.get(exporter_url).content
        assert body == generate_latest(multiprocess_registry(directory))
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }
        completions = sum(
            value
            for (name, labels), value in samples.items()
            if name == "http_requests_total" and ("endpoint", "/v1/completions") in labels
        )
        assert completions == len(answered) == 60
        assert _exporter_pids(server.process.pid), "the exporter is not a child of the arbiter"
        # The arbiter stops: the exporter it started follows it.
        os.kill(server.process.pid, signal.SIGTERM)
        server.process.wait(timeout=30)
        wait_for(lambda: not exporter_up(), "the exporter to exit with the arbiter", timeout=10)
    finally:
        server.stop()


def _exporter_pids(parent: int) -> list[int]:
    """Children of `parent` running the exporter module."""
    children = child_processes(parent)
    return [pid for pid, _, cmdline in children if b"gatewayz_metrics.exporter" in cmdline]


def test_the_exporter_refuses_to_start_without_a_directory(tmp_path: Path) -> None:
    """`python -m gatewayz_metrics.exporter` with no directory: exit 2, naming the variable."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "gatewayz_metrics.exporter", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "PROMETHEUS_MULTIPROC_DIR is not set" in done.stderr
    missing = tmp_path / "missing"
    done = subprocess.run(
        [sys.executable, "-m", "gatewayz_metrics.exporter", "--directory", str(missing)],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert str(missing) in done.stderr


def test_the_exporter_never_retires_workers(tmp_path: Path) -> None:
    """Even with a file of its own in the directory, the exporter retires no worker."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    for pid in (os.getpid(), 10_000_000):  # the exporter's own file; a worker it cannot see
        db = MmapedDict(str(tmp_path / f"gauge_livesum_{pid}.db"))  # type: ignore[no-untyped-call]
        db.write_value(mmap_key("g", "g", [], [], "G."), 1.0, 0.0)  # type: ignore[no-untyped-call]
        db.close()  # type: ignore[no-untyped-call]
    server = make_server(0, directory=tmp_path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        response = httpx.get(f"http://{host!s}:{port}/metrics")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert b"g 2.0\n" in response.content
    assert (tmp_path / "gauge_livesum_10000000.db").exists()
