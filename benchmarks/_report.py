"""Turn raw measurements into the markdown results table, and put it into a README."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._machine import Machine
from benchmarks._variants import NOT_INSTALLED, VARIANTS

START_MARKER = "<!-- benchmark-results:start -->"
END_MARKER = "<!-- benchmark-results:end -->"

TARGET_FLOOR_RATIO = 1.5
TARGET_RENDER_SPEEDUP = 3.0
TARGET_P99_DELTA_MS = 10.0
TARGET_HELPER_RATIO = 2.0
TARGET_OPENMETRICS_SPEEDUP = 5.0

TARGET_STALL_MS = 10.0


@dataclass(frozen=True, slots=True)
class VariantSummary:
    """One variant over all rounds; times in ns, medians over rounds."""

    name: str
    version: str | None
    installed: bool
    ns_per_request: float | None = None
    overhead_ns: float | None = None
    overhead_min_ns: float | None = None
    overhead_max_ns: float | None = None
    recorded_ok: bool = True
    rounds: int = 0


def summarize_variants(
    runs: dict[str, list[dict[str, Any]]], versions: dict[str, str | None]
) -> list[VariantSummary]:
    """Median over rounds of each variant's ns/request and paired overhead."""
    summaries: list[VariantSummary] = []
    for variant in VARIANTS:
        results = runs.get(variant.name, [])
        version = versions.get(variant.name)
        ok = [r for r in results if r.get("status") == "ok"]
        if not ok:
            summaries.append(VariantSummary(variant.name, version, installed=False))
            continue
        overheads = [r["overhead_ns"] for r in ok]
        summaries.append(
            VariantSummary(
                name=variant.name,
                version=version,
                installed=True,
                ns_per_request=statistics.median(r["ns_per_request"] for r in ok),
                overhead_ns=statistics.median(overheads),
                overhead_min_ns=min(overheads),
                overhead_max_ns=max(overheads),
                recorded_ok=all(r["recorded_ok"] for r in ok),
                rounds=len(ok),
            )
        )
    return summaries


def summarize_domain(rounds: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Median over rounds of each helper's, bare and bound ns/call."""
    summary: dict[str, dict[str, Any]] = {}
    for name in rounds[0] if rounds else ():
        entries = [r[name] for r in rounds]
        summary[name] = {
            "helper_ns": statistics.median(e["helper_ns"] for e in entries),
            "bare_ns": statistics.median(e["bare_ns"] for e in entries),
            "bound_ns": statistics.median(e["bound_ns"] for e in entries),
            "bare": entries[0]["bare"],
        }
    return summary


def _us(ns: float | None, digits: int = 1) -> str:
    return "—" if ns is None else f"{ns / 1000:.{digits}f}"


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _met(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "**no**")


def _machine_section(machine: Machine, settings: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{name} {v}" for name, v in machine.versions if v is not None)
    missing = [name for name, v in machine.versions if v is None]
    lines = [
        "| | |",
        "|---|---|",
        f"| date | {machine.date} |",
        f"| machine | {machine.cpu}, {machine.cores} cores (`nproc`), {machine.system} |",
        f"| load average at start (1 / 5 / 15 min) | {machine.load} |",
        f"| Python | {machine.python} |",
        f"| packages | {versions} |",
        f"| gatewayz-metrics commit | {machine.commit} |",
        f"| run | {settings['description']} |",
    ]
    if missing:
        lines.append(f"| not installed | {', '.join(missing)} |")
    return lines


def _middleware_section(summaries: list[VariantSummary], settings: dict[str, Any]) -> list[str]:
    by_name = {s.name: s for s in summaries}
    floor = by_name["floor"].overhead_ns
    ours = by_name["gatewayz"].overhead_ns
    lines = [
        "#### Middleware overhead per request",
        "",
        f"`GET /items/{{item_id}}` on a one-route Starlette app (PlainTextResponse), called "
        f"in-process with a hand-built ASGI scope; {settings['requests']} timed requests per "
        f"variant per round after {settings['warmup']} warm-up requests, each variant in its "
        f"own subprocess, variants interleaved over {settings['rounds']} round(s). Overhead = "
        "the variant minus a bare copy of the app timed in the same process in alternating "
        "batches; median over rounds, and its min and max over rounds. `x floor` and "
        "`x gatewayz` divide the variant's median overhead by theirs.",
        "",
        "| variant | version | µs/request | overhead µs | min to max | x floor | x gatewayz "
        "| records every request |",
        "|---|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for s in summaries:
        name = f"**{s.name}**" if s.name == "gatewayz" else s.name
        version = s.version or ""
        if not s.installed:
            lines.append(f"| {name} | {NOT_INSTALLED} | — | — | — | — | — | — |")
            continue
        spread = f"{_us(s.overhead_min_ns, 2)} to {_us(s.overhead_max_ns, 2)}"
        baseline = s.name == "bare"
        lines.append(
            f"| {name} | {version} | {_us(s.ns_per_request)} | {_us(s.overhead_ns, 2)} "
            f"| {spread} | {'—' if baseline else _times(_ratio(s.overhead_ns, floor))} "
            f"| {'—' if baseline else _times(_ratio(s.overhead_ns, ours))} "
            f"| {'—' if baseline else ('yes' if s.recorded_ok else '**NO**')} |"
        )
    return lines


def _domain_section(domain: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "#### Domain helpers",
        "",
        "`GatewayMetrics(registry)` helpers against prometheus_client recording the same "
        "samples; bare = `.labels(...)` on every call, as hand-written code does; bound = "
        "label children bound once (the least prometheus_client can do). One subprocess per "
        "round, batches alternating; median over rounds.",
        "",
        "| helper | bare equivalent | helper µs/call | bare µs/call | helper ÷ bare "
        "| bound µs/call | helper ÷ bound |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, d in domain.items():
        lines.append(
            f"| `{name}` | `{d['bare']}` | {_us(d['helper_ns'], 2)} | {_us(d['bare_ns'], 2)} "
            f"| {_times(_ratio(d['helper_ns'], d['bare_ns']))} | {_us(d['bound_ns'], 2)} "
            f"| {_times(_ratio(d['helper_ns'], d['bound_ns']))} |"
        )
    return lines


def _exposition_section(exposition: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "#### `/metrics` render, text format (no Accept header)",
        "",
        "A registry of N *series* = N sample lines of the text format, not counting the "
        "`_created` line of each child: half from counters (5 families, labels endpoint and "
        "status_code), half from histograms (5 families, label endpoint, 7 buckets = 10 "
        "lines per child). Ours = `MetricsApp(registry)` called through ASGI (`GET /metrics`, "
        "**no Accept header**, so the text format 0.0.4, no gzip) until its body is complete; "
        "generate_latest = "
        "`prometheus_client.generate_latest(registry)`; alternating, median of the repeats. "
        "Same samples = both outputs parsed by `prometheus_client.parser` give the same "
        "samples and values (`_created` values aside). Memory = tracemalloc around building "
        "the registry; peak = tracemalloc peak during one render.",
        "",
        "| series | lines incl. `_created` | repeats | ours ms | generate_latest ms "
        "| speed-up | µs/series (ours / gen.) | bytes (ours / gen.) | same samples "
        "| registry bytes/series | render peak MB (ours / gen.) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|",
    ]
    for e in exposition:
        c = e["comparison"]
        same = (
            "yes"
            if c["identical"]
            else (
                f"**NO** ({c['missing']} missing, {c['extra']} extra, "
                f"{c['value_mismatches']} values differ)"
            )
        )
        lines.append(
            f"| {e['series']:,} | {e['lines']:,} | {e['repeats']} | {e['ours_ms']:.1f} "
            f"| {e['generate_latest_ms']:.1f} "
            f"| {_times(_ratio(e['generate_latest_ms'], e['ours_ms']))} "
            f"| {e['ours_ms'] * 1000 / e['series']:.1f} / "
            f"{e['generate_latest_ms'] * 1000 / e['series']:.1f} "
            f"| {e['ours_bytes']:,} / {e['generate_latest_bytes']:,} | {same} "
            f"| {e['bytes_per_series']:.0f} "
            f"| {e['ours_peak_bytes'] / 1e6:.1f} / {e['generate_latest_peak_bytes'] / 1e6:.1f} |"
        )
    return lines


def _openmetrics_section(openmetrics: Sequence[dict[str, Any]]) -> list[str]:
    if not openmetrics:
        return []
    lines = [
        "#### `/metrics` render as Prometheus scrapes: OpenMetrics + gzip",
        "",
        "The same registries. Ours = `MetricsApp(registry)` called through ASGI with "
        f"**`Accept: {openmetrics[0]['accept']}`** and `Accept-Encoding: gzip` (the headers of "
        "a real Prometheus 2.42+/3.x scrape), so it answers OpenMetrics 1.0.0, gzipped (level "
        "6), until its body is complete. prometheus_client = "
        "`gzip.compress(prometheus_client.openmetrics.exposition.generate_latest(registry), "
        "compresslevel=6)`, the same level as ours; its own apps (`make_asgi_app`, "
        "`make_wsgi_app`) compress at level 9, also shown. Alternating, median of the repeats. "
        "Stall = the longest gap between the wakeups of a task sleeping 1 ms at a time on the "
        "same event loop during a render, worst of 3 renders (a full garbage collection "
        "before each); for prometheus_client its encoder + gzip run in a worker thread, as "
        "MetricsApp served OpenMetrics before; idle = the same ticker with nothing else to do "
        "for as long as our render took, the machine's own gaps (other processes), which no "
        "renderer goes below. Same bytes = our body, decompressed, equals "
        "prometheus_client's OpenMetrics `generate_latest` of the same state.",
        "",
        "| series | repeats | ours ms | prometheus_client OM + gzip-6 ms | speed-up "
        "| OM + gzip-9 ms (its apps) "
        "| loop stall ms (ours / prometheus_client in a thread / idle) "
        "| bytes (uncompressed) | same bytes |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for e in openmetrics:
        lines.append(
            f"| {e['series']:,} | {e['repeats']} | {e['ours_ms']:.1f} "
            f"| {e['openmetrics_gzip_ms']:.1f} "
            f"| {_times(_ratio(e['openmetrics_gzip_ms'], e['ours_ms']))} "
            f"| {e['openmetrics_gzip9_ms']:.1f} "
            f"| {e['ours_stall_ms']:.1f} / {e['openmetrics_thread_stall_ms']:.1f} / "
            f"{_ms(e.get('idle_stall_ms'))} "
            f"| {e['bytes']:,} | {'yes' if e['identical_bytes'] else '**NO**'} |"
        )
    return lines


def _accept_label(accept: str) -> str:
    return "Prometheus's (prefers OpenMetrics)" if accept else "none (text)"


def _scrape_section(scrape: Sequence[dict[str, Any]]) -> list[str]:
    if not scrape:
        return []
    first = scrape[0]
    prometheus_accept = next((s["accept"] for s in scrape if s.get("accept")), "")
    lines = [
        f"#### Requests served while `/metrics` of {first['series']:,} series is scraped",
        "",
        f"uvicorn on 127.0.0.1 (one worker), `/ping` plus the registry above; a client sends "
        f"`GET /ping` {first['rate']:.0f} times a second for {first['seconds']:.0f} s on a "
        "keep-alive connection, latency counted from when each request was due (no "
        "coordinated omission). Quiet = no scraper; during scrape = the pings due while a "
        "scrape (`Accept-Encoding: gzip`, as Prometheus asks) was in flight, the scraper "
        "idling as long as each scrape took. Accept = the scraper's Accept header: "
        f"Prometheus's is `{prometheus_accept}`; none asks for the text format. Content "
        "type = what the server answered. Both servers run PrometheusMiddleware; they "
        "differ only in who answers `/metrics`: gatewayz = the middleware's MetricsApp, "
        "make_asgi_app = prometheus_client's app mounted at `/metrics`.",
        "",
        "| exposer | Accept | content type | scrapes | scrape ms (median) | gzip bytes "
        "| quiet p50 / p99 ms | during scrape p50 / p99 ms | pings during scrape "
        "| p99 - quiet p99 ms | errors |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in scrape:
        quiet, busy = s["quiet"], s["during_scrape"]
        delta = None if busy["p99_ms"] is None else busy["p99_ms"] - quiet["p99_ms"]
        content_type = s.get("content_type", "").split(";")[0]
        lines.append(
            f"| {s['exposer']} | {_accept_label(s.get('accept', ''))} | `{content_type}` "
            f"| {s['scrapes']} | {s['scrape_median_ms']:.0f} "
            f"| {s['gzip_bytes']:,} | {_ms(quiet['p50_ms'])} / {_ms(quiet['p99_ms'])} "
            f"| {_ms(busy['p50_ms'])} / {_ms(busy['p99_ms'])} | {busy['requests']} "
            f"| {_ms(delta)} | {s['errors']} |"
        )
    return lines


def _targets_section(
    summaries: list[VariantSummary],
    domain: dict[str, dict[str, Any]],
    exposition: Sequence[dict[str, Any]],
    scrape: Sequence[dict[str, Any]],
    openmetrics: Sequence[dict[str, Any]] = (),
) -> list[str]:
    by_name = {s.name: s for s in summaries}
    floor_ratio = _ratio(by_name["gatewayz"].overhead_ns, by_name["floor"].overhead_ns)
    rows = [
        (
            f"middleware overhead, every default metric on ≤ {TARGET_FLOOR_RATIO}x the floor",
            _times(floor_ratio),
            None if floor_ratio is None else floor_ratio <= TARGET_FLOOR_RATIO,
        )
    ]
    if exposition:
        largest = max(exposition, key=lambda e: e["series"])
        speedup = _ratio(largest["generate_latest_ms"], largest["ours_ms"])
        same = largest["comparison"]["identical"]
        rows.append(
            (
                f"`/metrics` render at {largest['series']:,} series ≥ {TARGET_RENDER_SPEEDUP:.0f}x "
                "faster than generate_latest, same samples",
                f"{_times(speedup)}, same samples: {'yes' if same else 'NO'}",
                None if speedup is None else speedup >= TARGET_RENDER_SPEEDUP and same,
            )
        )
    if openmetrics:
        largest_om = max(openmetrics, key=lambda e: e["series"])
        speedup = _ratio(largest_om["openmetrics_gzip_ms"], largest_om["ours_ms"])
        same = largest_om["identical_bytes"]
        rows.append(
            (
                f"Prometheus-style scrape (its Accept: OpenMetrics, gzip) at "
                f"{largest_om['series']:,} series ≥ {TARGET_OPENMETRICS_SPEEDUP:.0f}x faster "
                "than prometheus_client's OpenMetrics encoder + gzip, same bytes",
                f"{_times(speedup)}, same bytes: {'yes' if same else 'NO'}",
                None if speedup is None else speedup >= TARGET_OPENMETRICS_SPEEDUP and same,
            )
        )
        worst = max(openmetrics, key=lambda e: e["ours_stall_ms"])
        stall = worst["ours_stall_ms"]
        idle = worst.get("idle_stall_ms")
        rows.append(
            (
                f"event loop never stalled more than {TARGET_STALL_MS:.0f} ms by an OpenMetrics "
                "render (1 ms ticker, every size)",
                f"worst {stall:.1f} ms"
                + ("" if idle is None else f" (idle loop on the same machine: {idle:.1f} ms)"),
                stall <= TARGET_STALL_MS,
            )
        )
    for s in scrape:
        if s["exposer"] != "gatewayz":
            continue
        busy, quiet = s["during_scrape"]["p99_ms"], s["quiet"]["p99_ms"]
        delta = None if busy is None else busy - quiet
        rows.append(
            (
                f"p99 of requests during a {s['series']:,}-series scrape (Accept: "
                f"{_accept_label(s.get('accept', ''))}) within "
                f"{TARGET_P99_DELTA_MS:.0f} ms of the quiet p99",
                f"{'—' if delta is None else f'{delta:+.1f} ms'}",
                None if delta is None else delta <= TARGET_P99_DELTA_MS,
            )
        )
    for name, d in domain.items():
        ratio = _ratio(d["helper_ns"], d["bare_ns"])
        rows.append(
            (
                f"`{name}` ≤ {TARGET_HELPER_RATIO:.0f}x the bare prometheus_client calls",
                _times(ratio),
                None if ratio is None else ratio <= TARGET_HELPER_RATIO,
            )
        )
    lines = [
        "#### Targets (issue “Performance”)",
        "",
        "| target | measured | met |",
        "|---|---|:---:|",
    ]
    lines += [f"| {target} | {measured} | {_met(ok)} |" for target, measured, ok in rows]
    return lines


def render_markdown(
    machine: Machine,
    settings: dict[str, Any],
    summaries: list[VariantSummary],
    domain: dict[str, dict[str, Any]],
    exposition: Sequence[dict[str, Any]],
    scrape: Sequence[dict[str, Any]],
    openmetrics: Sequence[dict[str, Any]] = (),
) -> str:
    """The whole results section, regenerated by `python -m benchmarks.run`."""
    sections = [
        ["### Benchmark results", "", f"Generated by `{settings['command']}`.", ""],
        _machine_section(machine, settings),
        _targets_section(summaries, domain, exposition, scrape, openmetrics),
        _middleware_section(summaries, settings),
        _domain_section(domain),
        _exposition_section(exposition),
        _openmetrics_section(openmetrics),
        _scrape_section(scrape),
    ]
    return "\n\n".join("\n".join(section) for section in sections if section).replace(
        "\n\n\n", "\n\n"
    )


def check_markers(text: str) -> str | None:
    """Why `text` cannot take the results, or None when its markers are in place."""
    start, end = text.count(START_MARKER), text.count(END_MARKER)
    if start != 1 or end != 1:
        return f"expected exactly one {START_MARKER} and one {END_MARKER}, found {start} and {end}"
    if text.index(START_MARKER) > text.index(END_MARKER):
        return f"{START_MARKER} must come before {END_MARKER}"
    return None


def replace_between_markers(text: str, markdown: str) -> str:
    """`text` with everything between the markers replaced by `markdown`."""
    before, rest = text.split(START_MARKER, 1)
    _, after = rest.split(END_MARKER, 1)
    return f"{before}{START_MARKER}\n{markdown.strip()}\n{END_MARKER}{after}"


def update_readme(path: Path, markdown: str) -> None:
    """Write `markdown` between the markers of `path` (checked by `check_markers` first)."""
    text = path.read_text(encoding="utf-8")
    problem = check_markers(text)
    if problem is not None:
        raise ValueError(f"{path}: {problem}")
    path.write_text(replace_between_markers(text, markdown), encoding="utf-8")
