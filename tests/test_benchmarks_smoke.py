"""The benchmark harness keeps working: `python -m benchmarks.run --quick` end to end.

Nothing here looks at a number: a smoke run is too small to mean anything, and timing
assertions would make the suite flaky. What is checked is that every part runs, every
variant is reported, and the README markers are honoured.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
START = "<!-- benchmark-results:start -->"
END = "<!-- benchmark-results:end -->"

# variant -> the peer distribution it needs (None: needs nothing beyond the test extras).
VARIANTS = {
    "bare": None,
    "floor": None,
    "gatewayz": None,
    "gatewayz + exemplars, no span": None,  # opentelemetry-sdk is a test extra
    "gatewayz + exemplars, with an active span": None,
    "starlette_exporter": "starlette-exporter",
    "instrumentator": "prometheus-fastapi-instrumentator",
    "otel_asgi": "opentelemetry-instrumentation-asgi",
    "starlette_prometheus": "starlette-prometheus",
}

pytestmark = pytest.mark.slow


@dataclass(frozen=True, slots=True)
class QuickRun:
    """What one `--quick` run printed and wrote."""

    returncode: int
    stdout: str
    stderr: str
    markdown: str
    readme: str


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def _harness(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    # Warnings are errors in the harness too, as they are in the test suite.
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.run", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> QuickRun:
    """One `--quick` run, writing its table to a file and into a README with markers."""
    tmp = tmp_path_factory.mktemp("bench")
    markdown, readme = tmp / "RESULTS.md", tmp / "README.md"
    readme.write_text(f"# Title\n\nBefore.\n\n{START}\nold results\n{END}\n\nAfter.\n")
    done = _harness("--quick", "--output-markdown", str(markdown), "--update-readme", str(readme))
    return QuickRun(
        done.returncode,
        done.stdout,
        done.stderr,
        markdown.read_text() if markdown.exists() else "",
        readme.read_text(),
    )


def _row(stdout: str, first_cell: str) -> str:
    for line in stdout.splitlines():
        if line.startswith(f"| {first_cell} |"):
            return line
    raise AssertionError(f"no table row for {first_cell!r} in:\n{stdout}")


def test_quick_run_succeeds(quick_run: QuickRun) -> None:
    """The quick run exits 0 and prints every section of the results."""
    assert quick_run.returncode == 0, quick_run.stderr[-3000:]
    for heading in (
        "### Benchmark results",
        "#### Targets",
        "#### Middleware overhead per request",
        "#### Domain helpers",
        "#### `/metrics` render, text format (no Accept header)",
        "#### `/metrics` render as Prometheus scrapes: OpenMetrics + gzip",
        "#### Requests served while `/metrics` of 1,000 series is scraped",
    ):
        assert heading in quick_run.stdout


def test_every_scrape_row_names_its_accept_header(quick_run: QuickRun) -> None:
    """Each exposer is scraped with Prometheus's Accept (OpenMetrics) and with none (text)."""
    assert quick_run.returncode == 0, quick_run.stderr[-3000:]
    rows = [line for line in quick_run.stdout.splitlines() if line.startswith("| gatewayz |")]
    rows += [line for line in quick_run.stdout.splitlines() if line.startswith("| make_asgi_app")]
    cells = sorted(tuple(cell.strip() for cell in row.split("|")[2:4]) for row in rows)
    assert cells == [
        ("Prometheus's (prefers OpenMetrics)", "`application/openmetrics-text`"),
        ("Prometheus's (prefers OpenMetrics)", "`application/openmetrics-text`"),
        ("none (text)", "`text/plain`"),
        ("none (text)", "`text/plain`"),
    ]


@pytest.mark.parametrize("variant", list(VARIANTS), ids=list(VARIANTS))
def test_every_variant_is_reported(quick_run: QuickRun, variant: str) -> None:
    """Each variant has a row: measured when its peer is installed, else "not installed"."""
    assert quick_run.returncode == 0, quick_run.stderr[-3000:]
    name = f"**{variant}**" if variant == "gatewayz" else variant
    row = _row(quick_run.stdout, name)
    distribution = VARIANTS[variant]
    if distribution is None or _installed(distribution):
        assert "not installed" not in row
        if variant != "bare":
            assert row.rstrip().endswith("| yes |"), row  # recorded every request
        return
    if "CI" in os.environ:
        pytest.fail(
            f"{distribution} is not installed, and CI is set: "
            "pip install -r benchmarks/requirements.txt",
            pytrace=False,
        )
    assert "not installed" in row


@pytest.mark.parametrize(
    "first_cell",
    ["1,000", "`record_tokens_used`", "`track_model_inference`", "gatewayz", "make_asgi_app"],
)
def test_other_measurements_are_reported(quick_run: QuickRun, first_cell: str) -> None:
    """Render, domain-helper and scrape results each have their row."""
    assert quick_run.returncode == 0, quick_run.stderr[-3000:]
    _row(quick_run.stdout, first_cell)


def test_outputs_carry_the_printed_table(quick_run: QuickRun) -> None:
    """--output-markdown writes the printed table; --update-readme puts it between the
    markers and leaves the rest of the README as it was."""
    assert quick_run.returncode == 0, quick_run.stderr[-3000:]
    assert quick_run.markdown.strip() == quick_run.stdout.strip()
    before, rest = quick_run.readme.split(START)
    inside, after = rest.split(END)
    assert before == "# Title\n\nBefore.\n\n"
    assert after == "\n\nAfter.\n"
    assert inside.strip() == quick_run.stdout.strip()


def test_readme_without_markers_is_left_alone(tmp_path: Path) -> None:
    """--update-readme on a file without the markers fails at once and changes nothing."""
    readme = tmp_path / "README.md"
    readme.write_text("# No markers here\n")
    done = _harness("--quick", "--update-readme", str(readme), timeout=60)
    assert done.returncode == 2
    assert "benchmark-results:start" in done.stderr
    assert done.stdout == ""
    assert readme.read_text() == "# No markers here\n"
