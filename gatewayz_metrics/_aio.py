"""Event-loop neutral primitives: the same code runs on asyncio and on trio.

Starlette runs on either through anyio. The package's only runtime dependency is
prometheus-client, so this module does not use anyio (a Quart or bare ASGI app may not
have it): it asks sniffio which library runs the current task, as anyio does, and uses
asyncio's or trio's own API. asyncio apps import nothing new; trio is imported only
from inside a trio run, where it is already loaded. Without sniffio (it comes with trio)
the loop can only be asyncio.
"""

from __future__ import annotations

import asyncio
import builtins
import sys
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Waitable(Protocol):
    """What `asyncio.Event` and `trio.Event` have in common."""

    def set(self) -> None: ...

    def is_set(self) -> bool: ...

    async def wait(self) -> Any: ...


_sniffio: Any = None
_sniffio_missing = False


def _library() -> str:
    global _sniffio, _sniffio_missing
    if _sniffio is None:
        if _sniffio_missing:
            return "asyncio"
        try:
            import sniffio
        except ImportError:
            # Looked up once: a failed import searches the whole path every time.
            _sniffio_missing = True
            return "asyncio"
        _sniffio = sniffio
    try:
        name: str = _sniffio.current_async_library()
    except _sniffio.AsyncLibraryNotFoundError:
        return "asyncio"
    return name


def _trio() -> Any:
    import trio

    return trio


def loop_token() -> object:
    """An object that identifies the running event loop (asyncio loop or trio run)."""
    if _library() == "trio":
        return _trio().lowlevel.current_trio_token()
    return asyncio.get_running_loop()


def new_event() -> Waitable:
    """An event of the running loop's library."""
    if _library() == "trio":
        event: Waitable = _trio().Event()
        return event
    return asyncio.Event()


async def run_sync(func: Callable[..., T], *args: Any) -> T:
    """`func(*args)` in a worker thread; a cancelled caller leaves the thread to finish."""
    if _library() == "trio":
        result: T = await _trio().to_thread.run_sync(partial(func, *args), abandon_on_cancel=True)
        return result
    return await asyncio.get_running_loop().run_in_executor(None, partial(func, *args))


async def checkpoint() -> None:
    """Let the other tasks of the loop run."""
    if _library() == "trio":
        await _trio().lowlevel.checkpoint()
    else:
        await asyncio.sleep(0)


_GROUPS: tuple[type[BaseException], ...] = tuple(
    group for group in (getattr(builtins, "BaseExceptionGroup", None),) if group is not None
)
_tasks: set[asyncio.Task[None]] = set()  # strong references: asyncio keeps only weak ones


def spawn(coroutine_function: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a task that outlives the request that started it (the coroutine must not raise).

    A trio system task is the one kind of trio task not bound to a nursery; trio cancels
    it when the run ends.
    """
    if _library() == "trio":
        _trio().lowlevel.spawn_system_task(coroutine_function)
        return
    task = asyncio.get_running_loop().create_task(coroutine_function())
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def is_cancellation(exc: BaseException) -> bool:
    """Whether `exc` is the running loop cancelling the task (its client went away)."""
    if isinstance(exc, asyncio.CancelledError):
        return True
    trio = sys.modules.get("trio")  # a trio exception exists only once trio is imported
    if trio is not None and isinstance(exc, trio.Cancelled):
        return True
    groups = _GROUPS
    backport = sys.modules.get("exceptiongroup")  # Python 3.10: trio's and anyio's groups
    if backport is not None:
        groups = (*groups, backport.BaseExceptionGroup)
    if groups and isinstance(exc, groups):
        # anyio task groups (Starlette's streaming responses) re-raise a cancellation
        # inside a group.
        inner: tuple[BaseException, ...] = getattr(exc, "exceptions", ())
        return bool(inner) and all(is_cancellation(one) for one in inner)
    return False
