"""The fast multiprocess read path gives exactly what `MultiProcessCollector` gives."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _exposition import FAST_READER_ONLY, PROMETHEUS_ACCEPT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector

from gatewayz_metrics import _mpread, multiprocess_registry, retire_worker
from gatewayz_metrics._mpread import FastMultiProcessReader

pytestmark = FAST_READER_ONLY

REPO_ROOT = Path(__file__).resolve().parent.parent
# The text format, OpenMetrics, what Prometheus' Accept gets, and a UTF-8 text variant.
ENCODERS: tuple[Callable[[Collector], bytes], ...] = (
    generate_latest,
    openmetrics_latest,
    choose_encoder(PROMETHEUS_ACCEPT)[0],
    choose_encoder("text/plain;version=1.0.0;escaping=allow-utf-8")[0],
)
PID_BASE = 10_000_000  # above any pid_max: these writers are dead workers from the start
BOUNDS = ("0.1", "1.0", "+Inf")
GAUGE_MODES = (
    "all", "liveall", "min", "max", "sum", "mostrecent",
    "livemin", "livemax", "livesum", "livemostrecent",
)  # fmt: skip
KINDS = ("counter", "histogram", "summary", *(f"gauge_{mode}" for mode in GAUGE_MODES))

values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1.0, 1e6, 123456789.0, 0.1]),
)
label_values = st.sampled_from(["a", "b", 'q"uote', "back\\slash", "new\nline", "é", ""])
# One write: (kind, label value, value, timestamp, documentation variant)
writes = st.tuples(
    st.sampled_from(KINDS),
    label_values,
    values,
    st.sampled_from([0.0, 1.0, 2.0, 5.0, 1e9]),
    st.sampled_from(["Help.", "Other help with \\ and\nnewline."]),
)
workers = st.lists(st.lists(writes, max_size=12), min_size=1, max_size=4)


def metric_name(kind: str) -> str:
    """One metric per kind, named after it."""
    return "m_" + kind


def write_file(
    directory: Path, kind: str, pid: str, entries: list[tuple[str, float, float]]
) -> None:
    """Write (key, value, timestamp) entries as prometheus_client's MmapedDict does."""
    db = MmapedDict(str(directory / f"{kind}_{pid}.db"))  # type: ignore[no-untyped-call]
    try:
        for key, value, timestamp in entries:
            db.write_value(key, value, timestamp)  # type: ignore[no-untyped-call]
    finally:
        db.close()  # type: ignore[no-untyped-call]


def write_worker(directory: Path, pid: int, ops: list[tuple[str, str, float, float, str]]) -> None:
    """The files one worker process would leave, from its random writes."""
    files: dict[str, list[tuple[str, float, float]]] = {}
    for kind, label, value, timestamp, documentation in ops:
        name = metric_name(kind)
        entries = files.setdefault(kind, [])
        if kind == "counter":
            keys = [mmap_key(name, name + "_total", ["l"], [label], documentation)]
        elif kind == "summary":
            keys = [
                mmap_key(name, name + suffix, ["l"], [label], documentation)
                for suffix in ("_count", "_sum")
            ]
        elif kind == "histogram":
            # As Histogram creates them: _sum first, then each bucket.
            keys = [mmap_key(name, name + "_sum", ["l"], [label], documentation)]
            keys += [
                mmap_key(name, name + "_bucket", ["l", "le"], [label, bound], documentation)
                for bound in BOUNDS
            ]
        else:
            keys = [mmap_key(name, name, ["l"], [label], documentation)]
        entries.extend((key, value, timestamp) for key in keys)
    for kind, entries in files.items():
        write_file(directory, kind, str(pid), entries)


def upstream(directory: Path) -> list[Metric]:
    """What prometheus_client's collector (as MetricsApp runs it) merges."""
    return list(multiprocess_registry(directory).collect())


def shape(metrics: list[Metric]) -> list[object]:
    """The families as comparable data: repr() tells NaN from NaN equal, and -0.0 from 0.0."""
    return [
        (
            metric.name,
            metric.documentation,
            metric.type,
            metric.unit,
            [(s.name, list(s.labels.items()), repr(s.value), s.timestamp) for s in metric.samples],
        )
        for metric in metrics
    ]


def assert_same(directory: Path, reader: FastMultiProcessReader) -> None:
    """Samples, text and OpenMetrics bodies are prometheus_client's, from the fast path."""
    before = reader.fast_reads
    assert shape(reader.collect()) == shape(upstream(directory))
    for encoder in ENCODERS:
        expected = encoder(multiprocess_registry(directory))
        assert reader.render(encoder) == expected
    assert reader.fast_reads == before + len(ENCODERS), "the fast path fell back"


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    first=workers,
    later=workers,
    retire=st.lists(st.integers(0, 3), max_size=3),
)
def test_random_writers_merge_exactly(
    first: list[list[tuple[str, str, float, float, str]]],
    later: list[list[tuple[str, str, float, float, str]]],
    retire: list[int],
) -> None:
    """Random writers, several pids, all gauge modes; then growth and the archive fold: exact."""
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        reader = FastMultiProcessReader(directory)
        for index, ops in enumerate(first):
            write_worker(directory, PID_BASE + index, ops)
        assert_same(directory, reader)
        # Dead workers retired (live gauges dropped, the rest folded into the archive files,
        # which are replaced), then workers append to their files and new ones start.
        for index in sorted(set(retire)):
            if index < len(first):
                retire_worker(PID_BASE + index, directory)
        for index, ops in enumerate(later):
            write_worker(directory, PID_BASE + 2 * index, ops)
        assert_same(directory, reader)
        assert_same(directory, reader)  # everything cached: values read again


series = st.tuples(
    st.sampled_from(KINDS), label_values, st.sampled_from(["Help.", "Other help with \\ too."])
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    common=st.lists(series, max_size=10),
    workers=st.lists(
        st.tuples(st.lists(values, min_size=10, max_size=10), st.lists(writes, max_size=4)),
        min_size=2,
        max_size=4,
    ),
)
def test_workers_writing_the_same_series_merge_exactly(
    common: list[tuple[str, str, str]],
    workers: list[tuple[list[float], list[tuple[str, str, float, float, str]]]],
) -> None:
    """Workers sharing their first series (shared cells in the layout), then diverging: exact."""
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        reader = FastMultiProcessReader(directory)
        for index, (worker_values, extra) in enumerate(workers):
            ops = [
                (kind, label, value, 1.0 + index, documentation)
                for (kind, label, documentation), value in zip(
                    common, worker_values[: len(common)], strict=True
                )
            ]
            write_worker(directory, PID_BASE + index, ops + extra)
        assert_same(directory, reader)
        for index, (_, extra) in enumerate(workers):
            write_worker(directory, PID_BASE + index, extra[::-1])  # more series, appended
        assert_same(directory, reader)


def test_a_file_replaced_in_place_is_parsed_again(tmp_path: Path) -> None:
    """Same path and size, other keys (a pid reused): the cached keys are not trusted."""
    reader = FastMultiProcessReader(tmp_path)
    key_a = mmap_key("a", "a_total", ["l"], ["x"], "A.")
    key_b = mmap_key("b", "b_total", ["l"], ["y"], "B.")
    write_file(tmp_path, "counter", str(PID_BASE), [(key_a, 1.0, 0.0)])
    assert_same(tmp_path, reader)
    (tmp_path / f"counter_{PID_BASE}.db").unlink()
    write_file(tmp_path, "counter", str(PID_BASE), [(key_b, 2.0, 0.0)])
    assert_same(tmp_path, reader)
    assert b"b_total" in reader.render(generate_latest)
    assert b"a_total" not in reader.render(generate_latest)


def test_an_error_falls_back_to_prometheus_client_and_is_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: CollectorRegistry
) -> None:
    """A fault in the fast path: the body is prometheus_client's, the fault is counted."""
    from gatewayz_metrics import _mpread

    write_file(
        tmp_path, "counter", str(PID_BASE), [(mmap_key("a", "a_total", [], [], "A."), 3.0, 0)]
    )
    reader = FastMultiProcessReader(tmp_path, registry=registry)

    def broken(*_: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(_mpread, "_build_layout", broken)
    assert reader.render(generate_latest) == generate_latest(multiprocess_registry(tmp_path))
    assert reader.fast_reads == 0
    assert (
        registry.get_sample_value(
            "gatewayz_metrics_internal_errors_total", {"component": "multiprocess.fast"}
        )
        == 1.0
    )
    monkeypatch.undo()
    assert_same(tmp_path, reader)  # and the next read is fast again


def test_one_name_in_two_types_is_left_to_prometheus_client(tmp_path: Path) -> None:
    """A name written as a counter by one worker and a gauge by another: upstream's answer."""
    write_file(tmp_path, "counter", "1", [(mmap_key("x", "x_total", [], [], "X."), 1.0, 0)])
    write_file(tmp_path, "gauge_all", "2", [(mmap_key("x", "x", [], [], "X."), 2.0, 0)])
    registry = CollectorRegistry()
    reader = FastMultiProcessReader(tmp_path, registry=registry)
    assert reader.render(generate_latest) == generate_latest(multiprocess_registry(tmp_path))
    assert reader.fast_reads == 0
    assert (
        registry.get_sample_value(
            "gatewayz_metrics_internal_errors_total", {"component": "multiprocess.fast"}
        )
        is None
    )  # not a fault: a state the fast path leaves to prometheus_client


GROWER = textwrap.dedent(
    """
    import sys, time
    from prometheus_client.mmap_dict import MmapedDict, mmap_key
    db = MmapedDict(sys.argv[1])
    print("ready", flush=True)
    for i in range(int(sys.argv[2])):
        # New series (the file grows, and is resized past 64 KiB) and increments of old ones.
        db.write_value(mmap_key("grow", "grow_total", ["i"], [str(i)], "Grows."), 1.0, 0.0)
        db.write_value(mmap_key("grow", "grow_total", ["i"], ["0"], "Grows."), float(i), 0.0)
    db.close()
    """
)


def test_a_file_growing_during_the_reads_is_read_consistently(tmp_path: Path) -> None:
    """A writer appends thousands of series while scrapes run: every read is whole and fast."""
    total = 4000
    path = tmp_path / "counter_1.db"
    reader = FastMultiProcessReader(tmp_path)
    seen: list[int] = []
    with subprocess.Popen(
        [sys.executable, "-c", GROWER, str(path), str(total)],
        stdout=subprocess.PIPE,
        cwd=REPO_ROOT,
    ) as writer:
        assert writer.stdout is not None
        assert writer.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 60
        while writer.poll() is None and time.monotonic() < deadline:
            families = reader.collect()
            series = {sample.labels["i"] for family in families for sample in family.samples}
            # Entries appear in the order written: a read sees a prefix of them, no gap.
            assert series == {str(i) for i in range(len(series))}
            seen.append(len(series))
        assert writer.wait(timeout=60) == 0
    assert seen == sorted(seen)
    assert len(set(seen)) > 1, "no read happened while the file grew"
    assert_same(tmp_path, reader)
    assert len(reader.collect()[0].samples) == total


def test_a_live_gauge_removed_between_listing_and_reading_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """mark_process_dead removing a live gauge's file mid-read is not an error, as upstream."""
    key = mmap_key("g", "g", [], [], "G.")
    write_file(tmp_path, "gauge_livesum", str(PID_BASE), [(key, 1.0, 0)])
    write_file(tmp_path, "gauge_livesum", str(PID_BASE + 1), [(key, 2.0, 0)])
    registry = CollectorRegistry()
    reader = FastMultiProcessReader(tmp_path, registry=registry)
    gone = str(tmp_path / f"gauge_livesum_{PID_BASE}.db")
    listed: list[str] = []
    unlinked: list[str] = []
    real_sized = _mpread._sized  # type: ignore[attr-defined]
    real_stat = os.stat

    def listing(file: Path) -> bool:
        # The listing sees the file (it is there) ...
        if str(file) == gone:
            listed.append(gone)
        return real_sized(file)

    def racing_stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        # ... and the read that follows finds it gone. (Patched at the reader's own call:
        # Python 3.10's pathlib keeps its own reference to os.stat.)
        if str(path) == gone and listed and not unlinked:
            os.unlink(gone)
            unlinked.append(gone)
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_mpread, "_sized", listing)
    monkeypatch.setattr(os, "stat", racing_stat)
    body = reader.render(generate_latest)
    monkeypatch.undo()
    assert listed == unlinked == [gone]
    assert b"g 2.0\n" in body
    assert reader.fast_reads == 1


@pytest.mark.parametrize("retire", [True, False], ids=["worker", "exporter"])
def test_only_a_reader_that_may_retire_retires_dead_workers(tmp_path: Path, retire: bool) -> None:
    """A worker's reader retires dead workers as multiprocess_registry does; the exporter's not."""
    key = mmap_key("g", "g", [], [], "G.")
    write_file(tmp_path, "gauge_livesum", str(os.getpid()), [(key, 1.0, 0)])  # this process
    write_file(tmp_path, "gauge_livesum", str(PID_BASE), [(key, 2.0, 0)])  # a dead worker
    reader = FastMultiProcessReader(tmp_path, retire_dead_workers=retire)
    body = reader.render(generate_latest)
    assert (b"g 1.0\n" in body) is retire
    assert (tmp_path / f"gauge_livesum_{PID_BASE}.db").exists() is not retire
