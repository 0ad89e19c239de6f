"""A fast read of prometheus_client's multiprocess files, exact to `MultiProcessCollector`.

`MultiProcessCollector` re-reads and re-parses every key (a JSON document) of every file on
every scrape, and rebuilds every sample. But a metric file only grows and an entry's key never
moves once written (`MmapedDict` appends entries and rewrites values in place), so here:

- each file's entries are parsed once (a key shared by several workers' files once for all)
  and cached by path, with the file held open: while it is open its inode cannot be reused, so
  a path still naming the same (device, inode) is the very file parsed before, and a file
  replaced by the archive fold or deleted and re-created under a reused pid is parsed again.
  A scrape `pread`s each file, parses only what was appended, and reads the values through a
  `memoryview` of doubles (entries are 8-byte aligned) with one `itemgetter` call;
- the merged layout (which sample of which metric each entry feeds, in `MultiProcessCollector`'s
  order) is built once per set of files and entries, so a scrape only combines values, in file
  order, with the same arithmetic as prometheus_client (same order of float additions, same
  min/max/most-recent rules);
- the text format and OpenMetrics (what Prometheus asks for) are written from cached line
  prefixes, byte-identical to prometheus_client's encoders; any other encoder gets the merged
  metric families, equal to `MultiProcessCollector`'s.

What this does not model exactly (one metric name in files of several types or gauge modes,
samples a text encoder would move to a `_created`/`_gsum`/`_gcount` block, a NaN bucket
bound) falls back to
`MultiProcessCollector`; so does any error, counted as
`gatewayz_metrics_internal_errors_total{component="multiprocess.fast"}`.

prometheus_client internals relied on (checked by the tests against the installed version):
the `MmapedDict` file layout (4-byte used size, 4 bytes padding, entries of a 4-byte key length,
the UTF-8 key padded so that the value is 8-byte aligned, a float64 value and a float64
timestamp), `mmap_key`'s JSON `[metric_name, name, labels, help]`, the `<type>_<pid>.db` and
`gauge_<mode>_<pid>.db` file names, `MultiProcessCollector._read_metrics` and
`_accumulate_metrics`' rules (sample order included), and the line structure of the text and
OpenMetrics encoders (`_Format` checks what it cuts out of them).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import mmap
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from itertools import accumulate, islice
from operator import add, itemgetter
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from gatewayz_metrics import _compat
from gatewayz_metrics._internal import report_internal_error
from gatewayz_metrics._multiprocess import (
    _locked,
    _mark_dead,
    _merged_registry,
    _pids_raw,
    _sized,
)
from gatewayz_metrics._render import _escape_label_value, format_value

__all__ = ["FastMultiProcessReader"]

_HEADER = 8
_INT = struct.Struct("i")
_SUM, _MIN, _MAX, _LAST, _RECENT = range(5)
_GAUGE_MODES: dict[str, int] = {
    "all": _LAST,
    "liveall": _LAST,
    "min": _MIN,
    "livemin": _MIN,
    "max": _MAX,
    "livemax": _MAX,
    "sum": _SUM,
    "livesum": _SUM,
    "mostrecent": _RECENT,
    "livemostrecent": _RECENT,
}
_OM_SUFFIXES = ("_created", "_gsum", "_gcount")
_Labels = tuple[tuple[str, str], ...]
_Parsed = tuple[str, str, _Labels, str]  # metric name, sample name, sorted labels, help
_serials = itertools.count()


class _UnsupportedError(Exception):
    """Files this reader does not model exactly: prometheus_client's collector reads them."""


class _FileCache:
    """The parsed entries of one metric file, held open so that its inode is never reused.

    While this descriptor is open the inode cannot be freed, so a path that still names the
    same (device, inode) is the very file parsed before: a file replaced by the archive fold
    (`os.replace`), or deleted and created again (a pid reused), has another inode.
    """

    __slots__ = (
        "end",
        "fd",
        "identity",
        "keys",
        "last",
        "parsed",
        "serial",
        "timestamps",
        "values",
    )

    def __init__(self, fd: int, identity: tuple[int, int]) -> None:
        # Never reused, unlike id(): the layout cache is keyed by it.
        self.serial = next(_serials)
        self.fd = fd
        self.identity = identity
        self.end = _HEADER
        self.keys: list[bytes] = []
        self.last = (0, b"")  # offset and bytes of the last key parsed: a sanity check
        self.parsed: list[_Parsed] = []
        self.values: Callable[[Any], tuple[Any, ...]] = _getter(())
        self.timestamps: Callable[[Any], tuple[Any, ...]] = _getter(())

    def moved(self, data: bytes, used: int) -> bool:
        """Whether the parsed entries are no longer where they were (never, for MmapedDict)."""
        start, key = self.last
        return used < self.end or data[start : start + len(key)] != key

    def compile(self, slots: Sequence[int]) -> None:
        self.values = _getter(slots)
        self.timestamps = _getter([slot + 1 for slot in slots])


def _getter(indexes: Sequence[int]) -> Callable[[Any], tuple[Any, ...]]:
    if not indexes:
        return lambda _: ()
    if len(indexes) == 1:
        only = indexes[0]
        return lambda data: (data[only],)
    return itemgetter(*indexes)


class _Metric:
    """The layout of one merged metric family."""

    __slots__ = ("documentation", "groups", "header", "mode", "name", "recent", "typ")

    def __init__(self, name: str, documentation: str, typ: str) -> None:
        self.name = name
        self.documentation = documentation
        self.typ = typ
        self.mode: str | None = None
        self.header = ""
        self.recent = False
        # labels -> sample key -> cell; a histogram's buckets go to `buckets` first.
        self.groups: dict[_Labels, dict[tuple[str, _Labels], Any]] = {}


class _Layout:
    """Which cell each entry of each file feeds, and how the cells become samples."""

    def __init__(self) -> None:
        self.metrics: list[_Metric] = []
        self.init: list[float | None] = []
        self.file_cells: list[list[int]] = []
        self.file_modes: list[int] = []
        # Per metric, the rendered items: (sample name, labels, prefix, kind, payload).
        self.items: list[list[tuple[str, _Labels, str, int, Any]]] = []
        # Per metric, the line prefixes of its items, and their cells when each is one cell.
        # Per metric, how its values are computed: runs of single cells (kind _CELL), and
        # histogram groups (kind _BUCKET: the bucket cells; gives the cumulative counts, then
        # the `_count`).
        self.segments: list[list[tuple[int, list[int]]]] = []
        # Per file, the (start, stop) of its cells when they are consecutive and distinct
        # (every worker writing the same series in the same order): summed as a slice.
        self.file_spans: list[tuple[int, int] | None] = []


# Item kinds, with their payload: one cell's value (the cell); a group's first bucket (its
# cell), starting the running total; a later bucket (its cell), added to the running total;
# the group's `_count` (None), the running total. The float additions are those of
# _accumulate_metrics: 0.0, then each bucket in order of its bound.
_CELL, _FIRST_BUCKET, _BUCKET, _COUNT = 0, 1, 2, 3


class FastMultiProcessReader:
    """Merge the multiprocess files of `path` like `multiprocess_registry`, fast.

    `render(encoder)` gives what `encoder(multiprocess_registry(path))` gives; `collect()`
    the same metric families as `MultiProcessCollector`. Thread-safe (one read at a time).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        registry: CollectorRegistry | None = None,
        retire_dead_workers: bool = True,
    ) -> None:
        self._directory = Path(path)
        # As multiprocess_registry: a reader whose own process writes to the directory (a
        # worker) retires the workers that are gone. The exporter must not: its pid namespace
        # may not be the workers' (a sidecar), where every worker would look dead.
        self._retire = retire_dead_workers
        self._errors_registry = REGISTRY if registry is None else registry
        self._lock = threading.Lock()
        self._files: dict[str, _FileCache] = {}
        self._layout_key: tuple[tuple[str, int, int], ...] | None = None
        self._layout: _Layout | None = None
        self._unsupported_key: tuple[tuple[str, int, int], ...] | None = None
        self._prefixes: dict[tuple[str, _Labels], str] = {}
        self._keys: dict[bytes, _Parsed] = {}
        self._formats: dict[tuple[object, ...], _Format] = {}
        self.fast_reads = 0
        """Reads answered by the fast path (the rest fell back to prometheus_client)."""

    # --- public -----------------------------------------------------------------------

    def render(self, encoder: Callable[[Collector], bytes]) -> bytes:
        """`encoder(multiprocess_registry(path))`, through the fast path when it can."""
        if not _compat.multiprocess_fast():
            return encoder(self._slow_registry())
        try:
            with self._lock:
                layout, values, recent = self._read()
                fmt = self._format(encoder)
                if fmt is not None:
                    body = _render_lines(layout, values, recent, fmt)
                else:
                    body = encoder(_Fixed(_metrics(layout, values, recent)))
                self.fast_reads += 1
                return body
        except _UnsupportedError:
            pass
        except Exception as exc:
            self.close()
            report_internal_error(self._errors_registry, "multiprocess.fast", exc)
        return encoder(self._slow_registry())

    def _slow_registry(self) -> CollectorRegistry:
        """prometheus_client's own merge of the files (retiring workers only if this reader
        may), for what the fast path does not serve."""
        return _merged_registry(self._directory, self._errors_registry, retire=self._retire)

    def _format(self, encoder: Callable[[Collector], bytes]) -> _Format | None:
        key = _encoder_key(encoder)
        if key is None:
            return None
        fmt = self._formats.get(key)
        if fmt is None:
            if len(self._formats) >= 8:  # escaping and version variants: a handful at most
                self._formats.clear()
            fmt = self._formats[key] = _Format(encoder, text=_is_text(encoder))
        return fmt

    def collect(self) -> list[Metric]:
        """The merged metric families, equal to `MultiProcessCollector`'s."""
        if not _compat.multiprocess_fast():
            return list(self._slow_registry().collect())
        with self._lock:
            layout, values, recent = self._read()
            return _metrics(layout, values, recent)

    # --- reading ----------------------------------------------------------------------

    def close(self) -> None:
        """Close the files held open; the next read opens them again."""
        with self._lock:
            self._forget()

    def _forget(self) -> None:
        for cache in self._files.values():
            os.close(cache.fd)
        self._files.clear()
        self._layout_key = None
        self._layout = None

    def __del__(self) -> None:
        for cache in getattr(self, "_files", {}).values():
            with contextlib.suppress(OSError):
                os.close(cache.fd)

    def _read(self) -> tuple[_Layout, list[Any], dict[int, tuple[int, int]]]:
        directory = self._directory
        if self._retire and str(os.getpid()) in _pids_raw(directory):
            # As multiprocess_registry does: retire workers that are gone first.
            try:
                _mark_dead(directory, self._errors_registry)
            except Exception as exc:
                report_internal_error(self._errors_registry, "multiprocess.retire", exc)
        with _locked(directory, exclusive=False):
            files = [str(file) for file in directory.glob("*.db") if _sized(file)]
            snapshots = []
            for file in files:
                snapshot = self._snapshot(file)
                if snapshot is not None:
                    snapshots.append(snapshot)
        live = {path for path, _, _ in snapshots}
        for stale in [path for path in self._files if path not in live]:
            os.close(self._files.pop(stale).fd)
        key = tuple((path, cache.serial, len(cache.keys)) for path, cache, _ in snapshots)
        if key == self._unsupported_key:
            raise _UnsupportedError("unchanged since the last read")
        if key != self._layout_key or self._layout is None:
            try:
                self._layout = _build_layout(snapshots, self._prefixes)
            except _UnsupportedError:
                self._unsupported_key = key
                raise
            self._layout_key = key
            if len(self._prefixes) > 4 * len(self._layout.init) + 1024:
                self._prefixes.clear()  # series gone for good: keep the caches bounded
            if len(self._keys) > 4 * len(self._layout.init) + 1024:
                self._keys.clear()
        values, recent = _combine(self._layout, snapshots)
        return self._layout, values, recent

    def _snapshot(self, path: str) -> tuple[str, _FileCache, memoryview[float]] | None:
        cache = self._files.get(path)
        try:
            status = os.stat(path)
            if cache is not None and cache.identity != (status.st_dev, status.st_ino):
                os.close(self._files.pop(path).fd)
                cache = None
            if cache is None:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                opened = os.fstat(fd)
                cache = self._files[path] = _FileCache(fd, (opened.st_dev, opened.st_ino))
        except FileNotFoundError:
            if os.path.basename(path).startswith("gauge_live"):
                return None  # removed by mark_process_dead since the listing, as upstream
            raise
        # As MmapedDict.read_all_values_from_file: the used size, then that much.
        data = os.pread(cache.fd, mmap.PAGESIZE, 0)
        used = _INT.unpack_from(data, 0)[0]
        if used > len(data):
            data += os.pread(cache.fd, used - len(data), len(data))
        used = min(used, len(data))
        if cache.moved(data, used):
            cache = self._files[path] = _FileCache(cache.fd, cache.identity)
        if cache.end < used:
            _parse(cache, data, used, self._keys)
        # Entries are 8-byte aligned from the start of the file: values are doubles in place.
        doubles = memoryview(data)[: len(data) // 8 * 8].cast("d")
        return path, cache, doubles


def _parse(cache: _FileCache, data: bytes, used: int, known: dict[bytes, _Parsed]) -> None:
    """Parse the entries between `cache.end` and `used`, as `mmap_dict._read_all_values`."""
    pos = cache.end
    slots: list[int] = []
    # The value slots of the entries already cached (their keys did not move).
    at = _HEADER
    for key in cache.keys:
        at += 4 + len(key) + (8 - (len(key) + 4) % 8)
        slots.append(at // 8)
        at += 16
    keys, parsed = cache.keys, cache.parsed
    while pos < used:
        length = _INT.unpack_from(data, pos)[0]
        if length + pos > used:
            raise RuntimeError("Read beyond file size detected, file is corrupted.")
        pos += 4
        raw = data[pos : pos + length]
        cache.last = (pos, raw)
        pos += length + (8 - (length + 4) % 8)
        if pos + 16 > len(data):
            raise RuntimeError("Read beyond file size detected, file is corrupted.")
        entry = known.get(raw)
        if entry is None:
            # Every worker writes the same keys: each is parsed once, whatever the file.
            metric_name, name, labels, help_text = json.loads(raw.decode("utf-8"))
            entry = known[raw] = (metric_name, name, tuple(sorted(labels.items())), help_text)
        keys.append(raw)
        parsed.append(entry)
        slots.append(pos // 8)
        pos += 16
    cache.end = pos
    cache.compile(slots)


# --- merging ----------------------------------------------------------------------------


def _file_kind(path: str) -> tuple[str, str | None, str | None]:
    """Type, gauge mode and pid from a file name, split as MultiProcessCollector does."""
    parts = os.path.basename(path).split("_")
    typ = parts[0]
    if typ == "gauge":
        if len(parts) < 3:
            raise _UnsupportedError(path)
        return typ, parts[1], parts[2][:-3]
    if typ not in ("counter", "histogram", "summary"):
        raise _UnsupportedError(path)
    return typ, None, None


def _build_layout(
    snapshots: Sequence[tuple[str, _FileCache, memoryview[float]]],
    prefixes: dict[tuple[str, _Labels], str],
) -> _Layout:
    layout = _Layout()
    metrics: dict[str, _Metric] = {}
    # First pass, as _read_metrics: which metric each entry belongs to, its type and mode.
    kinds = [_file_kind(path) for path, _, _ in snapshots]
    # Workers write the same series in much the same order, and entries parsed from equal
    # keys are the same objects: where a file starts with the entries of an earlier file of
    # its kind, it feeds the same cells (but for `all` gauges, whose cells are per pid).
    shared: list[tuple[int, int]] = []  # per file: (earlier file, entries in common)
    last_of_kind: dict[tuple[str, str | None], int] = {}
    for index, ((_, cache, _), (typ, mode, _)) in enumerate(zip(snapshots, kinds, strict=True)):
        source, start = -1, 0
        if mode not in ("all", "liveall"):
            earlier = last_of_kind.get((typ, mode))
            if earlier is not None:
                theirs = snapshots[earlier][1].parsed
                length = min(len(cache.parsed), len(theirs))
                if cache.parsed[:length] == theirs[:length]:
                    source, start = earlier, length
            last_of_kind[(typ, mode)] = index
        shared.append((source, start))
        for metric_name, _, _, help_text in islice(cache.parsed, start, None):
            metric = metrics.get(metric_name)
            if metric is None:
                metric = metrics[metric_name] = _Metric(metric_name, help_text, typ)
            elif metric.typ != typ:
                raise _UnsupportedError(metric_name)
            if mode is not None:
                if metric.mode is not None and metric.mode != mode:
                    raise _UnsupportedError(metric_name)
                metric.mode = mode
    # Second pass, as _accumulate_metrics: the cell each entry adds into.
    init = layout.init
    buckets: dict[str, dict[_Labels, dict[float, int]]] = {}

    def cell(metric: _Metric, group: _Labels, sample: tuple[str, _Labels], how: int) -> int:
        cells = metric.groups.setdefault(group, {})
        found = cells.get(sample)
        if found is None:
            found = cells[sample] = len(init)
            init.append(0.0 if how == _SUM else None)
        return found

    for (_, cache, _), (typ, mode, pid), (source, start) in zip(
        snapshots, kinds, shared, strict=True
    ):
        how = _SUM if mode is None else _GAUGE_MODES.get(mode)
        if how is None:
            raise _UnsupportedError(mode)
        file_cells = layout.file_cells[source][:start] if start else []
        for metric_name, name, labels, _ in islice(cache.parsed, start, None):
            metric = metrics[metric_name]
            if typ == "gauge":
                labels = (*labels, ("pid", pid or ""))
                if how != _LAST:
                    labels = tuple(label for label in labels if label[0] != "pid")
                if how == _RECENT:
                    metric.recent = True
                file_cells.append(cell(metric, labels, (name, labels), how))
            elif typ == "histogram":
                for label in labels:
                    if label[0] == "le":
                        bound = float(label[1])
                        if bound != bound:  # NaN: never equal to itself as a dict key
                            raise _UnsupportedError(metric_name)
                        without = tuple(pair for pair in labels if pair[0] != "le")
                        by_bound = buckets.setdefault(metric_name, {}).setdefault(without, {})
                        found = by_bound.get(bound)
                        if found is None:
                            found = by_bound[bound] = len(init)
                            init.append(0.0)
                        file_cells.append(found)
                        break
                else:
                    file_cells.append(cell(metric, labels, (name, labels), _SUM))
            else:
                file_cells.append(cell(metric, labels, (name, labels), _SUM))
        layout.file_cells.append(file_cells)
        layout.file_modes.append(how)
        start = file_cells[0] if file_cells else 0
        consecutive = file_cells == list(range(start, start + len(file_cells)))
        layout.file_spans.append((start, start + len(file_cells)) if consecutive else None)
    # The rendered items of each metric, in MultiProcessCollector's sample order.
    for metric in metrics.values():
        items: list[tuple[str, _Labels, str, int, Any]] = []
        per_group: dict[_Labels, list[tuple[str, _Labels, str, int, Any]]] = {}
        for group, cells in metric.groups.items():
            if metric.recent and len(cells) != 1:
                raise _UnsupportedError(metric.name)
            per_group[group] = [
                (name, labels, _prefix(prefixes, name, labels), _CELL, index)
                for (name, labels), index in cells.items()
            ]
        for group, by_bound in buckets.get(metric.name, {}).items():
            existing = metric.groups.get(group, {})
            group_items = per_group.setdefault(group, [])
            for position, (bound, index) in enumerate(sorted(by_bound.items())):
                labels = (*group, ("le", floatToGoString(bound)))  # type: ignore[no-untyped-call]
                name = metric.name + "_bucket"
                if (name, labels) in existing:
                    raise _UnsupportedError(metric.name)
                prefix = _prefix(prefixes, name, labels)
                kind = _BUCKET if position else _FIRST_BUCKET
                group_items.append((name, labels, prefix, kind, index))
            name = metric.name + "_count"
            if (name, group) in existing:
                raise _UnsupportedError(metric.name)
            group_items.append((name, group, _prefix(prefixes, name, group), _COUNT, None))
        for group_items in per_group.values():
            items.extend(group_items)
        for name, _, _, _, _ in items:
            if any(name == metric.name + suffix for suffix in _OM_SUFFIXES):
                raise _UnsupportedError(metric.name)  # generate_latest would move it to a block
        # Built as prometheus_client builds it: the same validation, the same header.
        family = Metric(metric.name, metric.documentation, metric.typ)
        metric.name = family.name
        metric.header = generate_latest(_Fixed([family])).decode("utf-8")
        layout.metrics.append(metric)
        layout.items.append(items)
        segments: list[tuple[int, list[int]]] = []
        for _, _, _, kind, index in items:
            if kind == _CELL:
                if not segments or segments[-1][0] != _CELL:
                    segments.append((_CELL, []))
                segments[-1][1].append(index)
            elif kind == _FIRST_BUCKET:
                segments.append((_BUCKET, [index]))
            elif kind == _BUCKET:
                segments[-1][1].append(index)
        layout.segments.append(segments)
    return layout


def _prefix(cache: dict[tuple[str, _Labels], str], name: str, labels: _Labels) -> str:
    """What `generate_latest` writes before the value of sample `name{labels}`."""
    found = cache.get((name, labels))
    if found is None:
        metric_name, label_name = _compat.escape_metric_name, _compat.escape_label_name
        assert metric_name is not None  # multiprocess_fast() checked both
        assert label_name is not None
        escaped = metric_name(name, _compat.UNDERSCORES)
        if labels:
            pairs = ",".join(
                f'{label_name(key, _compat.UNDERSCORES)}="{_escape_label_value(value)}"'
                for key, value in sorted(labels)
            )
            found = f"{escaped}{{{pairs}}} "
        else:
            found = f"{escaped} "
        cache[(name, labels)] = found
    return found


def _combine(
    layout: _Layout, snapshots: Sequence[tuple[str, _FileCache, memoryview[float]]]
) -> tuple[list[Any], dict[int, tuple[int, int]]]:
    """Every cell's value, combined in file order with prometheus_client's arithmetic.

    Also, for most-recent gauges, where each cell was first set (a cell never set is not a
    sample, and the samples are ordered by that position, as in _accumulate_metrics).
    """
    acc: list[Any] = layout.init.copy()
    stamps: dict[int, float] = {}
    first: dict[int, tuple[int, int]] = {}
    for file_index, ((_, cache, doubles), cells, how, span) in enumerate(
        zip(snapshots, layout.file_cells, layout.file_modes, layout.file_spans, strict=True)
    ):
        values = cache.values(doubles)
        if how == _SUM and span is not None:
            start, stop = span
            acc[start:stop] = map(add, acc[start:stop], values)
        elif how == _SUM:
            # acc[index] += value for each entry in order, without a Python-level loop: the
            # maps are lazy, so an entry's read of acc follows the previous entry's write.
            _drain(map(acc.__setitem__, cells, map(add, map(acc.__getitem__, cells), values)))
        elif how == _LAST:
            _drain(map(acc.__setitem__, cells, values))
        elif how == _MIN:
            for index, value in zip(cells, values, strict=True):
                current = acc[index]
                if current is None or value < current:
                    acc[index] = value
        elif how == _MAX:
            for index, value in zip(cells, values, strict=True):
                current = acc[index]
                if current is None or value > current:
                    acc[index] = value
        else:
            timestamps = cache.timestamps(doubles)
            for entry, (index, value, stamp) in enumerate(
                zip(cells, values, timestamps, strict=True)
            ):
                if stamps.get(index, 0.0) < float(stamp or 0):
                    acc[index] = value
                    stamps[index] = stamp
                    if index not in first:
                        first[index] = (file_index, entry)
    return acc, first


def _drain(iterator: Iterator[object]) -> None:
    deque(iterator, maxlen=0)


def _recent_order(
    items: list[tuple[str, _Labels, str, int, Any]], first: dict[int, tuple[int, int]]
) -> list[tuple[str, _Labels, str, int, Any]]:
    present = [item for item in items if item[4] in first]
    present.sort(key=lambda item: first[item[4]])
    return present


def _item_values(
    items: list[tuple[str, _Labels, str, int, Any]], acc: list[Any]
) -> Iterable[tuple[tuple[str, _Labels, str, int, Any], float]]:
    total = 0.0
    for item in items:
        kind = item[3]
        if kind == _CELL:
            yield item, acc[item[4]]
            continue
        if kind == _FIRST_BUCKET:
            total = 0.0
        if kind != _COUNT:
            total += acc[item[4]]
        yield item, total


class _Format:
    """How one encoder writes a family's header and a sample's line, learnt from the encoder.

    The text format's line prefixes are built directly (`_prefix`); any other encoder of the
    whitelist (`_encoder_key`) is asked once per family and once per series for a family
    without samples and for a one-sample family, and its header and line prefix are cut out
    of what it wrote. Either way a scrape only appends values to cached prefixes.
    """

    def __init__(self, encoder: Callable[[Collector], bytes], *, text: bool) -> None:
        self.encoder = encoder
        self.text = text
        self.trailer = encoder(_Fixed([])).decode("utf-8")
        self.headers: dict[tuple[str, str, str], str] = {}
        self.prefixes: dict[tuple[str, str, str, _Labels], str] = {}
        self.layout: _Layout | None = None
        self.metric_headers: list[str] = []
        self.metric_prefixes: list[list[str]] = []

    def bind(self, layout: _Layout) -> None:
        if self.layout is layout:
            return
        if len(self.prefixes) > 4 * len(layout.init) + 1024:
            self.prefixes.clear()
        self.metric_headers = [self.header(metric) for metric in layout.metrics]
        self.metric_prefixes = [
            [self.prefix(metric, item) for item in items]
            for metric, items in zip(layout.metrics, layout.items, strict=True)
        ]
        self.layout = layout

    def header(self, metric: _Metric) -> str:
        if self.text:
            return metric.header
        key = (metric.name, metric.documentation, metric.typ)
        found = self.headers.get(key)
        if found is None:
            family = Metric(metric.name, metric.documentation, metric.typ)
            written = self.encoder(_Fixed([family])).decode("utf-8")
            if not written.endswith(self.trailer):
                raise _UnsupportedError("an encoder without a fixed trailer")
            found = self.headers[key] = written[: len(written) - len(self.trailer)]
        return found

    def prefix(self, metric: _Metric, item: tuple[str, _Labels, str, int, Any]) -> str:
        if self.text:
            return item[2]
        name, labels = item[0], item[1]
        key = (metric.name, metric.typ, name, labels)
        found = self.prefixes.get(key)
        if found is None:
            family = Metric(metric.name, "", metric.typ)
            family.samples = [Sample(name, dict(labels), 0.0)]
            written = self.encoder(_Fixed([family])).decode("utf-8")
            lines = [line for line in written.split("\n") if line and line[0] != "#"]
            if len(lines) != 1 or not lines[0].endswith(" 0.0"):
                raise _UnsupportedError("a sample line this reader cannot cut")
            found = self.prefixes[key] = lines[0][:-3]
        return found


def _render_lines(
    layout: _Layout, acc: list[Any], first: dict[int, tuple[int, int]], fmt: _Format
) -> bytes:
    fmt.bind(layout)
    out: list[str] = []
    append = out.append
    get = acc.__getitem__
    for metric, header, items, prefixes, segments in zip(
        layout.metrics,
        fmt.metric_headers,
        layout.items,
        fmt.metric_prefixes,
        layout.segments,
        strict=True,
    ):
        append(header)
        if metric.recent:
            items = _recent_order(items, first)
            prefixes = [fmt.prefix(metric, item) for item in items]
            values = [acc[item[4]] for item in items]
        else:
            values = []
            for kind, cells in segments:
                if kind == _CELL:
                    values.extend(map(get, cells))
                else:
                    # As _accumulate_metrics: 0.0, plus each bucket in order; then the count.
                    running = list(accumulate(map(get, cells), initial=0.0))
                    values.extend(islice(running, 1, None))
                    values.append(running[-1])
        if values:
            append("\n".join(map(add, prefixes, _formatted(values))))
            append("\n")
    append(fmt.trailer)
    return "".join(out).encode("utf-8")


def _formatted(values: list[float]) -> Iterable[str]:
    """`format_value` of each value; `repr` (what it returns then) when all are plain floats."""
    try:
        total = math.fsum(values)
    except (OverflowError, ValueError):
        return map(format_value, values)
    # A finite sum: no NaN and no infinity. Below 1e6 floatToGoString is repr.
    if total - total == 0.0 and max(values) < 1e6:
        return map(repr, values)
    return map(format_value, values)


def _metrics(layout: _Layout, acc: list[Any], first: dict[int, tuple[int, int]]) -> list[Metric]:
    families = []
    for metric, items in zip(layout.metrics, layout.items, strict=True):
        family = Metric(metric.name, metric.documentation, metric.typ)
        if metric.recent:
            items = _recent_order(items, first)
        family.samples = [
            Sample(name, dict(labels), value)
            for (name, labels, _, _, _), value in _item_values(items, acc)
        ]
        families.append(family)
    return families


class _Fixed:
    """A collector yielding the given metric families."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        return self._metrics


def _encoder_key(encoder: Callable[[Collector], bytes]) -> tuple[object, ...] | None:
    """prometheus_client's text or OpenMetrics encoder, with keyword options only: a key."""
    func, keywords = encoder, {}
    if isinstance(encoder, partial):
        if encoder.args:
            return None
        func, keywords = encoder.func, encoder.keywords
    if func is not generate_latest and func is not openmetrics_latest:
        return None
    return (func, *sorted(keywords.items()))


def _is_text(encoder: Callable[[Collector], bytes]) -> bool:
    """Whether `encoder` writes the 0.0.4 text format (the bytes `_render_text` writes)."""
    if isinstance(encoder, partial):
        return (
            encoder.func is generate_latest
            and not encoder.args
            and encoder.keywords == {"escaping": _compat.UNDERSCORES}
        )
    return encoder is generate_latest
