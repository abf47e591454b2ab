"""The ``flush()`` callers waiting, and what each is told when it is answered.

This module owns the open flush requests: the number each waits for, how long it waits for
an API that cannot be reached, the events it covers that were not delivered, and when it
can be answered. It keeps no lock and starts no thread: its state is guarded by the
pipeline's lock, which its callers (the cycle and the drivers) hold around every mutating
call (checked with ``SEGOPS_FAST_DEBUG_LOCKS=1``, see ``_locks.py``). It
does not own when a cycle runs, nor which events are finished (``_ledger.py``).
"""

from __future__ import annotations

import threading

from ._delivery import GivenUp
from ._locks import PipelineLock, lock_held
from ._transport import NetworkConfigError


class FlushRequest:
    """A caller waiting until every event enqueued before its call has a known fate."""

    def __init__(self, target: int, patience_ends_at: float) -> None:
        #: The flush is done when every event numbered below this is finished.
        self.target = target
        #: While the API cannot be reached, the flush waits for it until this moment
        #: (``time.monotonic()``), then reports its events undelivered.
        self.patience_ends_at = patience_ends_at
        self.undelivered = 0
        #: How many of the undelivered events were given up, by reason; the rest stay queued.
        self.given_up: dict[str, int] = {}
        self.error: BaseException | None = None
        self._done = threading.Event()

    def wait(self, timeout: float | None) -> bool:
        return self._done.wait(timeout)

    def note_undelivered(
        self, first: int, count: int, error: BaseException, given_up_as: str | None = None
    ) -> None:
        """Events ``first`` to ``first + count`` are undelivered (given up for the reason
        ``given_up_as``, or still queued): count those this flush covers."""
        covered = min(count, self.target - first)
        if covered > 0:
            self.undelivered += covered
            self.error = error
            if given_up_as is not None:
                self.given_up[given_up_as] = self.given_up.get(given_up_as, 0) + covered

    def finish(self) -> None:
        self._done.set()


class FlushRequests:
    """The open flush requests of one pipeline. Guarded by the pipeline's lock."""

    def __init__(self, guard: PipelineLock, outage_patience: float) -> None:
        self._guard = guard
        #: How long a flush waits for an API that cannot be reached.
        self._outage_patience = outage_patience
        self._open: list[FlushRequest] = []
        #: A flush() was asked for since the last cycle began.
        self.asked = False

    def __len__(self) -> int:
        return len(self._open)

    @lock_held
    def open(self, target: int, now: float) -> FlushRequest:
        """A flush that is done when every event below ``target`` is finished."""
        request = FlushRequest(target, now + self._outage_patience)
        self._open.append(request)
        self.asked = True
        return request

    @lock_held
    def begin_cycle(self) -> list[FlushRequest]:
        """A cycle begins: the requests open now are the ones it may answer."""
        self.asked = False
        return list(self._open)

    def pending(self) -> list[FlushRequest]:
        return list(self._open)

    @lock_held
    def note_given_up(self, part: GivenUp) -> None:
        """Events of ``part`` were given up: each request covering some counts them."""
        for request in self._open:
            request.note_undelivered(part.first, len(part.events), part.error, part.reason)

    def waits_beyond(self, number: int) -> bool:
        """True if a request waits for an event numbered ``number`` or later."""
        return any(request.target > number for request in self._open)

    def patience_left(self, now: float) -> float | None:
        """Seconds until the first request stops waiting for the API; None if none waits."""
        if not self._open:
            return None
        return min(request.patience_ends_at for request in self._open) - now

    @lock_held
    def answerable(
        self,
        requests: list[FlushRequest],
        *,
        finished: int,
        blocked: BaseException | None,
        final: bool,
        now: float,
    ) -> list[FlushRequest]:
        """Close those of ``requests`` that can be answered now, every event below
        ``finished`` being finished and ``blocked`` why the API cannot be reached (if it
        cannot); the caller finishes them, outside the lock."""
        answered = []
        for request in requests:
            if finished >= request.target:
                answered.append(request)
            elif blocked is not None and (
                final or now >= request.patience_ends_at or isinstance(blocked, NetworkConfigError)
            ):
                # The API stayed unreachable for as long as the retry schedule would have
                # waited for it, or it cannot be reached until the TLS or proxy settings
                # change: the events stay queued, the caller is told.
                request.note_undelivered(finished, request.target - finished, blocked)
                answered.append(request)
            # Otherwise some of its events wait for a retry or for the API, or were still
            # in the buffer when this cycle began: a later cycle answers it.
        self._open = [request for request in self._open if request not in answered]
        return answered
