"""Benchmarks of prometheus_client's multiprocess mode (`PROMETHEUS_MULTIPROC_DIR` set).

Three measurements, run by `python -m benchmarks.run` after the single-process ones:

1. scrape time: the files of W workers holding N series, merged and rendered in the text
   format by ours (`FastMultiProcessReader`, what `MetricsApp` and the exporter run, keys
   cached as in a server scraped again and again) and by `MultiProcessCollector` +
   `generate_latest`; both bodies must be byte-identical;
2. middleware overhead per request with every variant's process in multiprocess mode;
3. `/ping` latency on a uvicorn worker while its `/metrics` (the merged files of 4 workers)
   is scraped, and while the separate exporter process is scraped instead.

Each measurement runs in a fresh subprocess: `python -m benchmarks._multiprocess_mode JOB`.
The workers' files are written with prometheus_client's own `MmapedDict` and `mmap_key`, the
two calls its multiprocess values make, so they are the files real workers leave.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULT_PREFIX = "RESULT "
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_HISTOGRAM_LINES = len(BOUNDS) + 3  # buckets, +Inf, _sum, _count
_TIMEOUT = 3600.0
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)  # what Prometheus 2.42 and 3.x send
_MP_VARIANTS = ("bare", "floor", "gatewayz", "starlette_exporter", "instrumentator")


# --- the workers' files ----------------------------------------------------------------


def write_worker_files(directory: Path, series: int, workers: int) -> int:
    """Files of `workers` workers that merge into exactly `series` sample lines.

    A quarter of the lines from histograms (15 buckets), 7.5% each from a `livesum` and a
    `mostrecent` gauge, the rest from counters; every worker holds every series, with its own
    values. Returns the number of entries written per worker.
    """
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    histograms = series // 4 // _HISTOGRAM_LINES
    livesum = mostrecent = series * 3 // 40
    counters = series - histograms * _HISTOGRAM_LINES - livesum - mostrecent
    files: dict[str, list[tuple[str, str]]] = {"counter": [], "histogram": [], "gauge": []}
    for i in range(counters):
        key = mmap_key(
            "http_requests", "http_requests_total", ["method", "endpoint", "status_code"],
            ["GET", f"/e{i // 10}", str(200 + i % 10)], "Requests.",
        )  # fmt: skip
        files["counter"].append((key, "counter"))
    for i in range(histograms):
        name, labels, values = "http_request_duration_seconds", ["endpoint"], [f"/e{i}"]
        files["histogram"].append((mmap_key(name, name + "_sum", labels, values, "D."), "sum"))
        for bound in (*BOUNDS, float("inf")):
            le = "+Inf" if bound == float("inf") else str(float(bound))
            key = mmap_key(name, name + "_bucket", [*labels, "le"], [*values, le], "D.")
            files["histogram"].append((key, "bucket"))
    for i in range(livesum):
        files["gauge"].append((mmap_key("queue_size", "queue_size", ["q"], [f"q{i}"], "Q."), "l"))
    recent = [mmap_key("balance", "balance", ["user"], [f"u{i}"], "B.") for i in range(mostrecent)]
    pids = [str(3_000_000 + worker) for worker in range(workers)]
    for worker, pid in enumerate(pids):
        for prefix, entries in (
            ("counter", files["counter"]),
            ("histogram", files["histogram"]),
            ("gauge_livesum", files["gauge"]),
        ):
            db = MmapedDict(str(directory / f"{prefix}_{pid}.db"))
            for index, (key, _) in enumerate(entries):
                db.write_value(key, float((index + worker) % 97), 0.0)
            db.close()
        db = MmapedDict(str(directory / f"gauge_mostrecent_{pid}.db"))
        for index, key in enumerate(recent):
            db.write_value(key, float(index * workers + worker), 1e9 + worker)
        db.close()
    return sum(len(entries) for entries in files.values()) + len(recent)


# --- 1. scrape time ----------------------------------------------------------------------


def scrape_job(series: int, workers: int, repeats: int) -> dict[str, Any]:
    """Ours against MultiProcessCollector + generate_latest, alternating, on the same files."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    from gatewayz_metrics._mpread import FastMultiProcessReader

    directory = Path(tempfile.mkdtemp(prefix="gatewayz-mp-bench-"))
    try:
        started = time.perf_counter()
        entries = write_worker_files(directory, series, workers)
        written_s = time.perf_counter() - started

        from prometheus_client.exposition import choose_encoder

        om = choose_encoder(PROMETHEUS_ACCEPT)[0]

        def theirs(encoder: Callable[[Any], bytes]) -> bytes:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(directory))
            return encoder(registry)

        reader = FastMultiProcessReader(directory)
        start = time.perf_counter()
        ours_body = reader.render(generate_latest)  # the first scrape parses every key
        cold_ms = (time.perf_counter() - start) * 1e3
        identical = ours_body == theirs(generate_latest)
        om_identical = reader.render(om) == theirs(om)
        lines = sum(1 for line in ours_body.splitlines() if not line.startswith(b"#"))
        timings: dict[str, list[float]] = {"ours": [], "theirs": [], "ours_om": [], "theirs_om": []}
        for _ in range(repeats):
            for name, render, encoder in (
                ("ours", reader.render, generate_latest),
                ("theirs", theirs, generate_latest),
                ("ours_om", reader.render, om),
                ("theirs_om", theirs, om),
            ):
                start = time.perf_counter()
                render(encoder)
                timings[name].append((time.perf_counter() - start) * 1e3)
        return {
            "series": series,
            "workers": workers,
            "lines": lines,
            "entries_per_worker": entries,
            "repeats": repeats,
            "write_s": written_s,
            "ours_cold_ms": cold_ms,
            "ours_ms": statistics.median(timings["ours"]),
            "theirs_ms": statistics.median(timings["theirs"]),
            "ours_om_ms": statistics.median(timings["ours_om"]),
            "theirs_om_ms": statistics.median(timings["theirs_om"]),
            "identical": identical,
            "om_identical": om_identical,
            "fast_reads": reader.fast_reads,
            "bytes": len(ours_body),
        }
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --- 3. /ping while scraped ----------------------------------------------------------------


def serve_job(port: int) -> None:
    """A uvicorn worker in multiprocess mode: `/ping`, and `/metrics` from its MetricsApp."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from gatewayz_metrics import PrometheusMiddleware

    async def pong(request: Request) -> PlainTextResponse:
        return PlainTextResponse("pong")

    app = Starlette(routes=[Route("/ping", pong)])
    app.add_middleware(PrometheusMiddleware)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def measure_ping(series: int, workers: int, seconds: float, rate: float) -> list[dict[str, Any]]:
    """/ping p99 on the worker: quiet, scraped itself, and while the exporter is scraped."""
    from benchmarks._scrape import _free_port, _ping_job, _wait_ready, scrape_loop, summarize

    results = []
    with tempfile.TemporaryDirectory(prefix="gatewayz-mp-ping-") as tmp:
        directory = Path(tmp) / "multiproc"
        directory.mkdir()
        write_worker_files(directory, series, workers)
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
        port, exporter_port = _free_port(), _free_port()
        log = Path(tmp) / "server.log"
        with log.open("wb") as out:
            server = subprocess.Popen(
                [sys.executable, "-m", "benchmarks._multiprocess_mode", "serve", str(port)],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
            exporter = subprocess.Popen(
                [sys.executable, "-m", "gatewayz_metrics.exporter", "--port", str(exporter_port)],
                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            _wait_ready(server, port, log)
            _wait_for_exporter(exporter_port)
            for target, scrape_port in (("worker", port), ("exporter", exporter_port)):
                scrape_loop(scrape_port, "/metrics", 0.0)  # warm: keys parsed once
                quiet = _ping_job(port, rate, seconds, REPO)
                scraper = subprocess.Popen(
                    [
                        sys.executable, "-m", "benchmarks._worker", "scrape", "--port",
                        str(scrape_port), "--path", "/metrics", "--seconds", str(seconds),
                    ],
                    cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                )  # fmt: skip
                time.sleep(0.3)
                busy = _ping_job(port, rate, seconds, REPO)
                scraped, errors = scraper.communicate(timeout=seconds * 10 + 120)
                if scraper.returncode != 0:
                    raise RuntimeError(f"the scraper failed:\n{errors[-2000:]}")
                from benchmarks._worker import parse_result

                windows = parse_result(scraped)["windows"]
                results.append(
                    {
                        "scraped": target,
                        "series": series,
                        "workers": workers,
                        "rate": rate,
                        "seconds": seconds,
                        "scrapes": len(windows),
                        "scrape_median_ms": statistics.median(e - s for s, e in windows) * 1e3,
                        "errors": quiet["errors"] + busy["errors"],
                        "quiet": summarize(quiet["samples"]),
                        "during_scrape": summarize(busy["samples"], windows),
                    }
                )
        finally:
            for process in (server, exporter):
                process.terminate()
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    return results


def _wait_for_exporter(port: int) -> None:
    import http.client

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", "/metrics")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    raise RuntimeError("the exporter did not answer within 60 s")


# --- 2. middleware overhead ------------------------------------------------------------------


def measure_middleware(
    rounds: int, requests: int, batches: int, warmup: int, versions: dict[str, str | None]
) -> dict[str, list[dict[str, Any]]]:
    """benchmarks._worker's middleware job, each process in multiprocess mode (own directory)."""
    from benchmarks._variants import NOT_INSTALLED
    from benchmarks._worker import parse_result

    jobs = [name for name in _MP_VARIANTS if versions.get(name) is not None]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in _MP_VARIANTS}
    for name in _MP_VARIANTS:
        if name not in jobs:
            runs[name].append({"variant": name, "status": NOT_INSTALLED})
    for round_index in range(rounds):
        shift = round_index % len(jobs)
        for job in jobs[shift:] + jobs[:shift]:
            with tempfile.TemporaryDirectory(prefix="gatewayz-mp-mw-") as directory:
                env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
                command = [
                    sys.executable, "-m", "benchmarks._worker", "middleware", job,
                    "--requests", str(requests), "--batches", str(batches),
                    "--warmup", str(warmup),
                ]  # fmt: skip
                done = subprocess.run(
                    command, cwd=REPO, env=env, capture_output=True, text=True,
                    timeout=_TIMEOUT, check=False,
                )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"{job} (multiprocess) failed:\n{done.stderr[-3000:]}")
            result = parse_result(done.stdout)
            runs[job].append(result)
            _log(
                f"multiprocess round {round_index + 1}/{rounds}: {job}: "
                f"overhead {result.get('overhead_ns', 0) / 1000:.2f} µs"
            )
    return runs


# --- the run -------------------------------------------------------------------------------


def measure_multiprocess(
    *, quick: bool, rounds: int, requests: int, batches: int, warmup: int,
    versions: dict[str, str | None],
) -> dict[str, Any]:  # fmt: skip
    """All three measurements; `quick` is the smoke-test size."""
    if quick:
        sizes: Sequence[tuple[int, int, int]] = ((1_000, 2, 2),)
        ping = (1_000, 2, 1.0, 200.0)
    else:
        sizes = tuple((10_000, w, 10) for w in (2, 4, 8)) + tuple(
            (100_000, w, 3) for w in (2, 4, 8)
        )
        ping = (10_000, 4, 10.0, 200.0)
    scrapes = []
    for series, workers, repeats in sizes:
        result = _job("scrape", str(series), str(workers), str(repeats))
        _log(
            f"multiprocess scrape {series:,} series x {workers} workers: ours "
            f"{result['ours_ms']:.1f} ms, MultiProcessCollector {result['theirs_ms']:.1f} ms"
        )
        scrapes.append(result)
    middleware = measure_middleware(rounds, requests, batches, warmup, versions)
    pings = measure_ping(*ping)
    for p in pings:
        _log(
            f"ping while the {p['scraped']} is scraped: p99 quiet {p['quiet']['p99_ms']:.1f} ms, "
            f"during {p['during_scrape']['p99_ms'] or 0:.1f} ms"
        )
    return {"scrape": scrapes, "middleware": middleware, "ping": pings}


def problems(results: dict[str, Any]) -> list[str]:
    """Invalid measurements: a body that differs, a fallback taken, a request not recorded."""
    found = []
    for s in results["scrape"]:
        expected_reads = 2 * s["repeats"] + 2
        if not s["identical"] or not s["om_identical"] or s["fast_reads"] != expected_reads:
            found.append(
                f"multiprocess {s['series']:,} x {s['workers']}: identical={s['identical']}, "
                f"OpenMetrics identical={s['om_identical']}, "
                f"fast reads {s['fast_reads']} of {expected_reads}"
            )
    for name, runs in results["middleware"].items():
        for run in runs:
            if run.get("status") == "ok" and not run["recorded_ok"]:
                found.append(f"{name} (multiprocess) recorded {run['recorded']} requests")
                break
    return found


def render(
    results: dict[str, Any], versions: dict[str, str | None], settings: dict[str, Any]
) -> str:
    """The markdown sections of the multiprocess measurements."""
    from benchmarks._report import (
        TARGET_FLOOR_RATIO,
        TARGET_P99_DELTA_MS,
        _met,
        _middleware_section,
        _ms,
        _ratio,
        _times,
        summarize_variants,
    )

    lines = [
        "#### Multiprocess mode: scrape time",
        "",
        "`PROMETHEUS_MULTIPROC_DIR` with the files of W workers, every worker holding every "
        "series (a quarter of the lines from histograms of 15 buckets, 15% from `livesum` "
        "and `mostrecent` gauges, the rest counters), written with prometheus_client's "
        "`MmapedDict`. Ours = `FastMultiProcessReader.render(encoder)` as `MetricsApp` and "
        "the exporter run it, keys already cached (a server scraped every few seconds); first "
        "= our first scrape, which parses every key. Theirs = `MultiProcessCollector` + "
        "prometheus_client's encoder. Text = no Accept (`generate_latest`); OpenMetrics = "
        "Prometheus' own Accept header (`application/openmetrics-text;version=1.0.0,...`, "
        "prometheus_client's OpenMetrics encoder). No gzip. Alternating, median of the "
        "repeats. Same bytes = our body and theirs are byte-identical, in both formats.",
        "",
        "| series | workers | entries per worker | repeats | first scrape ms "
        "| text: ours ms | text: theirs ms | text speed-up "
        "| OpenMetrics: ours ms | OpenMetrics: theirs ms | OpenMetrics speed-up | same bytes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for s in results["scrape"]:
        lines.append(
            f"| {s['series']:,} | {s['workers']} | {s['entries_per_worker']:,} | {s['repeats']} "
            f"| {s['ours_cold_ms']:.0f} | {s['ours_ms']:.1f} | {s['theirs_ms']:.1f} "
            f"| {_times(_ratio(s['theirs_ms'], s['ours_ms']))} "
            f"| {s['ours_om_ms']:.1f} | {s['theirs_om_ms']:.1f} "
            f"| {_times(_ratio(s['theirs_om_ms'], s['ours_om_ms']))} "
            f"| {'yes' if s['identical'] and s['om_identical'] else '**NO**'} |"
        )
    mw = _middleware_section(summarize_variants(results["middleware"], versions), settings)
    mw[0] = "#### Multiprocess mode: middleware overhead per request"
    mw[2] = (
        "As the single-process table, with `PROMETHEUS_MULTIPROC_DIR` set (a fresh directory) "
        "in every variant's process, so every counter and histogram is an mmap-backed "
        "multiprocess value. " + mw[2]
    )
    lines += ["", *mw, ""]
    pings = results["ping"]
    if pings:
        first = pings[0]
        lines += [
            f"#### Multiprocess mode: requests served while {first['series']:,} series x "
            f"{first['workers']} workers are scraped",
            "",
            f"One uvicorn worker in multiprocess mode (`/ping`, PrometheusMiddleware, its "
            f"MetricsApp at `/metrics`) beside the files of {first['workers']} workers; "
            f"`GET /ping` {first['rate']:.0f} times a second for {first['seconds']:.0f} s, "
            "latency from when each request was due. Scraped = who answers the scrapes (with "
            "the headers of the single-process scrape test, `benchmarks/_scrape.py`): the "
            "worker itself, or the separate exporter "
            "process (`python -m gatewayz_metrics.exporter`), the worker then never scraped.",
            "",
            "| scraped | scrapes | scrape ms (median) | quiet p50 / p99 ms "
            "| during scrape p50 / p99 ms | p99 - quiet p99 ms | errors |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for p in pings:
            quiet, busy = p["quiet"], p["during_scrape"]
            delta = None if busy["p99_ms"] is None else busy["p99_ms"] - quiet["p99_ms"]
            lines.append(
                f"| {p['scraped']} | {p['scrapes']} | {p['scrape_median_ms']:.0f} "
                f"| {_ms(quiet['p50_ms'])} / {_ms(quiet['p99_ms'])} "
                f"| {_ms(busy['p50_ms'])} / {_ms(busy['p99_ms'])} | {_ms(delta)} "
                f"| {p['errors']} |"
            )
    # The targets of the multiprocess mode.
    at_target = [s for s in results["scrape"] if s["series"] == 10_000 and s["workers"] == 4]
    speedup = _ratio(at_target[0]["theirs_ms"], at_target[0]["ours_ms"]) if at_target else None
    summaries = {s.name: s for s in summarize_variants(results["middleware"], versions)}
    floor_ratio = _ratio(summaries["gatewayz"].overhead_ns, summaries["floor"].overhead_ns)
    worker = [p for p in pings if p["scraped"] == "worker"]
    delta = None
    if worker and worker[0]["during_scrape"]["p99_ms"] is not None:
        delta = worker[0]["during_scrape"]["p99_ms"] - worker[0]["quiet"]["p99_ms"]
    lines += [
        "",
        "#### Multiprocess mode: targets",
        "",
        "| target | measured | met |",
        "|---|---:|:---:|",
        f"| scrape at 10,000 series x 4 workers >= 10x faster than MultiProcessCollector + "
        f"generate_latest | {_times(speedup)} | "
        f"{_met(None if speedup is None else speedup >= 10)} |",
        f"| middleware overhead <= {TARGET_FLOOR_RATIO}x the floor (multiprocess) "
        f"| {_times(floor_ratio)} "
        f"| {_met(None if floor_ratio is None else floor_ratio <= TARGET_FLOOR_RATIO)} |",
        f"| /ping p99 on the scraping worker within {TARGET_P99_DELTA_MS:.0f} ms of quiet "
        f"| {_ms(delta)} ms | {_met(None if delta is None else delta <= TARGET_P99_DELTA_MS)} |",
    ]
    return "\n".join(lines)


def _log(message: str) -> None:
    sys.stderr.write(f"[benchmarks] {message}\n")
    sys.stderr.flush()


def _job(*args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks._multiprocess_mode", *args]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result: dict[str, Any] = json.loads(line[len(RESULT_PREFIX) :])
            return result
    raise RuntimeError(f"no result line:\n{done.stdout[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._multiprocess_mode")
    jobs = parser.add_subparsers(dest="job", required=True)
    scrape = jobs.add_parser("scrape")
    scrape.add_argument("series", type=int)
    scrape.add_argument("workers", type=int)
    scrape.add_argument("repeats", type=int)
    serve = jobs.add_parser("serve")
    serve.add_argument("port", type=int)
    args = parser.parse_args(argv)
    if args.job == "serve":
        serve_job(args.port)
        return 0
    result = scrape_job(args.series, args.workers, args.repeats)
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
