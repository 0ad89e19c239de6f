"""`_compat`: prometheus_client's internals are checked once, and anything unproven renders
through prometheus_client's own encoders, with the same bytes."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from gatewayz_metrics import _compat, _render, multiprocess_registry
from gatewayz_metrics._mpread import FastMultiProcessReader
from gatewayz_metrics._render import OPENMETRICS, TEXT, Format, Renderer


@pytest.fixture
def fresh_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The once-per-process checks forgotten for the test, and restored after it."""
    monkeypatch.setattr(_render, "_verdicts", {})
    monkeypatch.setattr(_compat, "_checked", [])


def sample_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    counter = Counter("requests", "Requests.", ["path"], registry=registry)
    counter.labels('a"b').inc(3, exemplar={"trace_id": "t"})
    Histogram("latency", "Latency.", ["path"], registry=registry).labels("/").observe(0.2)
    return registry


def test_the_installed_release_passes_every_structural_check() -> None:
    """On the releases of the test matrix every internal means what the renderer assumes."""
    assert _compat.structure_problem() is None
    assert _compat.PROVEN[0] <= _compat.VERSION[:2] <= _compat.PROVEN[1]


@pytest.mark.parametrize("fmt", [TEXT, OPENMETRICS], ids=["text", "openmetrics"])
@pytest.mark.usefixtures("fresh_verdicts")
def test_an_unproven_release_renders_through_prometheus_client(
    fmt: Format, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A prometheus_client release outside the tested range: its own encoder, same bytes."""
    monkeypatch.setattr(_compat, "VERSION", (_compat.PROVEN[1][0], _compat.PROVEN[1][1] + 1, 0))
    fast_calls: list[str] = []

    async def spy(self: Renderer, registry: CollectorRegistry, fmt: Format) -> bytes:
        fast_calls.append(fmt.name)
        raise AssertionError("the fast path must not run")

    monkeypatch.setattr(Renderer, "_render_fast", spy)
    registry = sample_registry()
    with caplog.at_level(logging.WARNING, logger="gatewayz_metrics"):
        body = asyncio.run(Renderer().render(registry, fmt))
    assert body == fmt.encode(registry)
    assert fast_calls == []
    assert "outside the proven range" in caplog.text


@pytest.mark.usefixtures("fresh_verdicts")
def test_a_field_that_keeps_its_name_but_changes_meaning_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Histogram buckets stored cumulatively (same attribute, new meaning): fast path off."""

    def observe_cumulative(self: Any, amount: float, exemplar: Any = None) -> None:
        self._sum.inc(amount)
        for bound, bucket in zip(self._upper_bounds, self._buckets, strict=True):
            if amount <= bound:
                bucket.inc(1)

    monkeypatch.setattr(Histogram, "observe", observe_cumulative)
    problem = _compat.structure_problem()
    assert problem is not None
    assert "_buckets" in problem
    assert asyncio.run(_render._fast_path_proven(TEXT)) is False


@pytest.mark.usefixtures("fresh_verdicts")
def test_a_probe_that_renders_differently_turns_the_fast_path_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Should the fast path write other bytes than prometheus_client, it is not used."""
    monkeypatch.setattr(_render, "format_exemplar", lambda exemplar: " # {}")
    registry = sample_registry()
    body = asyncio.run(Renderer().render(registry, OPENMETRICS))
    assert body == openmetrics.generate_latest(registry)  # type: ignore[no-untyped-call]
    assert _render._verdicts == {"openmetrics": False}
    # The text format has no exemplars: its own probe still passes.
    assert asyncio.run(Renderer().render(registry, TEXT)) == generate_latest(registry)
    assert _render._verdicts["text"] is True


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("", "text"),
        ("text/plain; version=0.0.4", "text"),
        ("application/openmetrics-text; version=1.0.0", "openmetrics"),
        ("application/openmetrics-text", "openmetrics"),
        ("application/openmetrics-text; version=1.0.0; escaping=allow-utf-8", None),
        ("application/openmetrics-text; version=2.0.0", None),
        ("text/plain; version=1.0.0; escaping=allow-utf-8", None),
    ],
)
def test_only_encoders_the_fast_path_reproduces_are_recognised(
    accept: str, expected: str | None
) -> None:
    """Other escapings and OpenMetrics 2.0 (native histograms) go to prometheus_client."""
    from prometheus_client.exposition import choose_encoder

    encoder, _ = choose_encoder(accept)
    if _compat.UNDERSCORES is None and expected is None:
        pytest.skip("prometheus_client < 0.23 has no escaping schemes nor OpenMetrics 2.0")
    assert _compat.format_of(encoder) == expected


def test_an_unproven_release_reads_multiprocess_files_through_prometheus_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside the proven range the fast multiprocess reader steps aside: the answer is
    `MultiProcessCollector`'s, and no read is counted as fast."""
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    values = MmapedDict(str(tmp_path / "counter_11.db"))  # type: ignore[no-untyped-call]
    values.write_value(mmap_key("jobs", "jobs_total", [], [], "Jobs."), 3.0, 0.0)  # type: ignore[no-untyped-call]
    values.close()  # type: ignore[no-untyped-call]
    monkeypatch.setattr(_compat, "MULTIPROCESS_PROVEN", ((0, 1), (0, 1)))
    reader = FastMultiProcessReader(tmp_path, retire_dead_workers=False)
    expected = generate_latest(multiprocess_registry(tmp_path))
    assert reader.render(generate_latest) == expected
    assert b"jobs_total 3.0" in expected
    assert reader.fast_reads == 0
    assert [family.name for family in reader.collect()] == ["jobs"]


def test_the_multiprocess_internals_are_where_the_package_expects_them() -> None:
    """`MmapedDict`'s methods and `MultiProcessCollector.merge` exist on the installed release,
    and the value class answers whether multiprocess mode is on."""
    assert _compat.multiprocess_structure_problem() is None
    assert _compat.multiprocess_mode() is False  # the test process writes no files
    assert _compat.MMAP_HEADER_BYTES == 8


def test_workers_are_not_retired_on_a_release_without_the_expected_file_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should `MmapedDict` change, retiring dead workers stops (counted) before any file is
    rewritten, and the files stay as they are."""
    from gatewayz_metrics._multiprocess import _retire_locked

    dead = tmp_path / "counter_999999.db"
    values = _compat.MmapedDict(str(dead))
    values.write_value("x", 1.0, 0.0)
    values.close()
    before = dead.read_bytes()
    monkeypatch.setattr(_compat.MmapedDict, "read_all_values_from_file", None)
    with pytest.raises(RuntimeError, match="read_all_values_from_file is missing"):
        _retire_locked(tmp_path, [999999], CollectorRegistry())
    assert dead.read_bytes() == before


def test_the_release_is_read_without_importlib_metadata() -> None:
    """The version from the `.dist-info` name equals what `importlib.metadata` reports."""
    from importlib.metadata import version

    assert _compat._dist_info_version() == version("prometheus-client")
