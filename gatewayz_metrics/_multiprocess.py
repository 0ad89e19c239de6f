"""Several worker processes, one view: prometheus_client's multiprocess mode, made safe to run.

prometheus_client keeps one set of memory-mapped `.db` files per process in
`PROMETHEUS_MULTIPROC_DIR`, and `MultiProcessCollector` merges them at scrape time. What it
leaves to the application is done here:

- `check_multiproc_dir`, at start-up: the directory exists, is writable, holds nothing from an
  earlier run, and prometheus_client really is in multiprocess mode in this process.
- retiring a dead worker (`gunicorn_child_exit`, `mark_dead_workers`): its `live*` gauges are
  removed (`mark_process_dead`), and its counters, histograms and non-live gauges are folded
  into one archive file per kind, so no count is lost and the number of files (which is what a
  scrape costs) stays bounded by the live workers however often workers are replaced.
- `multiprocess_registry`, at scrape time: retires workers that are gone (uvicorn `--workers`
  has no exit hook), then reads the files under a shared lock, so that a scrape never sees a
  dead worker's counts both in its own file and in the archive, or in neither.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, values
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from gatewayz_metrics._internal import logger, report_internal_error

if sys.platform != "win32":
    import fcntl

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

ARCHIVE = "archive"
"""The 'pid' part of the files that hold the counts of retired workers."""

_LOCK_NAME = "gatewayz-metrics.lock"  # not *.db: MultiProcessCollector never reads it
_HEADER_BYTES = 8  # MmapedDict: bytes used (4), padding (4)
_FILE = re.compile(r"^(?P<prefix>counter|histogram|summary|gauge_[a-z]+)_(?P<pid>[^_]+)\.db$")
# What folding does with two values of one series. `gauge_all` keeps one series per pid (the
# pid label is its meaning), so it cannot be folded and stays as it is.
_SUM, _MIN, _MAX, _LATEST = "sum", "min", "max", "latest"
_FOLD: dict[str, str] = {
    "counter": _SUM,
    "histogram": _SUM,  # bucket files hold per-bucket counts: they add up
    "summary": _SUM,
    "gauge_sum": _SUM,
    "gauge_min": _MIN,
    "gauge_max": _MAX,
    "gauge_mostrecent": _LATEST,
}


def check_multiproc_dir(
    path: str | os.PathLike[str] | None = None, *, clean_stale: bool = False
) -> Path:
    """Validate the multiprocess directory at start-up, before any worker starts.

    Call it once in the process that starts the workers (gunicorn's `on_starting` hook, or
    the launcher of `uvicorn --workers`). `path` defaults to `PROMETHEUS_MULTIPROC_DIR`.
    Raises `ValueError` naming the directory when it is unset, missing, not a directory, not
    writable, differs from `PROMETHEUS_MULTIPROC_DIR`, when prometheus_client was imported in
    this process before the variable was set, or when it holds metric files of an earlier run
    (their counts would be added to this run's); `clean_stale=True` deletes those instead.
    Returns the directory as an absolute `Path`.
    """
    env = os.environ.get(MULTIPROC_DIR_ENV) or None
    if path is None:
        if env is None:
            raise ValueError(
                f"{MULTIPROC_DIR_ENV} is not set: set it to an empty directory before starting "
                "the workers, so that every worker's prometheus_client writes its metrics there"
            )
        path = env
    directory = Path(path).absolute()
    if not directory.exists():
        raise ValueError(
            f"{MULTIPROC_DIR_ENV} directory {str(directory)!r} does not exist: create it "
            "(mkdir -p) before starting the workers"
        )
    if not directory.is_dir():
        raise ValueError(f"{MULTIPROC_DIR_ENV} {str(directory)!r} is not a directory")
    _check_writable(directory)
    if env is not None and Path(env).absolute() != directory:
        raise ValueError(
            f"the multiprocess directory checked, {str(directory)!r}, is not the one the "
            f"workers write to: {MULTIPROC_DIR_ENV}={env!r}"
        )
    if env is not None and not getattr(values.ValueClass, "_multiprocess", False):
        raise ValueError(
            f"{MULTIPROC_DIR_ENV} is set to {env!r}, but prometheus_client was imported in this "
            "process before it was set, so its metrics are kept per process and never reach "
            "the directory; set the variable before anything imports prometheus_client (in "
            "the environment that starts the server, not in application code)"
        )
    stale = _stale_files(directory)
    if stale and not clean_stale:
        shown = ", ".join(file.name for file in stale[:5])
        more = f" and {len(stale) - 5} more" if len(stale) > 5 else ""
        raise ValueError(
            f"{MULTIPROC_DIR_ENV} directory {str(directory)!r} holds {len(stale)} metric "
            f"file(s) of an earlier run ({shown}{more}): their counts would be added to this "
            "run's. Empty the directory before the workers start, or pass clean_stale=True."
        )
    with _locked(directory, exclusive=True):
        for file in stale:
            with contextlib.suppress(FileNotFoundError):
                file.unlink()
    return directory


def gunicorn_child_exit(server: object, worker: object) -> None:
    """gunicorn's `child_exit` hook: retire the worker that just exited.

    In gunicorn.conf.py: `child_exit = gunicorn_child_exit` (or call it from your own hook).
    Runs in the arbiter after the worker is reaped, however it died (SIGKILL included).
    Never raises: an exception in a gunicorn hook would take the arbiter down.
    """
    pid = getattr(worker, "pid", None)
    if not isinstance(pid, int):
        return
    try:
        retire_worker(pid)
    except Exception:
        logger.exception("gatewayz-metrics: could not retire the files of worker %d", pid)


def retire_worker(pid: int, path: str | os.PathLike[str] | None = None) -> None:
    """Retire the worker process `pid`, which must have exited.

    Its `live*` gauges disappear (prometheus_client's `mark_process_dead`); its counters,
    histograms, summaries and `sum`/`min`/`max`/`mostrecent` gauges are folded into the
    archive files, so every count it made stays in the sums while its files go away.
    Raises `ValueError` if `pid` is still running: its later counts would be lost.
    """
    directory = _directory(path)
    if _alive(pid):
        raise ValueError(
            f"process {pid} is still running: retiring it would lose the counts it makes later"
        )
    with _locked(directory, exclusive=True):
        mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
        _fold(directory, str(pid))


def mark_dead_workers(path: str | os.PathLike[str] | None = None) -> tuple[int, ...]:
    """Retire every worker whose files are in the directory but whose process is gone.

    For servers without an exit hook (`uvicorn --workers`): `MetricsApp` calls it on every
    multiprocess scrape. Liveness is judged by pid, so call it only from a process in the
    workers' pid namespace (a sidecar container sharing the directory would see every worker
    as dead). Returns the pids retired.
    """
    directory = _directory(path)
    retired = []
    for pid in sorted(_pids(directory)):
        if not _alive(pid):
            retire_worker(pid, directory)
            retired.append(pid)
    return tuple(retired)


def multiprocess_registry(path: str | os.PathLike[str] | None = None) -> CollectorRegistry:
    """A registry that serves the merged metrics of all workers in the directory.

    Each collection first retires workers that are gone (only when the collecting process
    itself writes to the directory, a sign that it shares the workers' pid namespace), then reads
    the files under a shared lock, so that a worker being retired at that moment is counted
    exactly once.
    """
    registry = CollectorRegistry()
    _LockedCollector(registry, str(_directory(path)))
    return registry


class _LockedCollector(MultiProcessCollector):
    """`MultiProcessCollector` that retires dead workers and reads under the shared lock."""

    def __init__(self, registry: CollectorRegistry, path: str) -> None:
        super().__init__(registry, path)  # type: ignore[no-untyped-call]
        self._directory = Path(path)

    def collect(self) -> Iterable[Metric]:
        directory = self._directory
        if str(os.getpid()) in _pids_raw(directory):
            try:
                mark_dead_workers(directory)
            except Exception as exc:
                # The scrape goes on: a dead worker's files left in place are still summed.
                report_internal_error(REGISTRY, "multiprocess.retire", exc)
        with _locked(directory, exclusive=False):
            # What MultiProcessCollector.collect does, without the files it cannot read.
            # merge() reads every file before it returns: nothing is read after the unlock.
            files = [str(file) for file in directory.glob("*.db") if _sized(file)]
            return list(self.merge(files, accumulate=True))  # type: ignore[no-untyped-call]


# --- internals ---------------------------------------------------------------------------


def _directory(path: str | os.PathLike[str] | None) -> Path:
    if path is None:
        env = os.environ.get(MULTIPROC_DIR_ENV)
        if not env:
            raise ValueError(f"{MULTIPROC_DIR_ENV} is not set and no path was given")
        path = env
    return Path(path)


def _check_writable(directory: Path) -> None:
    # os.access is not enough: root passes it on a read-only mount. Create a file.
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".gatewayz-metrics-", suffix=".tmp")
    except OSError as exc:
        raise ValueError(
            f"{MULTIPROC_DIR_ENV} directory {str(directory)!r} is not writable "
            f"({exc.strerror or exc}): every worker must be able to create its files there"
        ) from None
    os.close(fd)
    os.unlink(name)


def _stale_files(directory: Path) -> list[Path]:
    # Files of this very process are not stale: gunicorn with preload_app creates metrics in
    # the arbiter before on_starting runs.
    own = str(os.getpid())
    return sorted(
        file
        for file in directory.glob("*.db")
        if (match := _FILE.match(file.name)) is None or match["pid"] != own
    )


def _pids_raw(directory: Path) -> set[str]:
    found = set()
    for name in os.listdir(directory):
        match = _FILE.match(name)
        if match is not None:
            found.add(match["pid"])
    return found


def _pids(directory: Path) -> set[int]:
    return {int(pid) for pid in _pids_raw(directory) if pid.isdigit()}


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    # A zombie has exited and will never write again; its parent just has not reaped it.
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            state = stat.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state != b"Z"


@contextlib.contextmanager
def _locked(directory: Path, *, exclusive: bool) -> Iterator[None]:
    if sys.platform == "win32":  # pragma: no cover - no flock; and no folding (see _fold)
        yield
        return
    fd = os.open(directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _sized(file: Path) -> bool:
    """Whether `file` is long enough to hold the header of a metric file.

    A worker killed between creating its file and sizing it (a SIGKILL, the OOM killer)
    leaves it empty: it holds no value, and prometheus_client fails to read it, which
    would fail every scrape until the file is removed.
    """
    try:
        return file.stat().st_size >= _HEADER_BYTES
    except FileNotFoundError:
        return False  # a live gauge's file, removed by mark_process_dead since the glob


def _fold(directory: Path, pid: str) -> None:
    """Fold the files of `pid` into the archive files; the caller holds the exclusive lock."""
    if sys.platform == "win32":  # pragma: no cover - without a lock, readers could count twice
        return
    for prefix, how in _FOLD.items():
        source = directory / f"{prefix}_{pid}.db"
        if not source.exists():
            continue
        if not _sized(source):
            source.unlink()  # nothing was ever written to it
            continue
        archive = directory / f"{prefix}_{ARCHIVE}.db"
        merged: dict[str, tuple[float, float]] = {}
        for file in (archive, source):
            if file.exists():
                entries = MmapedDict.read_all_values_from_file(str(file))  # type: ignore[no-untyped-call]
                for key, value, timestamp, _ in entries:
                    merged[key] = _combine(how, merged.get(key), (value, timestamp))
        # Written aside and renamed: a reader that ignores the lock sees the old archive or
        # the new one, never half of one.
        partial = directory / f".{prefix}_{ARCHIVE}.db.partial"
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        out = MmapedDict(str(partial))  # type: ignore[no-untyped-call]
        try:
            for key, (value, timestamp) in merged.items():
                out.write_value(key, value, timestamp)  # type: ignore[no-untyped-call]
        finally:
            out.close()  # type: ignore[no-untyped-call]
        os.replace(partial, archive)
        source.unlink()


def _combine(
    how: str, old: tuple[float, float] | None, new: tuple[float, float]
) -> tuple[float, float]:
    if old is None:
        return new
    if how == _SUM:
        return old[0] + new[0], 0.0
    if how == _MIN:
        return (old if old[0] <= new[0] else new)[0], 0.0
    if how == _MAX:
        return (old if old[0] >= new[0] else new)[0], 0.0
    return new if new[1] > old[1] else old  # latest: the later timestamp wins
