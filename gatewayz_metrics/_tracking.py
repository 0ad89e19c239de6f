"""The machinery behind every `track_*` helper: one object that is a context manager
(`with` and `async with`) and a decorator (sync and async functions), times a block and
records its outcome. Subclasses say what a block's handle is and what to record."""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import functools
import inspect
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar, cast

from prometheus_client import CollectorRegistry

from gatewayz_metrics._internal import report_internal_error
from gatewayz_metrics._validation import InvalidArgumentError, InvalidCallError

H = TypeVar("H")
F = TypeVar("F", bound=Callable[..., Any])

SUCCESS = "success"
ERROR = "error"
TIMEOUT = "timeout"
CANCELLED = "cancelled"
OUTCOMES = (SUCCESS, ERROR, TIMEOUT, CANCELLED)

# On Python 3.10, asyncio.TimeoutError and concurrent.futures.TimeoutError are not the
# builtin TimeoutError (3.11 made them aliases); all three mean "timeout".
_TIMEOUT_TYPES: tuple[type[BaseException], ...] = (
    TimeoutError,
    asyncio.TimeoutError,
    concurrent.futures.TimeoutError,
)
# HTTP clients have their own timeout hierarchies (httpx.ReadTimeout, openai.APITimeoutError,
# requests.Timeout); they are recognised by class name so that no client is imported.
_TIMEOUT_NAME_ENDINGS = ("Timeout", "TimeoutError", "TimeoutException")
# Cancellation and "the client went away": asyncio's CancelledError, trio's Cancelled,
# Starlette's ClientDisconnect; GeneratorExit is how a streaming generator learns that
# the response it feeds was abandoned.
_CANCELLED_NAMES = frozenset({"CancelledError", "Cancelled", "ClientDisconnect"})
_outcome_by_type: dict[type[BaseException], str] = {}


def outcome_of(exc: BaseException | None) -> str:
    """`success`, `timeout`, `cancelled` or `error` for an exception escaping a block."""
    if exc is None:
        return SUCCESS
    kind = type(exc)
    outcome = _outcome_by_type.get(kind)
    if outcome is None:
        names = [cls.__name__ for cls in kind.__mro__]
        if issubclass(kind, _TIMEOUT_TYPES) or any(
            name.endswith(_TIMEOUT_NAME_ENDINGS) for name in names
        ):
            outcome = TIMEOUT
        elif issubclass(kind, GeneratorExit) or _CANCELLED_NAMES.intersection(names):
            outcome = CANCELLED
        else:
            outcome = ERROR
        if len(_outcome_by_type) < 1024:
            _outcome_by_type[kind] = outcome
    return outcome


class Tracker(Generic[H]):
    """Times one block per `with`; as a decorator, one block per call.

    One tracker object measures one block at a time: `with t: ... with t: ...` in
    sequence is fine. Overlapping use of the same object is a mistake: strict mode
    raises `RuntimeError`, lenient mode records the outer block only and counts the
    misuse. As a decorator it is copied per call, so concurrent calls never share state.

    Nothing here raises into the application at run time, except in strict mode for
    the application's own mistakes: a fault of ours is counted and logged, and the
    block's own exception always propagates unchanged.
    """

    __slots__ = ("_active", "_handle", "_nested", "_registry", "_start")
    _component = "tracker"
    """The `component` label of our own faults in `internal_errors_total`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._active = False
        self._nested = 0
        self._handle: H | None = None
        self._start = 0.0

    # --- what subclasses provide ---------------------------------------------------

    def _open(self) -> H:
        """Create the handle the block sees (called at entry, after the clock starts)."""
        raise NotImplementedError

    def _close(self, handle: H, duration: float, exc: BaseException | None) -> None:
        """Record the block: `duration` seconds, `exc` is what escaped (or None)."""
        raise NotImplementedError

    def _detached(self) -> H:
        """A handle that records nothing (for a block this tracker cannot measure)."""
        raise NotImplementedError

    def _misuse(self, error: InvalidArgumentError) -> None:
        """The application misused the tracker: raise `error` (strict) or count it."""
        raise error

    # --- context manager -------------------------------------------------------------

    def __enter__(self) -> H:
        if self._active:
            self._misuse(
                InvalidCallError(
                    "tracker",
                    f"this {type(self).__name__} is already measuring a block; call the "
                    "track_* helper once per block (or use it as a decorator)",
                )
            )
            self._nested += 1
            return self._detached()
        self._start = time.perf_counter()
        try:
            handle = self._open()
        except Exception as internal:
            report_internal_error(self._registry, self._component, internal)
            handle = self._detached()
        self._handle = handle
        self._active = True
        return handle

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        duration = time.perf_counter() - self._start
        if self._nested:  # the inner block of an overlapping use: not measured
            self._nested -= 1
            return
        if not self._active:  # pragma: no cover - __exit__ without __enter__
            return
        handle = cast(H, self._handle)
        self._active = False
        self._handle = None
        try:
            self._close(handle, duration, exc)
        except Exception as internal:
            # Our bookkeeping failed: count it, never mask the block's own outcome.
            report_internal_error(self._registry, self._component, internal)

    async def __aenter__(self) -> H:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)

    # --- decorator -------------------------------------------------------------------

    def _fresh(self) -> Tracker[H]:
        clone = copy.copy(self)
        clone._active = False
        clone._nested = 0
        clone._handle = None
        return clone

    def __call__(self, func: F) -> F:
        """Measure every call of `func` (a plain or an `async def` function)."""
        if not callable(func):
            raise TypeError(f"a track_* decorator needs a function, got {func!r}")
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(
                f"{func!r} is a generator function: decorating it would time only the "
                "creation of the generator. Use `with` inside the generator instead."
            )
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with self._fresh():
                    return await func(*args, **kwargs)

            return cast(F, async_wrapper)

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._fresh():
                return func(*args, **kwargs)

        return cast(F, wrapper)
