"""Several hosts and long retention: the configs under examples/prometheus/scale-out, for real.

Each example config passes `promtool check config`. Then, on 127.0.0.1: three replicas of the
example app, a Prometheus "A" that finds them through the example's file_sd targets, evaluates
the recording rules and remote-writes to a Prometheus "B" (the example long-term store, with
its remote-write receiver on), and B federating A's recording rules. B must end up with every
replica's raw series, labelled with `instance` and `replica`, summing to what each replica
served, and with the recording-rule series.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from _binaries import require_binary
from _servers import free_port, kill_session, start_logged
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parent.parent
SCALE_OUT = REPO_ROOT / "examples" / "prometheus" / "scale-out"
RECORDING_RULES = REPO_ROOT / "examples" / "prometheus" / "recording_rules.yml"
CONFIGS = ("prometheus.yml", "long-term-store.yml", "kubernetes.yml")
APP = "examples.multiprocess.app:app"
REQUESTS = (5, 8, 11)  # per replica: different, so that a mixed-up label shows
DEADLINE = 60.0


def promtool_check(config: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check config` on `config`."""
    promtool = require_binary("promtool")
    return subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60
    )


def load(name: str) -> Any:
    """An example config of the scale-out directory."""
    return yaml.safe_load((SCALE_OUT / name).read_text(encoding="utf-8"))


@pytest.mark.prometheus
@pytest.mark.parametrize("name", CONFIGS, ids=CONFIGS)
def test_example_config_passes_promtool(name: str, tmp_path: Path) -> None:
    """promtool check config accepts each scale-out example, rule files included."""
    result = promtool_check(SCALE_OUT / name)
    if "field kubernetes_sd_configs not found" in result.stdout + result.stderr:
        # Debian's Prometheus is built without Kubernetes discovery: check everything else (the
        # relabelling above all) with the discovery block standing in for a static one.
        config = load(name)
        for job in config["scrape_configs"]:
            assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
            job["static_configs"] = [{"targets": ["gateway:8000"]}]
        config["rule_files"] = [str(RECORDING_RULES)]
        stand_in = tmp_path / name
        stand_in.write_text(yaml.safe_dump(config), encoding="utf-8")
        result = promtool_check(stand_in)
    assert result.returncode == 0, result.stdout + result.stderr


def test_targets_give_each_replica_its_label() -> None:
    """The file_sd example has one target group per replica, each with a distinct `replica`."""
    groups = json.loads((SCALE_OUT / "targets.json").read_text(encoding="utf-8"))
    replicas = [group["labels"]["replica"] for group in groups]
    assert len(groups) >= 2
    assert len(set(replicas)) == len(replicas)
    assert all(len(group["targets"]) == 1 for group in groups)


def test_remote_write_leaves_recording_rules_to_federation() -> None:
    """A remote-writes no recording-rule series, which B federates: none arrives twice."""
    (remote,) = load("prometheus.yml")["remote_write"]
    (drop,) = remote["write_relabel_configs"]
    assert (drop["source_labels"], drop["action"]) == (["__name__"], "drop")
    (federate,) = load("long-term-store.yml")["scrape_configs"]
    (match,) = federate["params"]["match[]"]
    assert drop["regex"] in match
    assert federate["honor_labels"] is True


class Processes:
    """Processes started by one test, each in its own session, all killed at the end."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        """Start `argv`, logging to `name`.log."""
        log = self.logs / f"{name}.log"
        process = start_logged(argv, log, cwd=REPO_ROOT, env=env, new_session=True)
        self.started.append((name, process))

    def check_running(self) -> None:
        """Fail with its log if a process has exited."""
        for name, process in self.started:
            if process.poll() is not None:
                log = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"{name} exited with {process.returncode}:\n{log}")

    def stop(self) -> None:
        """Kill every process started, with its children."""
        for _, process in self.started:
            kill_session(process)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """A `Processes` whose processes are killed when the test ends."""
    started = Processes(tmp_path)
    yield started
    started.stop()


def wait_for(
    processes: Processes, condition: Callable[[], Any], what: str, timeout: float = DEADLINE
) -> Any:
    """Poll `condition` until it returns something truthy, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        processes.check_running()
        try:
            last = condition()
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
        time.sleep(0.25)


def query(port: int, promql: str) -> list[dict[str, Any]]:
    """The result vector of an instant query against the Prometheus on `port`."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    response = httpx.get(url, timeout=5)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def answers(url: str) -> Callable[[], bool]:
    """A condition: the app at `url` answers its /metrics."""
    return lambda: httpx.get(f"{url}/metrics", timeout=5).is_success


def send(ports: list[int]) -> None:
    """Send each replica its number of requests, and check it counted them all."""
    for port, count in zip(ports, REQUESTS, strict=True):
        before = served(port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            for _ in range(count):
                client.get("/v1/completions").raise_for_status()
        assert served(port) == before + count


def served(port: int) -> float:
    """The `http_requests_total` sum a replica itself reports."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "http_requests_total"
    )


def prometheus_a(config: dict[str, Any], targets: Path, long_term_port: int) -> dict[str, Any]:
    """The example cluster Prometheus, pointed at loopback and sped up."""
    config = copy.deepcopy(config)
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RECORDING_RULES)]
    (job,) = config["scrape_configs"]
    job.update(scrape_interval="1s", scrape_timeout="1s")
    job["file_sd_configs"][0].update(files=[str(targets)], refresh_interval="1s")
    (remote,) = config["remote_write"]
    remote["url"] = f"http://127.0.0.1:{long_term_port}/api/v1/write"
    remote["queue_config"]["batch_send_deadline"] = "1s"
    return config


def prometheus_b(config: dict[str, Any], a_port: int) -> dict[str, Any]:
    """The example long-term store, federating from the Prometheus on `a_port`."""
    config = copy.deepcopy(config)
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{a_port}"]}]
    return config


@pytest.mark.slow
@pytest.mark.prometheus
def test_replicas_reach_the_long_term_store_with_their_labels(
    tmp_path: Path, processes: Processes
) -> None:
    """file_sd -> A -> remote write -> B, and B federating A's rules: labels and sums exact."""
    prometheus = require_binary("prometheus")
    ports = [free_port() for _ in REQUESTS]
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["PYTHONPATH"] = "."
    for index, port in enumerate(ports):
        processes.start(
            f"replica{index}",
            [sys.executable, "-m", "uvicorn", APP, "--no-access-log",
             "--host", "127.0.0.1", "--port", str(port)],
            env,
        )  # fmt: skip

    # The example targets file, each group's address swapped for a replica on loopback.
    groups = json.loads((SCALE_OUT / "targets.json").read_text(encoding="utf-8"))
    for group, port in zip(groups, ports, strict=True):
        group["targets"] = [f"127.0.0.1:{port}"]
    expected = {
        (f"127.0.0.1:{port}", group["labels"]["replica"]): float(count)
        for group, port, count in zip(groups, ports, REQUESTS, strict=True)
    }
    targets = tmp_path / "targets.json"
    targets.write_text(json.dumps(groups), encoding="utf-8")

    a_port, b_port = free_port(), free_port()
    configs = {
        "a": prometheus_a(load("prometheus.yml"), targets, b_port),
        "b": prometheus_b(load("long-term-store.yml"), a_port),
    }
    for name, config in configs.items():
        path = tmp_path / f"prometheus-{name}.yml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        assert promtool_check(path).returncode == 0
    processes.start(
        "prometheus-b",
        [prometheus, f"--config.file={tmp_path / 'prometheus-b.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data-b'}", f"--web.listen-address=127.0.0.1:{b_port}",
         "--web.enable-remote-write-receiver"],
    )  # fmt: skip
    processes.start(
        "prometheus-a",
        [prometheus, f"--config.file={tmp_path / 'prometheus-a.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data-a'}", f"--web.listen-address=127.0.0.1:{a_port}"],
    )  # fmt: skip

    for port in ports:
        wait_for(processes, answers(f"http://127.0.0.1:{port}"), f"replica {port}")
    send(ports)

    def raw_sums() -> dict[tuple[str, str], float] | None:
        promql = 'sum by (instance, replica) (http_requests_total{job="gatewayz-api"})'
        sums = {
            (series["metric"]["instance"], series["metric"]["replica"]): float(series["value"][1])
            for series in query(b_port, promql)
        }
        return sums if sums == expected else None

    wait_for(processes, raw_sums, "B to hold every replica's remote-written requests")
    # A second round, now that A has scraped the first: the sums follow, and the rates that
    # the recording rules compute from the increase become non-zero.
    send(ports)
    expected = {key: 2 * value for key, value in expected.items()}
    wait_for(processes, raw_sums, "B to hold the second round too")

    def federated() -> list[dict[str, Any]]:
        return query(b_port, 'job:http_requests:rate5m{job="gatewayz-api"} > 0')

    (rule,) = wait_for(processes, federated, "B to federate A's recording rules")
    # Federated with A's external labels and the target labels the rule keeps.
    assert rule["metric"]["cluster"] == "eu-1"
    assert rule["metric"]["prometheus"] == "gatewayz-a"
    assert rule["metric"]["environment"] == "production"
    assert query(b_port, 'up{job="federate-gatewayz"} == 1')
    # Remote write drops rule series (prometheus.yml): what B has of them came by federation.
    assert query(b_port, 'scrape_samples_scraped{job="federate-gatewayz"} > 0')
    tokens = 'provider_model:tokens_used_output:rate5m{provider="demo", model="demo-model"}'
    wait_for(processes, lambda: query(b_port, tokens), "the token rule to be federated")
