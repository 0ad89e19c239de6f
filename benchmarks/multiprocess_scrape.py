"""Scrape cost in prometheus_client's multiprocess mode: 3 live workers, 10,000 series.

    python benchmarks/multiprocess_scrape.py [--scrapes 30] [--dead 30]

Three real worker processes (PROMETHEUS_MULTIPROC_DIR set) record the same 10,000 series
(sample lines of the merged exposition: 3,000 counter children, 350 histogram children of 18
lines each, 350 `livesum` and 350 `mostrecent` gauge children) and stay alive. A scrape is
timed as `MetricsApp` renders it: `generate_latest(multiprocess_registry())`, files read and
merged, text rendered.

Then the files of `--dead` dead workers are added (copies under pids that do not exist, as left
behind by recycled or crashed workers: client_python #204, scrapes slow down as `.db` files pile
up) and the scrape is timed as prometheus_client's collector alone reads them; then the dead
workers are retired once (`mark_dead_workers`: live gauges dropped, the rest folded into one
archive file per kind) and the scrape is timed again.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from gatewayz_metrics import mark_dead_workers, multiprocess_registry  # noqa: E402

WORKERS = 3
SERIES = 10_000

WORKER = textwrap.dedent(
    """
    import sys
    from prometheus_client import Counter, Gauge, Histogram

    requests = Counter("http_requests", "Requests.", ["method", "endpoint", "status_code"])
    duration = Histogram(
        "http_request_duration_seconds", "Duration.", ["method", "endpoint"],
        buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    )
    queue = Gauge("queue_size", "Queued.", ["queue"], multiprocess_mode="livesum")
    balance = Gauge("user_credit_balance", "Balance.", ["user_id"], multiprocess_mode="mostrecent")
    for endpoint in range(100):
        for method in ("GET", "POST", "PUT"):
            for status in range(200, 210):
                requests.labels(method, f"/e{endpoint}", str(status)).inc()
    for child in range(350):
        duration.labels("GET", f"/e{child}").observe(0.1)
        queue.labels(f"q{child}").set(1)
        balance.labels(f"u{child}").set(child)
    print("ready", flush=True)
    sys.stdin.read()  # stay alive (a live worker) until the benchmark closes stdin
    """
)


def time_scrapes(render: Callable[[], bytes], scrapes: int) -> tuple[float, float, int]:
    """Median and max milliseconds of `scrapes` renders, and the sample lines of one."""
    body = render()  # warm-up, and the size check
    lines = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    timings = []
    for _ in range(scrapes):
        start = time.perf_counter()
        render()
        timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings), max(timings), lines


def report(what: str, median: float, worst: float) -> None:
    """Print one measurement."""
    print(f"  scrape, {what:<30} median {median:7.1f} ms   max {worst:7.1f} ms")


def ours(directory: Path) -> Callable[[], bytes]:
    """A scrape as MetricsApp renders it in multiprocess mode."""
    return lambda: generate_latest(multiprocess_registry(directory))


def plain(directory: Path) -> Callable[[], bytes]:
    """A scrape with prometheus_client's MultiProcessCollector alone."""

    def render() -> bytes:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    return render


def unused_pids(count: int) -> list[int]:
    """`count` pids that no process has right now."""
    found: list[int] = []
    pid = 4_000_000
    while len(found) < count:
        pid -= 1
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            found.append(pid)
        except PermissionError:
            pass
    return found


def main() -> None:
    """Run the three measurements and print them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scrapes", type=int, default=30)
    parser.add_argument("--dead", type=int, default=30)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="gatewayz-mp-bench-"))
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(WORKERS)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            if worker.stdout.readline().strip() != "ready":
                raise SystemExit("a worker failed to start")
        files = len(list(directory.glob("*.db")))
        median, worst, lines = time_scrapes(ours(directory), args.scrapes)
        if lines != SERIES:
            raise SystemExit(f"expected {SERIES} series, the scrape has {lines}")
        print(f"{WORKERS} live workers, {lines} series, {files} files:")
        report("MetricsApp's registry", median, worst)
        report("MultiProcessCollector alone", *time_scrapes(plain(directory), args.scrapes)[:2])

        template = workers[0].pid
        for pid in unused_pids(args.dead):
            for file in directory.glob(f"*_{template}.db"):
                shutil.copy(file, directory / file.name.replace(f"_{template}.", f"_{pid}."))
        files = len(list(directory.glob("*.db")))
        median, worst, _ = time_scrapes(plain(directory), args.scrapes)
        print(f"+ {args.dead} dead workers' files as prometheus_client leaves them, {files} files:")
        report("MultiProcessCollector alone", median, worst)

        start = time.perf_counter()
        retired = mark_dead_workers(directory)
        folding = (time.perf_counter() - start) * 1000
        files = len(list(directory.glob("*.db")))
        median, worst, _ = time_scrapes(ours(directory), args.scrapes)
        print(f"after retiring {len(retired)} dead workers ({folding:.0f} ms, once): {files} files")
        report("MetricsApp's registry", median, worst)
    finally:
        for worker in workers:
            assert worker.stdin is not None
            worker.stdin.close()
            worker.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
