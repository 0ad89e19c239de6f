"""Several workers on one host: prometheus_client's multiprocess mode under real servers.

The directory checks and the retiring of dead workers are tested on files written by real
short-lived processes; the promise itself (every scrape's sum is exact, a killed worker loses
no count and leaves no in-progress gauge) is tested on `uvicorn --workers 3` and on
`gunicorn -k uvicorn_worker.UvicornWorker -w 3`, on 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from _servers import child_processes, free_port, kill_session, start_logged
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from gatewayz_metrics import (
    check_multiproc_dir,
    gunicorn_child_exit,
    mark_dead_workers,
    multiprocess_registry,
    retire_worker,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
APP = "examples.multiprocess.app:app"
GUNICORN_CONF = REPO_ROOT / "examples" / "multiprocess" / "gunicorn.conf.py"
INPUT_TOKENS = 3  # examples/multiprocess/app.py counts 3 input tokens per completion
WORKERS = 3
START_TIMEOUT = 30.0
LIVE_FAMILIES = {"http_requests_in_progress", "queue_size"}  # the livesum gauges WORKER sets

# A worker: records what the package records, in the directory it is given, then exits.
WORKER = textwrap.dedent(
    """
    import sys
    from prometheus_client import REGISTRY
    from gatewayz_metrics import GatewayMetrics
    from gatewayz_metrics._http import HTTPMetrics

    step = int(sys.argv[1])
    http = HTTPMetrics.for_registry(REGISTRY)
    http.request_counter("GET", "/v1/completions", "200").inc(step + 1)
    http.bound("GET", "/v1/completions").duration.observe(0.02 * (step + 1))
    http.in_progress_gauge("GET").inc(1)  # it dies in the middle of a request
    metrics = GatewayMetrics()
    metrics.record_tokens_used("openai", "gpt-4o", 10 * (step + 1), 1)
    metrics.set_queue_size("inference", 2)
    metrics.set_provider_health("openai", available=bool(step % 2))
    """
)


# --- helpers -------------------------------------------------------------------------


def run_worker(directory: Path, step: int, *code: str) -> None:
    """Run one short-lived worker process writing to `directory`."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    script = "\n".join((WORKER, *code))
    subprocess.run(
        [sys.executable, "-c", script, str(step)], env=env, check=True, timeout=60, cwd=REPO_ROOT
    )


def merged(directory: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample prometheus_client's own collector merges from `directory`."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return parse(generate_latest(registry).decode())


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value of an exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str) -> float:
    """The sum of every sample called `name`."""
    return sum(value for (sample, _), value in samples.items() if sample == name)


def children(pid: int) -> set[int]:
    """The worker processes of the server `pid` (multiprocessing's helper excluded)."""
    return {
        child
        for child, state, cmdline in child_processes(pid)
        if state != b"Z" and b"resource_tracker" not in cmdline
    }


def wait_for(condition: Callable[[], bool], what: str, timeout: float = START_TIMEOUT) -> None:
    """Poll `condition` until it holds, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


class Server:
    """A multi-worker server started in its own session, killed with it at the end."""

    def __init__(self, argv: list[str], directory: Path, port: int, log: Path) -> None:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": "."}
        self.directory = directory
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.process = start_logged(argv, log, cwd=REPO_ROOT, env=env, new_session=True)
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def stop(self) -> None:
        """Kill the server and every worker of its session."""
        self.client.close()
        kill_session(self.process)

    def output(self) -> str:
        """What the server logged, for failure messages."""
        return self.log.read_text(errors="replace")[-4000:]

    def workers(self) -> set[int]:
        """The pids of the live workers."""
        return children(self.process.pid)

    def wait_ready(self, count: int) -> None:
        """Wait for `count` workers and an answered scrape."""

        def ready() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"the server exited:\n{self.output()}")
            if len(self.workers()) < count:
                return False
            try:
                return self.client.get("/metrics").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, f"{count} workers at {self.url}")

    def requests(self, count: int) -> list[int]:
        """Send `count` concurrent requests, each on a new connection; the pids that answered."""

        def one(_: int) -> int:
            # A new connection per request: a kept-alive one would stay with one worker.
            response = httpx.get(f"{self.url}/v1/completions", timeout=10)
            response.raise_for_status()
            return int(response.headers["x-worker-pid"])

        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, range(count)))

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """One scrape of /metrics, on a new connection (so any worker may answer it)."""
        response = httpx.get(f"{self.url}/metrics", timeout=10)
        response.raise_for_status()
        return parse(response.text)


StartServer = Callable[[list[str], Path, int], Server]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Start servers that are killed, with all their workers, when the test ends."""
    started: list[Server] = []

    def start(argv: list[str], directory: Path, port: int) -> Server:
        server = Server(argv, directory, port, tmp_path / f"server{len(started)}.log")
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# --- the directory at start-up ---------------------------------------------------------


def test_check_requires_the_variable_or_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without PROMETHEUS_MULTIPROC_DIR and without a path, the check says what to set."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    with pytest.raises(ValueError, match="PROMETHEUS_MULTIPROC_DIR is not set"):
        check_multiproc_dir()


def test_check_names_a_missing_directory(tmp_path: Path) -> None:
    """A directory that does not exist is named in the error, with what to do."""
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=rf"'{missing}' does not exist: create it"):
        check_multiproc_dir(missing)


def test_check_refuses_a_file(tmp_path: Path) -> None:
    """A path that is a file is not a directory."""
    file = tmp_path / "file"
    file.write_text("")
    with pytest.raises(ValueError, match="is not a directory"):
        check_multiproc_dir(file)


def test_check_refuses_a_directory_it_cannot_write(tmp_path: Path) -> None:
    """A directory where no file can be created is named as not writable."""
    directory = tmp_path / "read-only"
    directory.mkdir(mode=0o500)
    if os.access(directory, os.W_OK):  # root writes anywhere: use a kernel directory
        directory = Path("/sys/kernel")
        if not directory.is_dir():
            pytest.skip("running as root and no /sys/kernel to stand for a read-only directory")
    with pytest.raises(ValueError, match=rf"'{directory}' is not writable"):
        check_multiproc_dir(directory)


def test_check_refuses_a_path_other_than_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checking a directory other than the one the workers write to is an error."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "workers"))
    with pytest.raises(ValueError, match="is not the one the workers write to"):
        check_multiproc_dir(tmp_path)


@pytest.mark.slow
def test_check_detects_prometheus_client_imported_too_early(tmp_path: Path) -> None:
    """Setting the variable after prometheus_client was imported is caught, not silent."""
    script = textwrap.dedent(
        f"""
        import os
        import prometheus_client
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = {str(tmp_path)!r}
        from gatewayz_metrics import check_multiproc_dir
        check_multiproc_dir()
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "prometheus_client was imported in this process before it was set" in result.stderr


@pytest.mark.slow
def test_check_refuses_files_of_an_earlier_run_and_cleans_them_on_request(
    tmp_path: Path,
) -> None:
    """Files left by an earlier run are an error, or are deleted with clean_stale=True."""
    run_worker(tmp_path, 0)
    with pytest.raises(ValueError, match=r"holds \d+ metric file\(s\) of an earlier run"):
        check_multiproc_dir(tmp_path)
    assert check_multiproc_dir(tmp_path, clean_stale=True) == tmp_path
    assert list(tmp_path.glob("*.db")) == []
    assert check_multiproc_dir(tmp_path) == tmp_path  # now clean: no error


def test_check_keeps_the_files_of_the_calling_process(tmp_path: Path) -> None:
    """Files of the checking process itself (gunicorn with preload_app) are not stale."""
    own = tmp_path / f"counter_{os.getpid()}.db"
    MmapedDict(str(own)).close()  # type: ignore[no-untyped-call]
    check_multiproc_dir(tmp_path)
    assert own.exists()


# --- retiring dead workers -------------------------------------------------------------


@pytest.mark.slow
def test_retiring_dead_workers_keeps_every_count_and_drops_live_gauges(tmp_path: Path) -> None:
    """Folding dead workers into the archive changes no sum; their in-progress gauges go."""
    for step in range(3):
        run_worker(tmp_path, step)
    before = merged(tmp_path)
    assert total(before, "http_requests_in_progress") == 3
    assert mark_dead_workers(tmp_path) != ()
    after = merged(tmp_path)
    assert total(after, "http_requests_in_progress") == 0
    assert total(after, "queue_size") == 0  # livesum: per live process
    expected = {key: value for key, value in before.items() if key[0] not in LIVE_FAMILIES}
    kept = {key: value for key, value in after.items() if key[0] not in LIVE_FAMILIES}
    # Counts are exact; float sums (`_sum`) may differ in the last bit with the order of adding.
    assert kept == pytest.approx(expected, rel=1e-12, abs=0)
    # One file per kind is left, however many workers came and went.
    names = sorted(file.name for file in tmp_path.glob("*.db"))
    assert names == ["counter_archive.db", "gauge_mostrecent_archive.db", "histogram_archive.db"]

    for step in (3, 4):  # more workers come and go: the archive keeps adding up
        run_worker(tmp_path, step)
    mark_dead_workers(tmp_path)
    tokens = {"provider": "openai", "model": "gpt-4o", "token_type": "input"}
    final = merged(tmp_path)
    assert final[("tokens_used_total", tuple(sorted(tokens.items())))] == 10 * (1 + 2 + 3 + 4 + 5)
    assert total(final, "http_requests_total") == 1 + 2 + 3 + 4 + 5
    # mostrecent: the worker that set provider health last (step 4: unavailable) wins.
    assert final[("provider_availability", (("provider", "openai"),))] == 0


@pytest.mark.slow
def test_gunicorn_child_exit_retires_the_exited_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child_exit hook folds the worker gunicorn reports as exited, by its pid."""
    run_worker(tmp_path, 0)
    (counter,) = tmp_path.glob("counter_*.db")
    pid = int(counter.stem.partition("_")[2])
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    gunicorn_child_exit(None, SimpleNamespace(pid=pid))
    assert not list(tmp_path.glob(f"*_{pid}.db"))
    assert total(merged(tmp_path), "http_requests_total") == 1


def test_a_running_process_is_never_retired(tmp_path: Path) -> None:
    """Retiring a live process would lose its later counts: it is refused."""
    with pytest.raises(ValueError, match=rf"process {os.getpid()} is still running"):
        retire_worker(os.getpid(), tmp_path)


def test_gunicorn_child_exit_never_raises(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failure in the hook is logged: raising would take gunicorn's arbiter down."""
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    gunicorn_child_exit(None, SimpleNamespace(pid=12345))
    assert "could not retire the files of worker 12345" in caplog.text


@pytest.mark.slow
def test_a_collector_outside_the_workers_retires_nobody(tmp_path: Path) -> None:
    """A process that writes nothing there (a sidecar?) cannot judge liveness: it only reads."""
    run_worker(tmp_path, 0)
    samples = parse(generate_latest(multiprocess_registry(tmp_path)).decode())
    assert total(samples, "http_requests_in_progress") == 1
    assert any(file.name.startswith("gauge_livesum_") for file in tmp_path.glob("*.db"))


@pytest.mark.slow
def test_a_worker_scraping_retires_the_dead_ones(tmp_path: Path) -> None:
    """A worker's scrape (MetricsApp's registry) retires workers that are gone."""
    run_worker(tmp_path, 0)
    run_worker(
        tmp_path,
        1,
        "from prometheus_client import generate_latest",
        "from gatewayz_metrics import multiprocess_registry",
        "print(generate_latest(multiprocess_registry()).decode())",
    )
    samples = merged(tmp_path)
    assert total(samples, "http_requests_total") == 1 + 2
    assert total(samples, "http_requests_in_progress") == 1  # only the last worker's is left


# --- real servers ----------------------------------------------------------------------


def uvicorn_argv(port: int) -> list[str]:
    """`uvicorn --workers 3` serving the example app."""
    return [
        sys.executable, "-m", "uvicorn", APP, "--workers", str(WORKERS),
        "--no-access-log", "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


def gunicorn_argv(port: int) -> list[str]:
    """gunicorn with the example config and uvicorn's worker, 3 workers."""
    return [
        sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF),
        "-k", "uvicorn_worker.UvicornWorker", "-w", str(WORKERS), APP,
        "-b", f"127.0.0.1:{port}",
    ]  # fmt: skip


def assert_every_scrape(server: Server, requests: int, scrapes: int = 10) -> None:
    """Each of `scrapes` scrapes, answered by whichever worker, reports exactly `requests`."""
    time.sleep(0.2)  # a response is on the wire a few microseconds before its count
    for _ in range(scrapes):
        samples = server.scrape()
        assert total(samples, "http_requests_total") == requests
        tokens = {"provider": "demo", "model": "demo-model", "token_type": "input"}
        assert samples[("tokens_used_total", tuple(sorted(tokens.items())))] == (
            INPUT_TOKENS * requests
        )


def spread_requests(server: Server, at_least: int) -> tuple[int, set[int]]:
    """Send rounds of requests until `at_least` workers answered; (count sent, pids seen)."""
    sent, seen = 0, set[int]()
    deadline = time.monotonic() + START_TIMEOUT
    while len(seen) < at_least:
        if time.monotonic() > deadline:
            pytest.fail(f"requests reached only workers {seen}:\n{server.output()}")
        seen.update(server.requests(30))
        sent += 30
    return sent, seen


def kill_one_worker_and_check(server: Server, *, on_exit_hook: bool) -> None:
    """Count, kill a worker mid-request, let it be replaced, count again: nothing is lost."""
    first, seen = spread_requests(server, WORKERS)
    assert_every_scrape(server, first)

    # A streamed request keeps one worker busy: its in-progress gauge is 1 when it dies.
    with httpx.stream("GET", f"{server.url}/v1/stream?seconds=60", timeout=10) as stream:
        victim = int(stream.headers["x-worker-pid"])
        assert total(server.scrape(), "http_requests_in_progress") == 1
        os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: victim not in server.workers() and len(server.workers()) == WORKERS,
        "the killed worker to be replaced",
    )
    if on_exit_hook:  # gunicorn's child_exit ran when the worker was reaped, before any scrape
        wait_for(
            lambda: not list(server.directory.glob(f"gauge_live*_{victim}.db")),
            "child_exit to remove the dead worker's live gauges",
            timeout=5,
        )
    replacement = server.workers() - seen
    assert replacement, f"no new worker besides {seen}"
    second, _ = spread_requests(server, 1)

    assert_every_scrape(server, first + second)
    samples = server.scrape()
    assert total(samples, "http_requests_in_progress") == 0
    # The dead worker's files were folded into the archive: its counts live on there.
    assert not list(server.directory.glob(f"*_{victim}.db"))
    assert (server.directory / "counter_archive.db").exists()


@pytest.mark.slow
def test_uvicorn_workers_sum_exactly_and_survive_a_killed_worker(
    tmp_path: Path, start_server: StartServer
) -> None:
    """uvicorn --workers 3: exact sums on every scrape; a SIGKILLed worker loses nothing."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    port = free_port()
    server = start_server(uvicorn_argv(port), directory, port)
    server.wait_ready(WORKERS)
    kill_one_worker_and_check(server, on_exit_hook=False)


@pytest.mark.slow
def test_gunicorn_workers_sum_exactly_and_survive_a_killed_worker(
    tmp_path: Path, start_server: StartServer
) -> None:
    """gunicorn + UvicornWorker, 3 workers: stale files cleaned, exact sums, child_exit works."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    run_worker(directory, 5)  # an earlier run's counts, which must not show up in this one
    port = free_port()
    server = start_server(gunicorn_argv(port), directory, port)
    server.wait_ready(WORKERS)
    kill_one_worker_and_check(server, on_exit_hook=True)


@pytest.mark.slow
def test_uvicorn_launcher_checks_the_directory_first(
    tmp_path: Path, start_server: StartServer
) -> None:
    """run_uvicorn.py empties a stale directory, then its workers' sums are exact."""
    directory = tmp_path / "multiproc"
    directory.mkdir()
    run_worker(directory, 5)
    port = free_port()
    argv = [
        sys.executable, "-m", "examples.multiprocess.run_uvicorn",
        "--workers", "2", "--port", str(port),
    ]  # fmt: skip
    server = start_server(argv, directory, port)
    server.wait_ready(2)
    sent, _ = spread_requests(server, 2)
    assert_every_scrape(server, sent, scrapes=4)


@pytest.mark.slow
def test_uvicorn_launcher_refuses_a_missing_directory(tmp_path: Path) -> None:
    """run_uvicorn.py stops at once, naming the directory, when it does not exist."""
    missing = tmp_path / "missing"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(missing), "PYTHONPATH": "."}
    result = subprocess.run(
        [sys.executable, "-m", "examples.multiprocess.run_uvicorn", "--port", str(free_port())],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0
    assert f"'{missing}' does not exist" in result.stderr
