"""What a result was measured on: machine, interpreter, package versions, date."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

# Distribution names whose versions a result depends on, in the order they are shown.
DISTRIBUTIONS = (
    "gatewayz-metrics",
    "prometheus-client",
    "starlette",
    "uvicorn",
    "h11",
    "starlette-exporter",
    "prometheus-fastapi-instrumentator",
    "opentelemetry-instrumentation-asgi",
    "opentelemetry-sdk",
    "starlette-prometheus",
)


def version(distribution: str) -> str | None:
    """The installed version of `distribution`, or None when it is not installed."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> int:
    # What `nproc` prints: the cores this process may run on, not those of the host.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _commit(repo: Path) -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "gatewayz_metrics"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} + uncommitted changes in gatewayz_metrics/" if dirty else head


def _load() -> str:
    # Other work on the machine is the main source of noise; say how much there was.
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


@dataclass(frozen=True, slots=True)
class Machine:
    """The facts printed at the top of every results table."""

    date: str
    cpu: str
    cores: int
    python: str
    system: str
    commit: str
    versions: tuple[tuple[str, str | None], ...]
    load: str

    @staticmethod
    def describe(repo: Path) -> Machine:
        now = datetime.datetime.now(datetime.timezone.utc)
        return Machine(
            date=now.strftime("%Y-%m-%d %H:%M UTC"),
            cpu=_cpu_model(),
            cores=_cores(),
            python=f"{platform.python_implementation()} {platform.python_version()}",
            system=f"{platform.system()} {platform.release()} {platform.machine()}",
            commit=_commit(repo),
            versions=tuple((name, version(name)) for name in DISTRIBUTIONS),
            load=_load(),
        )
