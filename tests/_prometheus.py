"""The demo gateway and a real Prometheus as subprocesses, started one way for every end to
end test: free loopback ports, a log file each, readiness polling, stopped in every case."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from _binaries import require_binary
from _servers import LOOPBACK, free_port, served
from promql_queries import REPO_ROOT

STARTUP_SECONDS = 20.0


@contextmanager
def demo_gateway(log: Path, env: Mapping[str, str]) -> Iterator[str]:
    """`python -m examples.gateway` without built-in traffic on a free loopback port, with
    `env` added to this process's environment; yields its base URL and stops it in every
    case."""
    port = free_port()
    command = [sys.executable, "-m", "examples.gateway", "--host", LOOPBACK]
    command += ["--port", str(port), "--no-traffic", "--log-level", "warning"]
    environment = {**os.environ, **env}
    with served(
        command, log, port, "/health", cwd=REPO_ROOT, env=environment, timeout=STARTUP_SECONDS
    ) as url:
        yield url


def scrape_job(job: str, static_config: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """A scrape configuration of `static_config` (its targets and labels) every second, plus
    `extra` keys."""
    return {
        "job_name": job,
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        **extra,
        "static_configs": [dict(static_config)],
    }


def write_config(directory: Path, config: Mapping[str, Any]) -> Path:
    """`config` as `directory`/prometheus.yml."""
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")
    return path


@contextmanager
def prometheus_server(
    tmp_path: Path, directory: Path, config: Path, flags: Sequence[str] = ()
) -> Iterator[str]:
    """A real Prometheus on a free loopback port reading `config` (run in `directory`, with
    its data under `tmp_path`), with extra command line `flags`; yields its base URL and stops
    it in every case."""
    binary = require_binary("prometheus")
    port = free_port()
    log = tmp_path / "prometheus.log"
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        f"--web.listen-address={LOOPBACK}:{port}",
        *flags,
    ]
    with served(command, log, port, "/-/ready", cwd=directory, timeout=STARTUP_SECONDS) as url:
        yield url
