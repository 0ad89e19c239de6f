"""Several worker processes, one view: prometheus_client's multiprocess mode, made safe to run.

prometheus_client keeps one set of memory-mapped `.db` files per process in
`PROMETHEUS_MULTIPROC_DIR`, and `MultiProcessCollector` merges them at scrape time. What it
leaves to the application is done here:

- `check_multiproc_dir`, at start-up: the directory exists, is writable, holds nothing from an
  earlier run, and prometheus_client really is in multiprocess mode in this process.
- refusing to serve from a directory the workers cannot write (`multiproc_dir_problem`): the
  middleware fails the ASGI lifespan start-up with the reason instead of failing every request.
- retiring a dead worker (`gunicorn_child_exit`, `mark_dead_workers`), exactly once: its
  `live*` gauges are removed, and its counters, histograms, summaries and every other gauge
  mode are folded into one archive file per kind, so no count is lost and the number of files
  (which is what a scrape costs) stays bounded by the live workers however often workers are
  replaced.
- `multiprocess_registry`, at scrape time: retires workers that are gone (uvicorn `--workers`
  has no exit hook), then reads the files under a shared lock, so that a scrape never sees a
  dead worker's counts both in its own file and in the archive, or in neither.

The archive files are ordinary prometheus_client files named `<kind>_archive.db` (for example
`counter_archive.db`, `gauge_all_archive.db`): any reader of the directory that takes the shared
`flock` on `gatewayz-metrics.lock` while it reads sees every count exactly once.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import RestrictedRegistry

from gatewayz_metrics import _compat
from gatewayz_metrics._internal import logger, report_internal_error
from gatewayz_metrics._types import ASGIApp, Receive, Scope, Send

if sys.platform != "win32":
    import fcntl

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"

ARCHIVE = "archive"
"""The 'pid' part of the files that hold the counts of retired workers."""

_LOCK_NAME = "gatewayz-metrics.lock"  # not *.db: MultiProcessCollector never reads it
_HEADER_BYTES = _compat.MMAP_HEADER_BYTES
_FILE = re.compile(r"^(?P<kind>counter|histogram|summary|gauge_[a-z]+)_(?P<pid>[^_]+)\.db$")
# What folding does with two values of one series, per kind of file.
_SUM, _MIN, _MAX, _LATEST = "sum", "min", "max", "latest"
_FOLD: dict[str, str] = {
    "counter": _SUM,
    "histogram": _SUM,  # bucket files hold per-bucket counts: they add up
    "summary": _SUM,
    "gauge_sum": _SUM,
    "gauge_min": _MIN,
    "gauge_max": _MAX,
    "gauge_mostrecent": _LATEST,
    # `all` keeps one series per pid. A dead worker's series would stay forever, one more per
    # worker ever started; folded, the dead workers' last values share one series per label
    # set, labelled pid="archive", holding the value of the worker retired last (of workers
    # retired together, the one whose file was written last).
    "gauge_all": _LATEST,
}
# The gauges of live processes only: a dead worker's are removed (prometheus_client's
# `mark_process_dead` does the same).
_DROP = frozenset(
    f"gauge_{mode}" for mode in ("liveall", "livesum", "livemin", "livemax", "livemostrecent")
)
# pid -> start time (in clock ticks since boot) of the processes seen writing their files.
_writers: dict[int, bytes] = {}
_UNAVAILABLE = (
    b"metrics unavailable: the multiprocess directory cannot be used (see the server log)\n"
)


class MultiprocDirError(ValueError):
    """The multiprocess directory cannot hold this process's metrics; the message says why."""


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
    _check_usable(directory)
    if env is not None and Path(env).absolute() != directory:
        raise ValueError(
            f"the multiprocess directory checked, {str(directory)!r}, is not the one the "
            f"workers write to: {MULTIPROC_DIR_ENV}={env!r}"
        )
    if env is not None and not _multiprocess_mode():
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


def gunicorn_on_starting(server: object) -> None:
    """gunicorn's `on_starting` hook: `check_multiproc_dir(clean_stale=True)` in the arbiter.

    In gunicorn.conf.py: `on_starting = gunicorn_on_starting`. gunicorn refuses to start,
    with the reason, when the directory is missing or not writable; the files of an earlier
    run are deleted.
    """
    check_multiproc_dir(clean_stale=True)


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

    Its `live*` gauges disappear (as with prometheus_client's `mark_process_dead`); its
    counters, histograms, summaries and other gauges are folded into the archive files, so
    every count it made stays in the sums while its files go away. Retiring a worker twice
    does nothing the second time. Raises `ValueError` if `pid` is still running and writing
    its files: its later counts would be lost.
    """
    directory = _directory(path)
    if _writer_alive(pid, directory):
        raise ValueError(
            f"process {pid} is still running: retiring it would lose the counts it makes later"
        )
    with _locked(directory, exclusive=True):
        # A gunicorn hook in the arbiter: no application registry here, the default one.
        _retire_locked(directory, [pid], REGISTRY)


def mark_dead_workers(path: str | os.PathLike[str] | None = None) -> tuple[int, ...]:
    """Retire every worker whose files are in the directory but whose process is gone.

    For servers without an exit hook (`uvicorn --workers`): `MetricsApp` calls it on every
    multiprocess scrape. It takes the exclusive lock only when there is a worker to retire.
    Liveness is judged by pid, so call it only from a process in the workers' pid namespace
    (a sidecar container sharing the directory would see every worker as dead). A process that
    now has the pid of a dead worker but does not map its files (the pid was reused) does not
    keep them alive. Returns the pids retired.
    """
    return _mark_dead(path, REGISTRY)


def _mark_dead(path: str | os.PathLike[str] | None, errors: CollectorRegistry) -> tuple[int, ...]:
    """`mark_dead_workers`, counting faults of ours in `errors` (the serving app's registry)."""
    directory = _directory(path)
    pids = _pids(directory)
    for gone in set(_writers) - pids:  # set(): a copy in one step, safe beside other threads
        _writers.pop(gone, None)
    dead = [pid for pid in sorted(pids) if not _writer_alive(pid, directory)]
    if not dead:
        return ()
    with _locked(directory, exclusive=True):
        return _retire_locked(directory, dead, errors)


def multiprocess_registry(
    path: str | os.PathLike[str] | None = None, *, retire_dead_workers: bool = True
) -> CollectorRegistry:
    """A registry that serves the merged metrics of all workers in the directory.

    Each collection first retires workers that are gone (only when the collecting process
    itself writes to the directory, a sign that it shares the workers' pid namespace), then reads
    the files under a shared lock, so that a worker being retired at that moment is counted
    exactly once. `restricted_registry(names)` (what `?name[]=` uses) keeps the samples so
    named, as it does in single-process mode. Raises `ValueError`
    naming the problem when the directory is missing or not a directory.
    `retire_dead_workers=False` only reads (a process outside the workers' pid namespace,
    such as the exporter, must never judge them dead).
    """
    return _merged_registry(path, REGISTRY, retire=retire_dead_workers)


def _merged_registry(
    path: str | os.PathLike[str] | None, errors: CollectorRegistry, *, retire: bool = True
) -> CollectorRegistry:
    """`multiprocess_registry`, counting faults of ours in `errors` (the app's registry)."""
    directory = _directory(path)
    if not directory.is_dir():
        raise MultiprocDirError(
            f"{MULTIPROC_DIR_ENV} directory {str(directory)!r} does not exist or is not a directory"
        )
    registry = _MultiprocessRegistry()
    _LockedCollector(registry, str(directory), errors, retire=retire)
    return registry


def multiproc_dir_problem() -> str | None:
    """Why this process cannot write its metrics to the multiprocess directory, or `None`.

    `None` when prometheus_client is not in multiprocess mode. Cheap enough for start-up
    (a stat and one temporary file), not for every request.
    """
    if not _multiprocess_mode():
        return None
    env = os.environ.get(MULTIPROC_DIR_ENV) or os.environ.get(MULTIPROC_DIR_ENV.lower())
    if not env:
        return (
            f"prometheus_client is in multiprocess mode but {MULTIPROC_DIR_ENV} is no longer "
            "set: leave it set for the whole life of the process"
        )
    try:
        _check_usable(Path(env).absolute())
    except ValueError as exc:
        return str(exc)
    return None


async def serve_refused(
    problem: str, app: ASGIApp, scope: Scope, receive: Receive, send: Send, *, metrics: bool
) -> None:
    """Serve `scope` while the multiprocess directory is unusable (`problem` says why).

    The ASGI lifespan start-up fails with `problem`, so the server (uvicorn, gunicorn's
    uvicorn worker, hypercorn) logs it and exits instead of answering every request with a
    500. A server run without lifespan serves the application unmeasured, and the metrics
    endpoint (`metrics`) answers 503.
    """
    kind = scope.get("type")
    if kind == "lifespan":
        message = await receive()
        if message.get("type") == "lifespan.startup":
            await send({"type": "lifespan.startup.failed", "message": problem})
        else:
            await send({"type": "lifespan.shutdown.complete"})
        return
    if kind == "http" and metrics:
        await send_unavailable(send, head=scope.get("method") == "HEAD")
        return
    await app(scope, receive, send)


async def send_unavailable(
    send: Send, *, head: bool = False, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Answer 503: the metrics cannot be read. The reason (a path) is in the log, not the body."""
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(_UNAVAILABLE)).encode()),
        (b"retry-after", b"60"),
        *headers,
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else _UNAVAILABLE})


def restrict(metrics: Iterable[Metric], names: Iterable[str]) -> Iterator[Metric]:
    """The samples of `metrics` whose name is in `names`, families without one left out.

    What prometheus_client's `restricted_registry` does in single-process mode: a sample name,
    suffix included (`_total`, `_bucket`, `_count`, `_sum`, `_created`, `_info`), selects it.
    """
    wanted = frozenset(names)
    for metric in metrics:
        samples = [sample for sample in metric.samples if sample.name in wanted]
        if samples:
            kept = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            kept.samples = samples
            yield kept


class _MultiprocessRegistry(CollectorRegistry):
    """A registry whose collector describes nothing, yet restricts by name correctly.

    `CollectorRegistry.restricted_registry` finds collectors by the names they describe;
    `MultiProcessCollector` knows its names only when it reads the files, so it would be
    left out and `?name[]=` would answer an empty body.
    """

    def restricted_registry(self, names: Iterable[str]) -> RestrictedRegistry:
        return _RestrictedMultiprocess(tuple(names), self)


class _RestrictedMultiprocess(RestrictedRegistry):
    def __init__(self, names: tuple[str, ...], registry: CollectorRegistry) -> None:
        super().__init__(names, registry)
        self._names = names
        self._source = registry

    def collect(self) -> Iterable[Metric]:
        return list(restrict(self._source.collect(), self._names))


class _LockedCollector(MultiProcessCollector):
    """`MultiProcessCollector` that retires dead workers and reads under the shared lock."""

    def __init__(
        self, registry: CollectorRegistry, path: str, errors: CollectorRegistry, *, retire: bool
    ) -> None:
        super().__init__(registry, path)  # type: ignore[no-untyped-call]
        self._directory = Path(path)
        # Where faults of ours are counted: the registry of the app that serves the scrape.
        self._errors = errors
        self._retire = retire

    def collect(self) -> Iterable[Metric]:
        directory = self._directory
        if self._retire and str(os.getpid()) in _pids_raw(directory):
            try:
                _mark_dead(directory, self._errors)
            except Exception as exc:
                # The scrape goes on: a dead worker's files left in place are still summed.
                report_internal_error(self._errors, "multiprocess.retire", exc)
        with _locked(directory, exclusive=False):
            # What MultiProcessCollector.collect does, without the files it cannot read.
            # merge() reads every file before it returns: nothing is read after the unlock.
            files = [str(file) for file in directory.glob("*.db") if _sized(file)]
            return list(self.merge(files, accumulate=True))  # type: ignore[no-untyped-call]


# --- internals ---------------------------------------------------------------------------


def _multiprocess_mode() -> bool:
    return _compat.multiprocess_mode()


def _directory(path: str | os.PathLike[str] | None) -> Path:
    if path is None:
        env = os.environ.get(MULTIPROC_DIR_ENV)
        if not env:
            raise ValueError(f"{MULTIPROC_DIR_ENV} is not set and no path was given")
        path = env
    return Path(path)


def _check_usable(directory: Path) -> None:
    if not directory.exists():
        raise MultiprocDirError(
            f"{MULTIPROC_DIR_ENV} directory {str(directory)!r} does not exist: create it "
            "(mkdir -p) before starting the workers"
        )
    if not directory.is_dir():
        raise MultiprocDirError(f"{MULTIPROC_DIR_ENV} {str(directory)!r} is not a directory")
    # os.access is not enough: root passes it on a read-only mount. Create a file.
    try:
        fd, name = tempfile.mkstemp(dir=directory, prefix=".gatewayz-metrics-", suffix=".tmp")
    except OSError as exc:
        raise MultiprocDirError(
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
    # Only files this module knows how to retire: a kind it does not know (a gauge mode of a
    # later prometheus_client) would otherwise be "retired" again, under the lock, on every
    # scrape.
    found = set()
    for name in os.listdir(directory):
        match = _FILE.match(name)
        if match is not None and match["pid"].isdigit() and _retirable(match["kind"]):
            found.add(int(match["pid"]))
    return found


def _retirable(kind: str) -> bool:
    return kind in _FOLD or kind in _DROP


def _files_of(directory: Path, pid: int) -> list[tuple[str, Path]]:
    found = []
    for file in directory.glob(f"*_{pid}.db"):
        match = _FILE.match(file.name)
        if match is not None and match["pid"] == str(pid) and _retirable(match["kind"]):
            found.append((match["kind"], file))
    return sorted(found)


def _writer_alive(pid: int, directory: Path) -> bool:
    """Whether process `pid` may still write its files in `directory`."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True  # no procfs: the pid exists, that is all we can know
    fields = stat.rpartition(b")")[2].split()
    # A zombie has exited and will never write again; its parent just has not reaped it.
    if fields[:1] == [b"Z"]:
        return False
    # A pid and its start time name one process: once seen mapping its files, it does so
    # until it exits (prometheus_client never unmaps them), and the maps need no new look.
    started = fields[19] if len(fields) > 19 else b""
    if started and _writers.get(pid) == started:
        return True
    # The pid exists, but it may have been reused by a process that is not the worker (pids
    # wrap around). prometheus_client writes only through memory maps, which it keeps open
    # for the life of the process: a process that maps none of the files named after its
    # pid cannot write to them, and a worker that takes the pid later creates new ones.
    mapped = _mapped_files(pid)
    if mapped is None:
        return True  # maps not readable: assume the worst, keep the files
    files = _files_of(directory, pid)
    if not files:
        return True  # nothing to retire anyway
    names = {os.path.realpath(file) for _, file in files}
    inodes = set()
    for _, file in files:
        with contextlib.suppress(OSError):
            info = file.stat()
            inodes.add((os.major(info.st_dev), os.minor(info.st_dev), info.st_ino))
    alive = not (mapped[0].isdisjoint(names) and mapped[1].isdisjoint(inodes))
    if alive and started:
        _writers[pid] = started
    return alive


def _mapped_files(pid: int) -> tuple[set[str], set[tuple[int, int, int]]] | None:
    """The paths and (major, minor, inode) of the files process `pid` maps, or None."""
    try:
        text = Path(f"/proc/{pid}/maps").read_text(errors="replace")
    except OSError:
        return None
    names: set[str] = set()
    inodes: set[tuple[int, int, int]] = set()
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or not fields[5].endswith(".db"):
            continue
        major, _, minor = fields[3].partition(":")
        with contextlib.suppress(ValueError):
            inodes.add((int(major, 16), int(minor, 16), int(fields[4])))
        names.add(fields[5])
    return names, inodes


@contextlib.contextmanager
def _locked(directory: Path, *, exclusive: bool) -> Iterator[None]:
    if sys.platform == "win32":  # pragma: no cover - no flock; and no folding (see _fold)
        yield
        return
    lock = directory / _LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        if exclusive:
            raise
        # A reader with a read-only view of the directory (a sidecar's read-only mount):
        # flock works on a descriptor opened for reading.
        fd = os.open(lock, os.O_RDONLY)
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
        return False  # a live gauge's file, removed by a retire since the glob


def _retire_locked(
    directory: Path, pids: Iterable[int], errors: CollectorRegistry
) -> tuple[int, ...]:
    """Fold or remove the files of the dead `pids`; the caller holds the exclusive lock.

    Returns the pids retired: not those whose files are already gone (another scrape retired
    them first) or that turned out to be alive after all. Each archive is read and written
    once for all of them, not once per worker.
    """
    if sys.platform == "win32":  # pragma: no cover - without a lock, readers could count twice
        return ()
    problem = _compat.multiprocess_structure_problem()
    if problem is not None:  # never rewrite files in a format this release may not write
        raise RuntimeError(f"not retiring dead workers: {problem}")
    # Again, under the lock.
    files = {pid: found for pid in pids if (found := _files_of(directory, pid))}
    files = {pid: found for pid, found in files.items() if not _writer_alive(pid, directory)}
    while files:
        staged = _stage(directory, [file for found in files.values() for file in found], errors)
        try:
            # A last look before anything changes: a process that took a pid since the first
            # look and mapped its files keeps them (and their counts) in place.
            revived = {pid for pid in files if _writer_alive(pid, directory)}
            if revived:
                files = {pid: found for pid, found in files.items() if pid not in revived}
                continue  # staged again without them; the partial files are dropped below
            for partial, archive in staged:
                # Renamed into place: a reader that ignores the lock sees the old archive or
                # the new one, never half of one.
                os.replace(partial, archive)
            for found in files.values():
                for _, source in found:
                    with contextlib.suppress(FileNotFoundError):
                        source.unlink()
            return tuple(sorted(files))
        finally:
            for partial, _ in staged:
                with contextlib.suppress(FileNotFoundError):
                    partial.unlink()
    return ()


def _stage(
    directory: Path, files: list[tuple[str, Path]], errors: CollectorRegistry
) -> list[tuple[Path, Path]]:
    """Write each kind's archive plus `files` to a partial file: [(partial, archive)]."""
    staged = []
    for kind, how in _FOLD.items():
        sources = [source for k, source in files if k == kind and _sized(source)]
        if not sources:
            continue
        archive = directory / f"{kind}_{ARCHIVE}.db"
        merged: dict[str, tuple[float, float]] = {}
        if archive.exists():
            for key, value, timestamp, _ in _read(archive):
                merged[key] = (value, timestamp)
        readable = 0
        # Oldest write first: `all` values carry no timestamp, so the last one folded wins,
        # and that should be the value the dead workers set last.
        for source in sorted(sources, key=_mtime):
            try:
                entries = _read(source)
            except Exception as exc:
                # A file cut short (a disk that filled up, an interrupted copy) cannot be read,
                # by us or by MultiProcessCollector: left in place it would fail every scrape.
                # Its counts are lost either way; it is kept aside for inspection.
                os.replace(source, source.with_name(source.name + ".unreadable"))
                report_internal_error(errors, "multiprocess.unreadable", exc)
                continue
            readable += 1
            for key, value, timestamp, _ in entries:
                merged[key] = _combine(how, merged.get(key), (value, timestamp))
        if not readable:
            continue
        partial = directory / f".{kind}_{ARCHIVE}.db.partial"
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        out = _compat.MmapedDict(str(partial))
        try:
            for key, (value, timestamp) in merged.items():
                out.write_value(key, value, timestamp)
        finally:
            out.close()
        staged.append((partial, archive))
    return staged


def _mtime(file: Path) -> tuple[int, str]:
    try:
        return file.stat().st_mtime_ns, file.name
    except FileNotFoundError:
        return 0, file.name


def _read(file: Path) -> list[tuple[str, float, float, int]]:
    return list(_compat.MmapedDict.read_all_values_from_file(str(file)))


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
    # latest: the later timestamp wins; on a tie (gauges of mode `all` carry none) the file
    # folded last, the worker retired last.
    return new if new[1] >= old[1] else old
