"""The pipeline's lock rule, and a debug check that the code keeps it.

This module owns one rule and its check. The state of a pipeline (the ledger of events
taken, the flush requests, the send schedule, the sender pool's hand-off) lives in state
holders that take no lock themselves: each is guarded by the one lock of its pipeline, and
only the drivers (the flusher thread, the inline sender, the sender threads, the cycle they
run and the pipeline's shutdown) take it, around calls to the holders. A holder's mutating
methods are marked ``lock_held()``.

The check is off unless ``SEGOPS_FAST_DEBUG_LOCKS=1`` is in the environment when
segops_fast is imported (the test suite sets it). Off, ``lock_held()`` returns the method
itself and ``new_lock()`` a plain ``threading.Lock``: production pays nothing, and
``track()`` never reaches a guarded method anyway. On, the lock remembers which thread holds
it, and a guarded method called without it raises ``AssertionError`` naming the method.

It does not own the producers' side: ``track()`` appends to the buffer without any lock
(see :mod:`~segops_fast._buffer`).
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any, Callable, Protocol, TypeVar

#: The environment variable that turns the check on (read once, at import).
DEBUG_LOCKS_VARIABLE = "SEGOPS_FAST_DEBUG_LOCKS"

CHECKING = os.environ.get(DEBUG_LOCKS_VARIABLE, "") not in ("", "0")


class PipelineLock(Protocol):
    def acquire(self, blocking: bool = ..., timeout: float = ...) -> bool: ...

    def release(self) -> None: ...

    def __enter__(self) -> bool: ...

    def __exit__(self, *args: Any, **kwargs: Any) -> None: ...


class OwnedLock:
    """A ``threading.Lock`` that knows which thread holds it (the check's lock).

    ``threading.Condition`` uses ``_is_owned`` when its lock has one, so a condition built
    on this lock keeps the owner right across ``wait()``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owner: int | None = None

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        acquired = self._lock.acquire(blocking, timeout)
        if acquired:
            self._owner = threading.get_ident()
        return acquired

    def release(self) -> None:
        self._owner = None
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _is_owned(self) -> bool:
        return self._owner == threading.get_ident()

    def held_here(self) -> bool:
        """True if the calling thread holds this lock."""
        return self._is_owned()


def new_lock() -> PipelineLock:
    """The lock of one pipeline: checked when ``CHECKING``, else a plain lock."""
    return OwnedLock() if CHECKING else threading.Lock()


class Guarded(Protocol):
    #: The lock that must be held around every mutating method (None: a holder used
    #: alone, outside any pipeline, which nothing else can reach).
    _guard: PipelineLock | None


_Method = TypeVar("_Method", bound=Callable[..., Any])


def checked(method: _Method) -> _Method:
    """``method`` asserting, first, that its holder's ``_guard`` is held by this thread."""

    @functools.wraps(method)
    def check_then_call(holder: Guarded, *args: Any, **kwargs: Any) -> Any:
        guard = holder._guard
        assert guard is None or (isinstance(guard, OwnedLock) and guard.held_here()), (
            f"{type(holder).__name__}.{method.__name__}() called without the pipeline's lock"
        )
        return method(holder, *args, **kwargs)

    return check_then_call  # type: ignore[return-value]


def lock_held(method: _Method) -> _Method:
    """Mark a state holder's mutating method: call it with the holder's ``_guard`` held."""
    return checked(method) if CHECKING else method
