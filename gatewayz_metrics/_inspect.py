"""`gatewayz-metrics inspect`: what one application's exposition costs, before deploy.

Prometheus' own tools (`promtool tsdb analyze`, the TSDB status page) answer "where do my
series come from?" after the fact and for a whole server. This answers it for one
endpoint (or a saved exposition file): series per family and per label, labels at or near
their cap, our own self-metrics, bytes per scrape, and label values that look like
credentials, named by metric and label and never echoed. Exit codes make it a CI gate.

Only the standard library and prometheus_client's parser: it runs where the package runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import IO, Any

from gatewayz_metrics._cardinality import OVERFLOW_VALUE
from gatewayz_metrics._domain import DEFAULT_LABEL_CAPS
from gatewayz_metrics._exposition import BEARER_TOKEN_ENV, BEARER_TOKEN_FILE_ENV, configured_token
from gatewayz_metrics._gateway import MAX_CURRENCIES
from gatewayz_metrics._http import DEFAULT_MAX_ENDPOINTS
from gatewayz_metrics._secrets import looks_like_secret

EXIT_OK = 0
EXIT_FAILED_CHECK = 1
EXIT_ERROR = 2

NEAR_CAP = 0.9
"""A label whose distinct values reach this share of its cap is reported as near it."""

# Caps the package applies by default, keyed by label name, from the package's own
# constants: the exposition does not carry an application's own caps, `--cap` overrides.
# A fallback's `from_model` and `to_model` are capped as `model` is.
_DEFAULT_CAPS: Mapping[str, int] = {
    "endpoint": DEFAULT_MAX_ENDPOINTS,
    **DEFAULT_LABEL_CAPS,
    "from_model": DEFAULT_LABEL_CAPS["model"],
    "to_model": DEFAULT_LABEL_CAPS["model"],
    "currency": MAX_CURRENCIES,
}
# Labels whose values are numbers by construction: never a secret, never a cardinality
# question of their own (their count is the bucket layout).
_STRUCTURAL_LABELS = frozenset({"le", "quantile"})
_SELF_PREFIX = "gatewayz_metrics_"
_SELF_METRICS = (
    "gatewayz_metrics_label_overflow",
    "gatewayz_metrics_internal_errors",
    "gatewayz_metrics_invalid_values",
)
_WITH_CREATED = frozenset({"counter", "histogram", "summary", "gaugehistogram"})
_TOP = 5
_PROGRESS_AFTER = 0.5  # seconds before a progress line is worth showing
_CHUNK = 64 * 1024


class InspectError(Exception):
    """The exposition could not be fetched or parsed; the message says why."""


@dataclasses.dataclass(frozen=True, slots=True)
class Exposition:
    """A scraped (or read) exposition: its text and what it cost to get."""

    source: str
    text: str
    body_bytes: int
    wire_bytes: int
    content_type: str
    seconds: float


@dataclasses.dataclass(slots=True)
class LabelReport:
    """Distinct values of one label of one family."""

    name: str
    values: int
    cap: int | None
    top: list[tuple[str, int]]
    overflowed: bool
    secrets: int


@dataclasses.dataclass(slots=True)
class FamilyReport:
    """Series of one metric family."""

    name: str
    type: str
    series: int
    labels: list[LabelReport]


@dataclasses.dataclass(slots=True)
class Report:
    """Everything `inspect` found; `to_json()` is the `--json` output."""

    exposition: Exposition
    families: list[FamilyReport]
    self_metrics: dict[str, dict[str, float]]
    failures: list[str] = dataclasses.field(default_factory=list)

    @property
    def series(self) -> int:
        return sum(f.series for f in self.families)

    def near_cap(self) -> list[tuple[FamilyReport, LabelReport]]:
        return [
            (family, label)
            for family in self.families
            for label in family.labels
            if label.overflowed or (label.cap is not None and label.values >= NEAR_CAP * label.cap)
        ]

    def secrets(self) -> list[tuple[FamilyReport, LabelReport]]:
        return [(f, label) for f in self.families for label in f.labels if label.secrets]

    def to_json(self) -> dict[str, Any]:
        exposition = self.exposition
        return {
            "source": exposition.source,
            "content_type": exposition.content_type,
            "bytes": exposition.body_bytes,
            "wire_bytes": exposition.wire_bytes,
            "seconds": round(exposition.seconds, 4),
            "series": self.series,
            "families": [
                {
                    "name": f.name,
                    "type": f.type,
                    "series": f.series,
                    "labels": [
                        {
                            "name": label.name,
                            "values": label.values,
                            "cap": label.cap,
                            "overflowed": label.overflowed,
                            "secret_values": label.secrets,
                            # Values that look like secrets are never listed.
                            "top": [[value, count] for value, count in label.top],
                        }
                        for label in f.labels
                    ],
                }
                for f in self.families
            ],
            "near_cap": [
                {"metric": f.name, "label": label.name, "values": label.values, "cap": label.cap}
                for f, label in self.near_cap()
            ],
            "secrets": [
                {"metric": f.name, "label": label.name, "values": label.secrets}
                for f, label in self.secrets()
            ],
            "self_metrics": self.self_metrics,
            "failures": self.failures,
        }


def fetch(
    url: str,
    *,
    token: str | None = None,
    timeout: float = 30.0,
    progress: Callable[[int, float], None] | None = None,
) -> Exposition:
    """GET `url` as Prometheus would (text format, gzip), with an optional bearer token."""
    headers = {"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "gzip"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            chunks: list[bytes] = []
            received = 0
            while chunk := response.read(_CHUNK):
                chunks.append(chunk)
                received += len(chunk)
                if progress is not None:
                    progress(received, time.perf_counter() - start)
            encoding = response.headers.get("Content-Encoding", "")
            content_type = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        hint = ""
        if exc.code in (401, 403):
            hint = (
                f" (give the token with --token, {BEARER_TOKEN_ENV} or {BEARER_TOKEN_FILE_ENV})"
                if not token
                else " (token refused)"
            )
        raise InspectError(f"{url} answered {exc.code} {exc.reason}{hint}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InspectError(f"could not scrape {url}: {reason}") from None
    wire = b"".join(chunks)
    body = gzip.decompress(wire) if encoding.lower() == "gzip" else wire
    return Exposition(
        source=url,
        text=_decode(body, url),
        body_bytes=len(body),
        wire_bytes=len(wire),
        content_type=content_type,
        seconds=time.perf_counter() - start,
    )


def read_file(path: str) -> Exposition:
    """Read a saved exposition (plain or gzip-compressed)."""
    start = time.perf_counter()
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as exc:
        raise InspectError(f"could not read {path}: {exc.strerror or exc}") from None
    body = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    text = _decode(body, path)
    return Exposition(
        source=path,
        text=text,
        body_bytes=len(body),
        wire_bytes=len(raw),
        content_type="application/openmetrics-text" if _is_openmetrics(text) else "text/plain",
        seconds=time.perf_counter() - start,
    )


def _decode(body: bytes, source: str) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InspectError(f"{source} is not UTF-8 text: {exc}") from None


def _is_openmetrics(text: str) -> bool:
    return text.rstrip().endswith("# EOF")


def analyze(
    exposition: Exposition,
    *,
    caps: Mapping[str, int] | None = None,
    secret_detector: Callable[[str], bool] = looks_like_secret,
) -> Report:
    """Count series per family and label, find values near caps and secret-looking values."""
    caps = {**_DEFAULT_CAPS, **(caps or {})}
    families: list[FamilyReport] = []
    self_metrics: dict[str, dict[str, float]] = {}
    for family, samples in _grouped(_parse(exposition)):
        per_label: dict[str, Counter[str]] = {}
        series = 0
        for sample in samples:
            series += 1
            for name, value in sample.labels.items():
                per_label.setdefault(name, Counter())[value] += 1
        labels = [
            _label_report(name, counted, caps.get(name), secret_detector)
            for name, counted in sorted(per_label.items())
            if name not in _STRUCTURAL_LABELS
        ]
        shown = family.name + "_total" if family.type == "counter" else family.name
        families.append(FamilyReport(shown, family.type, series, labels))
        if family.name in _SELF_METRICS:
            self_metrics[shown] = _self_metric_values(samples)
    families.sort(key=lambda f: (-f.series, f.name))
    return Report(exposition, families, self_metrics)


def _parse(exposition: Exposition) -> Iterable[Any]:
    try:
        if _is_openmetrics(exposition.text):
            from prometheus_client.openmetrics.parser import (
                text_string_to_metric_families as parse_openmetrics,
            )

            return list(parse_openmetrics(exposition.text))  # type: ignore[no-untyped-call]
        from prometheus_client.parser import text_string_to_metric_families

        return list(text_string_to_metric_families(exposition.text))
    except Exception as exc:
        raise InspectError(f"{exposition.source} is not a valid exposition: {exc}") from None


def _grouped(parsed: Iterable[Any]) -> list[tuple[Any, list[Any]]]:
    """Families with their samples; the text format's `X_created` gauges join family X.

    The text format has no `_created` of its own: prometheus_client writes it as a separate
    gauge family, which would double every counter and histogram in the counts.
    """
    families = {family.name: (family, list(family.samples)) for family in parsed}
    for name in [n for n, (f, _) in families.items() if n.endswith("_created")]:
        created, samples = families[name]
        parent = families.get(name[: -len("_created")])
        if created.type == "gauge" and parent and parent[0].type in _WITH_CREATED:
            parent[1].extend(samples)
            del families[name]
    return list(families.values())


def _label_report(
    name: str, counted: Counter[str], cap: int | None, secret_detector: Callable[[str], bool]
) -> LabelReport:
    secrets = 0
    top: list[tuple[str, int]] = []
    for value, count in sorted(counted.items(), key=lambda item: (-item[1], item[0])):
        if secret_detector(value):
            secrets += 1
        elif len(top) < _TOP:
            top.append((value, count))
    return LabelReport(
        name=name,
        values=len(counted),
        cap=cap,
        top=top,
        overflowed=OVERFLOW_VALUE in counted,
        secrets=secrets,
    )


def _self_metric_values(samples: Iterable[Any]) -> dict[str, float]:
    values: dict[str, float] = {}
    for sample in samples:
        if not sample.name.endswith("_total"):
            continue  # _created
        key = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())) or "total"
        values[key] = values.get(key, 0.0) + sample.value
    return values


# --- terminal output ----------------------------------------------------------------------


def _printable(value: str, width: int = 48) -> str:
    """A label value made safe for a terminal: escapes shown, long values cut."""
    shown = value.encode("unicode_escape").decode("ascii") if not value.isprintable() else value
    return shown if len(shown) <= width else shown[: width - 1] + "…"


def render_text(report: Report, *, families: int = 20, labels: int = 15) -> str:
    """The human-readable report."""
    e = report.exposition
    out: list[str] = []
    wire = f" ({e.wire_bytes:,} on the wire)" if e.wire_bytes != e.body_bytes else ""
    out.append(f"gatewayz-metrics inspect {e.source}")
    out.append(
        f"  {report.series:,} series in {len(report.families):,} families, "
        f"{e.body_bytes:,} bytes per scrape{wire}, {e.seconds * 1000:.0f} ms"
        + (f", {e.content_type}" if e.content_type else "")
    )
    out.append("")
    out.append("Families by series")
    out.append(f"  {'SERIES':>8}  {'TYPE':<9}  FAMILY  {{labels}}")
    for family in report.families[:families]:
        names = ", ".join(label.name for label in family.labels)
        out.append(f"  {family.series:>8,}  {family.type:<9}  {family.name}  {{{names}}}")
    if len(report.families) > families:
        out.append(f"  ... {len(report.families) - families} more (--families N, or --json)")
    out.append("")
    # The self-metrics have a section of their own; their labels would crowd the table.
    ranked = sorted(
        (
            (f, label)
            for f in report.families
            for label in f.labels
            if not f.name.startswith(_SELF_PREFIX)
        ),
        key=lambda pair: (-pair[1].values, pair[0].name, pair[1].name),
    )
    out.append("Labels by distinct values")
    out.append(f"  {'VALUES':>7}  {'CAP':>5}  FAMILY{{LABEL}}  TOP VALUES (series)")
    for family, label in ranked[:labels]:
        cap = f"{label.cap:,}" if label.cap is not None else "-"
        top = ", ".join(f"{_printable(v, 32)} ({n})" for v, n in label.top[:3])
        if label.secrets:
            top = f"[{label.secrets} secret-looking value(s) hidden] " + top
        out.append(f"  {label.values:>7,}  {cap:>5}  {family.name}{{{label.name}}}  {top}")
    out.append("")
    out.append("Self-metrics")
    for name in (base + "_total" for base in _SELF_METRICS):
        values = report.self_metrics.get(name)
        if values is None:
            out.append(f"  {name}: not exposed")
            continue
        nonzero = {k: v for k, v in values.items() if v}
        detail = ", ".join(f"{{{k}}} {v:g}" for k, v in sorted(nonzero.items()))
        out.append(f"  {name}: {sum(values.values()):g}" + (f"  ({detail})" if detail else ""))
    out.append("")
    out.append("Findings")
    findings = _findings(report)
    out.extend(f"  {line}" for line in findings or ["OK nothing to report"])
    return "\n".join(out) + "\n"


def _findings(report: Report) -> list[str]:
    lines: list[str] = []
    for family, label in report.secrets():
        lines.append(
            f"SECRET {family.name}{{{label.name}}}: {label.secrets} value(s) look like "
            "credentials (not shown); fingerprint them or drop the label"
        )
    for family, label in report.near_cap():
        if label.overflowed:
            lines.append(
                f"CAP {family.name}{{{label.name}}}: reached its cap, values fold into "
                f"{OVERFLOW_VALUE} ({label.values:,} distinct)"
            )
        elif label.cap is not None and label.values > label.cap:
            lines.append(
                f"CAP {family.name}{{{label.name}}}: {label.values:,} values, over the "
                f"default cap of {label.cap:,} (not capped by gatewayz-metrics, or capped "
                "higher: --cap LABEL=N)"
            )
        else:
            lines.append(
                f"CAP {family.name}{{{label.name}}}: {label.values:,} of {label.cap:,} "
                "values; new values will fold into __other__"
            )
    for name, values in sorted(report.self_metrics.items()):
        total = sum(values.values())
        if total:
            lines.append(f"SELF {name} = {total:g}: see docs/runbooks.md")
    if not report.secrets():
        lines.insert(0, "OK no label value looks like a credential")
    lines.extend(f"FAIL {failure}" for failure in report.failures)
    return lines


# --- command line -------------------------------------------------------------------------


def _progress_line(stream: IO[str]) -> Callable[[int, float], None]:
    def show(received: int, elapsed: float) -> None:
        if elapsed >= _PROGRESS_AFTER:
            stream.write(f"\rscraping... {received / 1e6:.1f} MB in {elapsed:.1f} s")
            stream.flush()

    return show


def _cap(text: str) -> tuple[str, int]:
    label, sep, number = text.partition("=")
    try:
        value = int(number)
    except ValueError:
        value = 0
    if not sep or not label or value < 1:
        raise argparse.ArgumentTypeError(f"expected LABEL=N with N >= 1, got {text!r}")
    return label, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatewayz-metrics",
        description="Tools for gatewayz-metrics endpoints.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    inspect = commands.add_parser(
        "inspect",
        help="series per family and label, caps, self-metrics, secret-looking label values",
        description=(
            "Scrape a metrics endpoint (or read a saved exposition) and report what it costs: "
            "series per family and per label, labels at or near their cap, gatewayz-metrics' "
            "self-metrics, bytes per scrape, and label values that look like credentials "
            "(named by metric and label, never shown). Exit 1 when a --max-series or "
            "--fail-on-secret check fails, 2 when the endpoint cannot be read."
        ),
    )
    inspect.add_argument("source", help="an http(s) URL to scrape, or a file (- for stdin)")
    inspect.add_argument(
        "--token",
        help=f"bearer token for the endpoint (default: ${BEARER_TOKEN_ENV}, else the file "
        f"${BEARER_TOKEN_FILE_ENV} names, as MetricsApp reads it)",
    )
    inspect.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    inspect.add_argument(
        "--max-series", type=int, metavar="N", help="exit 1 when the endpoint has more series"
    )
    inspect.add_argument(
        "--fail-on-secret",
        action="store_true",
        help="exit 1 when any label value looks like a credential",
    )
    inspect.add_argument(
        "--cap",
        type=_cap,
        action="append",
        default=[],
        metavar="LABEL=N",
        help="the cap your application sets for LABEL (default: the package's defaults)",
    )
    inspect.add_argument("--families", type=int, default=20, help="families shown (default 20)")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _token(given: str | None) -> str | None:
    """`--token`, else the token `MetricsApp` would read from its environment (one rule)."""
    if given is not None:
        return given.strip() or None
    try:
        token = configured_token(None)
    except ValueError as exc:
        raise InspectError(str(exc)) from None
    return None if token is None else token.decode()


def main(argv: Sequence[str] | None = None, *, stdout: IO[str] | None = None) -> int:
    """Entry point of `gatewayz-metrics` and `python -m gatewayz_metrics`."""
    stdout = stdout or sys.stdout
    args = build_parser().parse_args(argv)
    source: str = args.source
    try:
        if source.startswith(("http://", "https://")):
            token = _token(args.token)
            show = _progress_line(sys.stderr) if sys.stderr.isatty() and not args.json else None
            exposition = fetch(source, token=token, timeout=args.timeout, progress=show)
            if show is not None:
                sys.stderr.write("\r\x1b[K")
        elif source == "-":
            data = sys.stdin.buffer.read()
            exposition = Exposition("-", _decode(data, "stdin"), len(data), len(data), "", 0.0)
        else:
            exposition = read_file(source)
        report = analyze(exposition, caps=dict(args.cap))
    except InspectError as exc:
        print(f"gatewayz-metrics inspect: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.max_series is not None and report.series > args.max_series:
        report.failures.append(
            f"{report.series:,} series, more than --max-series {args.max_series:,}"
        )
    if args.fail_on_secret and report.secrets():
        report.failures.append("label values that look like credentials (--fail-on-secret)")
    if args.json:
        json.dump(report.to_json(), stdout, indent=2)
        stdout.write("\n")
    else:
        stdout.write(render_text(report, families=args.families))
    return EXIT_FAILED_CHECK if report.failures else EXIT_OK
