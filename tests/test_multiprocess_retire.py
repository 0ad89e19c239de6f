"""Retiring dead workers: every gauge mode once, pid reuse, races, damaged files; `name[]`.

The files are written by real short-lived processes (prometheus_client in multiprocess mode);
the expected values are what prometheus_client's own `MultiProcessCollector` merges from the
same files before anything is retired.
"""

from __future__ import annotations

import asyncio
import os
import struct
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from _asgi import ScriptedReceive, http_scope
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.parser import text_string_to_metric_families
from test_multiprocess import REPO_ROOT, merged, parse

import gatewayz_metrics._multiprocess as mp
from gatewayz_metrics import MetricsApp
from gatewayz_metrics.multiprocess import mark_dead_workers, multiprocess_registry, retire_worker

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
MODES = ("all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum")
MODES_TIMED = ("mostrecent", "livemostrecent")
FOLDED_MODES = ("all", "min", "max", "sum", "mostrecent")

# One worker: a gauge of every mode, a counter, a histogram; values exact in binary, so that
# sums do not depend on the order of adding.
WORKER = textwrap.dedent(
    """
    import sys, time
    from prometheus_client import Counter, Gauge, Histogram

    step = int(sys.argv[1])
    modes = sys.argv[2].split(",")
    for mode in modes:
        Gauge(f"g_{mode}", "a gauge", ["k"], multiprocess_mode=mode).labels("a").set(step + 0.5)
    Counter("c", "a counter", ["k"]).labels("a").inc(step + 1)
    Histogram("h", "a histogram", buckets=(1, 4)).observe(0.25 * (step + 1))
    if len(sys.argv) > 3:  # stay alive, files mapped, until stdin closes
        print("ready", flush=True)
        sys.stdin.read()
    """
)


def worker_env(directory: Path) -> dict[str, str]:
    """The environment of a worker writing to `directory`."""
    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": "."}


def run_workers(directory: Path, count: int, modes: tuple[str, ...] = MODES + MODES_TIMED) -> None:
    """Run `count` workers one after the other; each exits when done."""
    for step in range(count):
        subprocess.run(
            [sys.executable, "-c", WORKER, str(step), ",".join(modes)],
            env=worker_env(directory), cwd=REPO_ROOT, check=True, timeout=60,
        )  # fmt: skip


@pytest.fixture
def live_worker(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """A worker that has written its files and keeps running (its files stay mapped)."""
    process = subprocess.Popen(
        [sys.executable, "-c", WORKER, "7", ",".join(MODES), "stay"],
        env=worker_env(tmp_path), cwd=REPO_ROOT, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    with process:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        yield process
        assert process.stdin is not None
        process.stdin.close()
        process.wait(timeout=30)


def db_files(directory: Path) -> list[str]:
    """The metric files in `directory`, sorted."""
    return sorted(file.name for file in directory.glob("*.db"))


def without_pid(samples: Samples) -> Samples:
    """The samples with the `pid` label dropped (of gauges that are not per process)."""
    return {
        (name, tuple(label for label in labels if label[0] != "pid")): value
        for (name, labels), value in samples.items()
    }


def family(samples: Samples, name: str) -> Samples:
    """The samples called `name`."""
    return {key: value for key, value in samples.items() if key[0] == name}


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime in ns) of every file: what a rewrite would change."""
    return {
        file.name: (file.stat().st_ino, file.stat().st_mtime_ns)
        for file in directory.iterdir()
        if file.name.endswith(".db")
    }


# --- every gauge mode, retired once ------------------------------------------------------


def test_many_dead_workers_of_every_mode_leave_one_file_per_kind(tmp_path: Path) -> None:
    """8 dead workers x every gauge mode: archives only, sums exact, live gauges gone."""
    workers = 8
    run_workers(tmp_path, workers)
    before = merged(tmp_path)
    assert len(db_files(tmp_path)) == workers * (len(MODES) + len(MODES_TIMED) + 2)

    assert len(mark_dead_workers(tmp_path)) == workers
    after = merged(tmp_path)

    assert db_files(tmp_path) == sorted(
        ["counter_archive.db", "histogram_archive.db"]
        + [f"gauge_{mode}_archive.db" for mode in FOLDED_MODES]
    )
    for name in ("c_total", "h_bucket", "h_count", "h_sum", "g_min", "g_max", "g_sum"):
        assert family(after, name) == family(before, name), name
    # mostrecent: the value with the latest timestamp, as MultiProcessCollector picks it.
    assert family(after, "g_mostrecent") == family(before, "g_mostrecent")
    for mode in ("liveall", "livemin", "livemax", "livesum", "livemostrecent"):
        assert family(after, f"g_{mode}") == {}, mode
    # all: one series per pid before; now one, pid="archive", the worker retired last.
    assert len(family(before, "g_all")) == workers
    assert family(after, "g_all") == {("g_all", (("k", "a"), ("pid", "archive"))): workers - 0.5}


def test_a_second_retire_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run twice, retiring finds nobody the second time: no lock taken, no file rewritten."""
    run_workers(tmp_path, 3)
    assert len(mark_dead_workers(tmp_path)) == 3
    files = snapshot(tmp_path)
    locks: list[bool] = []
    locked = mp._locked

    def recording_lock(directory: Path, *, exclusive: bool) -> object:
        locks.append(exclusive)
        return locked(directory, exclusive=exclusive)

    monkeypatch.setattr(mp, "_locked", recording_lock)
    assert mark_dead_workers(tmp_path) == ()
    assert locks == []
    assert snapshot(tmp_path) == files


def test_new_workers_keep_adding_to_the_archive(tmp_path: Path) -> None:
    """Workers come and go in rounds: the file count stays bounded and the sums exact."""
    for _ in range(3):
        run_workers(tmp_path, 2, modes=("all", "sum", "livesum"))
        mark_dead_workers(tmp_path)
    samples = merged(tmp_path)
    kinds = ("counter", "gauge_all", "gauge_sum", "histogram")
    assert db_files(tmp_path) == [f"{kind}_archive.db" for kind in kinds]
    assert samples[("c_total", (("k", "a"),))] == 3 * (1 + 2)
    assert samples[("h_count", ())] == 6
    assert samples[("g_sum", (("k", "a"),))] == 3 * (0.5 + 1.5)


def test_the_known_gauge_modes_are_prometheus_clients() -> None:
    """Every gauge mode prometheus_client has is folded or dropped (a new one fails here)."""
    known = {kind.removeprefix("gauge_") for kind in (*mp._FOLD, *mp._DROP)}
    known -= {"counter", "histogram", "summary"}
    assert known == set(Gauge._MULTIPROC_MODES)


def test_a_file_kind_it_does_not_know_is_left_alone_and_not_retried(tmp_path: Path) -> None:
    """A dead pid with only a file of an unknown kind: not 'retired' again on every scrape."""
    run_workers(tmp_path, 1, modes=("sum",))
    mark_dead_workers(tmp_path)
    unknown = tmp_path / "gauge_future_999999.db"
    unknown.write_bytes((tmp_path / "gauge_sum_archive.db").read_bytes())
    assert mark_dead_workers(tmp_path) == ()
    assert unknown.exists()


# --- liveness and pid reuse ----------------------------------------------------------------


def test_a_live_worker_that_maps_its_files_is_never_retired(
    tmp_path: Path, live_worker: subprocess.Popen[str]
) -> None:
    """A running worker's files are mapped by it: they stay, retire_worker refuses."""
    files = db_files(tmp_path)
    assert mark_dead_workers(tmp_path) == ()
    assert db_files(tmp_path) == files
    with pytest.raises(ValueError, match="still running"):
        retire_worker(live_worker.pid, tmp_path)


def test_a_reused_pid_does_not_keep_a_dead_workers_files(tmp_path: Path) -> None:
    """The pid of a dead worker, now another process that maps none of its files: retired."""
    run_workers(tmp_path, 1)
    dead_pid = int(next(tmp_path.glob("counter_*.db")).stem.partition("_")[2])
    before = merged(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)  # fmt: skip
    try:
        for file in tmp_path.glob(f"*_{dead_pid}.db"):  # as if `other` had taken the pid
            file.rename(file.with_name(file.name.replace(str(dead_pid), str(other.pid))))
        assert mark_dead_workers(tmp_path) == (other.pid,)
    finally:
        assert other.stdin is not None
        other.stdin.close()
        other.wait(timeout=30)
    after = merged(tmp_path)
    assert family(after, "c_total") == family(before, "c_total")
    assert family(after, "g_livesum") == {}  # its in-progress-like gauge no longer counts


def test_a_pid_taken_between_the_check_and_the_fold_keeps_its_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the pid comes alive (maps its files) after the first look, nothing is folded."""
    run_workers(tmp_path, 1, modes=("sum", "livesum"))
    files = snapshot(tmp_path)
    looks: list[int] = []

    def alive_from_the_third_look(pid: int, directory: Path) -> bool:
        looks.append(pid)
        return len(looks) >= 3  # dead before the lock and under it, alive before committing

    monkeypatch.setattr(mp, "_writer_alive", alive_from_the_third_look)
    assert mark_dead_workers(tmp_path) == ()
    assert len(looks) == 3
    assert snapshot(tmp_path) == files  # no archive written, no file removed
    assert not list(tmp_path.glob(".*partial"))


# --- races and damaged files -------------------------------------------------------------


def test_two_scrapes_retiring_at_once_count_every_worker_once(tmp_path: Path) -> None:
    """Two threads retire the same dead workers at the same moment: each is folded once."""
    workers = 4
    run_workers(tmp_path, workers, modes=("sum", "all"))
    before = merged(tmp_path)
    barrier = threading.Barrier(2)
    results: list[tuple[int, ...]] = []

    def retire() -> None:
        barrier.wait()
        results.append(mark_dead_workers(tmp_path))

    threads = [threading.Thread(target=retire) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    retired = [pid for result in results for pid in result]
    assert len(retired) == len(set(retired)) == workers
    after = merged(tmp_path)
    for name in ("c_total", "h_count", "h_sum", "g_sum"):
        assert family(after, name) == family(before, name)


def test_a_truncated_file_of_a_dead_worker_is_set_aside(tmp_path: Path) -> None:
    """A file cut short fails every read; retiring sets it aside and the scrape works again."""
    run_workers(tmp_path, 2, modes=("sum",))
    victim, other = sorted(tmp_path.glob("counter_*.db"))
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / other.name).write_bytes(other.read_bytes())
    survivors = merged(alone)[("c_total", (("k", "a"),))]
    data = victim.read_bytes()
    # The header says more bytes are used than the file holds.
    victim.write_bytes(struct.pack("i", len(data) * 4) + data[4:16])
    with pytest.raises(Exception):  # noqa: B017, PT011 - prometheus_client's own failure
        merged(tmp_path)
    errors = (
        REGISTRY.get_sample_value(
            "gatewayz_metrics_internal_errors_total", {"component": "multiprocess.unreadable"}
        )
        or 0.0
    )

    assert len(mark_dead_workers(tmp_path)) == 2
    samples = merged(tmp_path)  # readable again
    assert samples[("c_total", (("k", "a"),))] == survivors  # the cut file's counts are lost
    assert (tmp_path / f"{victim.name}.unreadable").exists()
    assert (
        REGISTRY.get_sample_value(
            "gatewayz_metrics_internal_errors_total", {"component": "multiprocess.unreadable"}
        )
        == errors + 1
    )


def test_an_empty_file_of_a_worker_killed_at_creation_is_removed(tmp_path: Path) -> None:
    """A zero-byte file (killed between creating and sizing it) is removed, not read."""
    run_workers(tmp_path, 1, modes=("sum",))
    (tmp_path / "counter_999999.db").touch()
    retired = mark_dead_workers(tmp_path)
    assert 999999 in retired
    assert not (tmp_path / "counter_999999.db").exists()
    assert merged(tmp_path)[("c_total", (("k", "a"),))] == 1


# --- name[] in multiprocess mode -----------------------------------------------------------


NAMES = ("c_total", "h_bucket", "h_count", "g_sum")


def single_process_sample_names(names: tuple[str, ...]) -> set[str]:
    """Which sample names `restricted_registry(names)` keeps for the same metrics, one process."""
    registry = CollectorRegistry()
    Counter("c", "a counter", ["k"], registry=registry).labels("a").inc()
    Histogram("h", "a histogram", buckets=(1, 4), registry=registry).observe(0.25)
    Gauge("g_sum", "a gauge", ["k"], registry=registry).labels("a").set(1)
    text = generate_latest(registry.restricted_registry(names)).decode()
    return {name for name, _ in parse(text)}


def test_restricted_multiprocess_registry_keeps_the_named_samples(tmp_path: Path) -> None:
    """`restricted_registry` of the multiprocess registry filters by sample name, as in one
    process (`_created` aside: multiprocess mode has none)."""
    run_workers(tmp_path, 2, modes=("sum",))
    registry = multiprocess_registry(tmp_path)
    samples = parse(generate_latest(registry.restricted_registry(NAMES)).decode())
    assert {name for name, _ in samples} == single_process_sample_names(NAMES) == set(NAMES)
    assert samples[("c_total", (("k", "a"),))] == 1 + 2
    assert samples[("h_count", ())] == 2
    assert ("h_sum", ()) not in samples
    nothing = generate_latest(registry.restricted_registry(["c", "nope"])).decode()
    assert nothing == ""  # the family name alone selects no sample, as in one process


async def test_metrics_app_answers_name_filters_in_multiprocess_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`GET /metrics?name[]=c_total&name[]=h_count` on the multiprocess MetricsApp."""
    run_workers(tmp_path, 2, modes=("sum",))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    app = MetricsApp()
    sent: list[dict[str, object]] = []

    async def send(message: object) -> None:
        sent.append(dict(message))  # type: ignore[call-overload]

    scope = http_scope("/metrics", query_string=b"name[]=c_total&name[]=h_count")
    await asyncio.wait_for(app(scope, ScriptedReceive([{"type": "http.request"}]), send), 10)
    body = sent[1]["body"]
    assert isinstance(body, bytes)
    families = list(text_string_to_metric_families(body.decode()))
    samples = {(s.name, s.value) for f in families for s in f.samples}
    assert samples == {("c_total", 3.0), ("h_count", 2.0)}
