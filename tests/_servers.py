"""Real servers for the tests, started and stopped one way: free loopback ports, subprocesses
with a log file, readiness polling, and uvicorn in a thread of the test process.

Every server listens on 127.0.0.1 only, and every wait is bounded.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port nobody listens on right now on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 40) -> str:
    """The last `lines` lines of a server's log, for failure messages."""
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def start_logged(
    argv: Sequence[str],
    log: Path,
    *,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start `argv` with its stdout and stderr going to `log`.

    `new_session=True` puts it in a session of its own, so that `kill_session` also reaches
    the workers it forks.
    """
    with log.open("wb") as out:
        # The child holds its own copy of the descriptor: the parent's can close at once.
        return subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=None if env is None else dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )


def stop(process: subprocess.Popen[Any], timeout: float = 10) -> None:
    """Terminate `process`, and kill it if it does not stop within `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung server
            process.kill()
    process.wait(timeout=timeout)


def kill_session(process: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGKILL `process` and every process of its session (see `start_logged`)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=timeout)


def child_processes(parent: int) -> list[tuple[int, bytes, bytes]]:
    """`(pid, state, cmdline)` of every process whose parent is `parent`, read from /proc
    (processes that end while being read are passed over)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rpartition(b")")[2].split()
        if int(fields[1]) == parent:
            found.append((int(entry.name), fields[0], cmdline))
    return found


def wait_serving(
    url: str, process: subprocess.Popen[Any], log: Path, *, timeout: float = 20
) -> None:
    """Poll `url` until it answers 200; fail with the log if `process` exits or stalls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args!r} exited with {process.returncode}:\n{log_tail(log)}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"{url} not ready after {timeout:g} s:\n{log_tail(log)}")


@contextmanager
def served(
    argv: Sequence[str],
    log: Path,
    port: int,
    ready_path: str,
    *,
    cwd: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 20,
) -> Iterator[str]:
    """`argv` (a server listening on `port` of 127.0.0.1) started with its output in `log`;
    yields its base URL once `ready_path` answers 200, and stops it in every case."""
    process = start_logged(argv, log, cwd=cwd, env=env)
    try:
        url = f"http://{LOOPBACK}:{port}"
        wait_serving(f"{url}{ready_path}", process, log, timeout=timeout)
        yield url
    finally:
        stop(process)


@contextmanager
def uvicorn_thread(app: Any, **options: Any) -> Iterator[str]:
    """`app` behind a real uvicorn on a free loopback port, in a thread of this process (so
    the test can read the app's registry); yields the base URL and stops the server after."""
    config = uvicorn.Config(app, host=LOOPBACK, port=free_port(), **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn exited during startup"
        assert time.monotonic() < deadline, "uvicorn did not start within 10 s"
        time.sleep(0.01)
    try:
        yield f"http://{LOOPBACK}:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert not thread.is_alive(), "uvicorn did not stop within 10 s"
