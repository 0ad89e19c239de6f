"""Run every benchmark of gatewayz-metrics and print the results table.

    python -m benchmarks.run [--quick] [--rounds N] [--output-markdown PATH]
                             [--output-json PATH] [--update-readme README.md]

From the repository root, with `benchmarks/requirements.txt` installed (a peer that is
not installed is reported as such). One run measures, in this order:

1. middleware overhead: bare app, hand-written floor, PrometheusMiddleware and the
   peers, each in its own subprocess, interleaved in rounds so that machine drift
   spreads over all of them; plus the domain helpers against bare prometheus_client;
2. `/metrics` render time, bytes, sample equality and memory at 1k, 10k, 100k series, in
   the text format (no Accept), and as Prometheus scrapes (its Accept, which prefers
   OpenMetrics, and gzip) against prometheus_client's OpenMetrics encoder + gzip, with the
   event loop's longest stall;
3. `/ping` latency while `/metrics` of 100k series is scraped, ours vs `make_asgi_app`,
   with Prometheus's Accept (OpenMetrics) and with none (text).
4. multiprocess mode (`benchmarks/_multiprocess_mode.py`): scrape time at 10k and 100k
   series over 2, 4 and 8 workers' files against `MultiProcessCollector`, middleware
   overhead under `PROMETHEUS_MULTIPROC_DIR`, `/ping` latency while a worker is scraped.

`--quick` is the smoke-test size (a few seconds per part, 1k series only): it proves
the harness works, its numbers mean nothing. The exit status is 0 whatever the numbers
say; it is 1 when a measurement is invalid (a variant that did not record every request,
a render whose samples differ from generate_latest), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import _multiprocess_mode
from benchmarks._machine import Machine, version
from benchmarks._report import (
    check_markers,
    render_markdown,
    summarize_domain,
    summarize_variants,
    update_readme,
)
from benchmarks._variants import NOT_INSTALLED, VARIANTS
from benchmarks._worker import parse_result

REPO = Path(__file__).resolve().parent.parent
_WORKER_TIMEOUT = 600.0


@dataclass(frozen=True, slots=True)
class Settings:
    """How much of everything one run measures."""

    rounds: int
    requests: int
    batches: int
    warmup: int
    domain_calls: int
    exposition: tuple[tuple[int, int], ...]  # (series, repeats)
    scrape_series: int
    scrape_seconds: float
    scrape_rate: float

    @staticmethod
    def full(rounds: int | None) -> Settings:
        return Settings(
            rounds=rounds or 9,
            requests=20_000,
            batches=20,
            warmup=2_000,
            domain_calls=100_000,
            exposition=((1_000, 30), (10_000, 10), (100_000, 5)),
            scrape_series=100_000,
            scrape_seconds=10.0,
            scrape_rate=200.0,
        )

    @staticmethod
    def quick(rounds: int | None) -> Settings:
        return Settings(
            rounds=rounds or 1,
            requests=200,
            batches=4,
            warmup=50,
            domain_calls=2_000,
            exposition=((1_000, 3),),
            scrape_series=1_000,
            scrape_seconds=1.0,
            scrape_rate=200.0,
        )

    def describe(self, quick: bool) -> str:
        sizes = ", ".join(f"{series:,}" for series, _ in self.exposition)
        text = (
            f"{self.rounds} round(s) x {self.requests:,} requests per variant; renders at "
            f"{sizes} series; scrape test at {self.scrape_series:,} series, "
            f"{self.scrape_seconds:.0f} s per phase"
        )
        return f"--quick (smoke test, numbers not meaningful): {text}" if quick else text


def _log(message: str) -> None:
    sys.stderr.write(f"[benchmarks] {message}\n")
    sys.stderr.flush()


def _run_worker(*args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks._worker", *args]
    done = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, timeout=_WORKER_TIMEOUT, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(command[1:])} failed with exit status {done.returncode}:\n"
            f"{done.stderr[-3000:]}"
        )
    return parse_result(done.stdout)


def _variant_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for variant in VARIANTS:
        if variant.distribution is not None:
            versions[variant.name] = version(variant.distribution)
        else:
            versions[variant.name] = f"prometheus_client {version('prometheus-client')}"
    versions["bare"] = f"starlette {version('starlette')}"
    return versions


def measure_middleware(
    settings: Settings, versions: dict[str, str | None]
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Every installed variant and the domain helpers, once per round, order rotating."""
    jobs = [v.name for v in VARIANTS if versions.get(v.name) is not None] + ["domain"]
    runs: dict[str, list[dict[str, Any]]] = {v.name: [] for v in VARIANTS}
    for name in runs:
        if name not in jobs:
            runs[name].append({"variant": name, "status": NOT_INSTALLED})
    domain: list[dict[str, Any]] = []
    for round_index in range(settings.rounds):
        # Rotating the order keeps any variant from always running first (cold disk
        # caches, turbo budget) or right after the heaviest one.
        shift = round_index % len(jobs)
        for job in jobs[shift:] + jobs[:shift]:
            if job == "domain":
                result = _run_worker(
                    "domain", "--calls", str(settings.domain_calls), "--batches", "10"
                )
                domain.append(result)
                _log(f"round {round_index + 1}/{settings.rounds}: domain helpers done")
                continue
            result = _run_worker(
                "middleware",
                job,
                "--requests",
                str(settings.requests),
                "--batches",
                str(settings.batches),
                "--warmup",
                str(settings.warmup),
            )
            runs[job].append(result)
            if result["status"] == "ok":
                detail = (
                    f"{result['ns_per_request'] / 1000:.1f} µs/request, "
                    f"overhead {result['overhead_ns'] / 1000:.2f} µs"
                )
            else:
                detail = result["status"]
            _log(f"round {round_index + 1}/{settings.rounds}: {job}: {detail}")
    return runs, domain


def measure_exposition(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    results = []
    openmetrics = []
    for series, repeats in settings.exposition:
        result = _run_worker("exposition", "--series", str(series), "--repeats", str(repeats))
        _log(
            f"render {series:,} series: ours {result['ours_ms']:.1f} ms, "
            f"generate_latest {result['generate_latest_ms']:.1f} ms"
        )
        results.append(result)
        om = _run_worker("openmetrics", "--series", str(series), "--repeats", str(repeats))
        _log(
            f"OpenMetrics + gzip {series:,} series: ours {om['ours_ms']:.1f} ms "
            f"(stall {om['ours_stall_ms']:.1f} ms), prometheus_client "
            f"{om['openmetrics_gzip_ms']:.1f} ms (stall {om['openmetrics_thread_stall_ms']:.1f} ms)"
        )
        openmetrics.append(om)
    return results, openmetrics


def measure_scrapes(settings: Settings) -> list[dict[str, Any]]:
    from benchmarks._exposition import PROMETHEUS_ACCEPT
    from benchmarks._scrape import measure_scrape

    results = []
    # Prometheus's own Accept first (what production sees), then none (the text format).
    for accept in (PROMETHEUS_ACCEPT, ""):
        for exposer in ("gatewayz", "make_asgi_app"):
            result = measure_scrape(
                exposer,
                settings.scrape_series,
                settings.scrape_seconds,
                settings.scrape_rate,
                REPO,
                accept,
            )
            _log(
                f"scrape {exposer} ({result['content_type']}): p99 quiet "
                f"{result['quiet']['p99_ms']:.1f} ms, "
                f"during scrape {result['during_scrape']['p99_ms'] or 0:.1f} ms"
            )
            results.append(result)
    return results


def _problems(
    runs: dict[str, list[dict[str, Any]]],
    exposition: list[dict[str, Any]],
    openmetrics: list[dict[str, Any]],
) -> list[str]:
    """Measurements that are invalid, whatever their numbers."""
    problems = []
    for name, results in runs.items():
        for result in results:
            if result.get("status") == "ok" and not result["recorded_ok"]:
                problems.append(
                    f"{name} recorded {result['recorded']} of {result['requests']} requests"
                )
                break
    for result in exposition:
        if not result["comparison"]["identical"]:
            problems.append(
                f"at {result['series']:,} series MetricsApp and generate_latest disagree: "
                f"{result['comparison']}"
            )
    for result in openmetrics:
        if not result["identical_bytes"]:
            problems.append(
                f"at {result['series']:,} series MetricsApp's OpenMetrics body is not "
                "prometheus_client's OpenMetrics generate_latest, byte for byte"
            )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke-test sizes (CI)")
    parser.add_argument("--rounds", type=int, help="middleware rounds (default 9, quick 1)")
    parser.add_argument("--output-markdown", type=Path, help="write the results table here")
    parser.add_argument("--output-json", type=Path, help="write the raw measurements here")
    parser.add_argument(
        "--update-readme",
        type=Path,
        help="write the table between the benchmark-results markers of this file",
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.update_readme is not None:
        # Checked before minutes of measuring, not after.
        try:
            problem = check_markers(args.update_readme.read_text(encoding="utf-8"))
        except OSError as exc:
            problem = str(exc)
        if problem is not None:
            sys.stderr.write(f"error: --update-readme {args.update_readme}: {problem}\n")
            return 2

    settings = Settings.quick(args.rounds) if args.quick else Settings.full(args.rounds)
    command = "python -m benchmarks.run" + (" --quick" if args.quick else "")
    if args.rounds is not None:
        command += f" --rounds {args.rounds}"
    started = time.monotonic()
    machine = Machine.describe(REPO)
    versions = _variant_versions()
    runs, domain_rounds = measure_middleware(settings, versions)
    exposition, openmetrics = measure_exposition(settings)
    scrape = measure_scrapes(settings)
    multiprocess = _multiprocess_mode.measure_multiprocess(
        quick=args.quick,
        rounds=settings.rounds,
        requests=settings.requests,
        batches=settings.batches,
        warmup=settings.warmup,
        versions=versions,
    )

    summaries = summarize_variants(runs, versions)
    domain = summarize_domain(domain_rounds)
    report_settings = {
        **asdict(settings),
        "command": command,
        "description": f"{settings.describe(args.quick)}; took {time.monotonic() - started:.0f} s",
    }
    markdown = render_markdown(
        machine, report_settings, summaries, domain, exposition, scrape, openmetrics
    )
    markdown += "\n\n" + _multiprocess_mode.render(multiprocess, versions, report_settings)
    sys.stdout.write(markdown + "\n")
    if args.output_markdown is not None:
        args.output_markdown.write_text(markdown + "\n", encoding="utf-8")
    if args.output_json is not None:
        raw = {
            "machine": asdict(machine),
            "settings": report_settings,
            "middleware": runs,
            "domain": domain_rounds,
            "exposition": exposition,
            "openmetrics": openmetrics,
            "scrape": scrape,
            "multiprocess": multiprocess,
        }
        args.output_json.write_text(json.dumps(raw, indent=1) + "\n", encoding="utf-8")
    if args.update_readme is not None:
        update_readme(args.update_readme, markdown)

    problems = _problems(runs, exposition, openmetrics) + _multiprocess_mode.problems(multiprocess)
    for problem in problems:
        sys.stderr.write(f"error: invalid measurement: {problem}\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
