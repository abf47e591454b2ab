"""Giving up what cannot be sent, and stopping for good.

This module owns the three ways events are given up other than by their own attempt:

* a final cycle that cannot reach the API gives up the batches held back;
* at the shutdown deadline, everything not finished is given up as ``shutdown_deadline``
  (``Surrender.abandon()``), and what that gave up is kept for ``shutdown()``'s error;
* a thread of ours that meets an exception nobody expected stops sending for good: every
  event held is given up as ``unexpected_error`` and the failure is kept, so that
  ``flush()`` and ``shutdown()`` raise from then on.

It is a driver: it takes the pipeline's lock only through the cycle's methods, and calls
the user's callbacks outside it. It does not own which batches are unfinished
(``_ledger.py``), nor counting and reporting one given-up part (the cycle's
``give_up``). The ordering exactly-once rests on here: the in-flight set is emptied (under
the lock) before anything is handed to ``on_drop``, so a late answer is ignored.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable

from ._batching import Batch
from ._buffer import EventBuffer
from ._delivery import (
    REASON_FAILED,
    REASON_RETRIES_EXHAUSTED,
    REASON_SHUTDOWN_DEADLINE,
    REASON_UNEXPECTED_ERROR,
    Deadline,
    GivenUp,
    given_up_error,
    shutdown_deadline_error,
)
from ._errors import SegOpsApiError, describe, fix_for, sentences, unexpected

if TYPE_CHECKING:
    from ._cycle import Cycle


class Surrender:
    """Gives up the events of one pipeline's cycle that cannot be sent."""

    def __init__(
        self,
        cycle: Cycle,
        *,
        buffer: EventBuffer,
        deadline: Deadline,
        report_error: Callable[[BaseException], None],
    ) -> None:
        self._cycle = cycle
        self._buffer = buffer
        self._deadline = deadline
        self._report_error = report_error
        self._finished = threading.Event()
        #: How many events the shutdown deadline made us give up, and the last failure of
        #: the oldest of them that had one.
        self.given_up_at_deadline = 0
        self.deadline_cause: BaseException | None = None
        #: Set (under the pipeline's lock) when a thread of ours stopped on an unexpected
        #: exception: what the user is told then. Nothing is sent after that.
        self.failure: SegOpsApiError | None = None

    def held(self, reason: str, error: BaseException) -> None:
        """Give up the batches waiting for the API or for a retry."""
        cycle = self._cycle
        with cycle.guard:
            held = cycle.ledger.take_held()
        given_up = []
        for batch in held:
            # Never sent this time, but an earlier attempt may have been stored unanswered.
            why = (
                REASON_RETRIES_EXHAUSTED
                if reason == REASON_FAILED and batch.maybe_stored
                else reason
            )
            failure = given_up_error(len(batch), why, describe(error), fix=fix_for(error))
            given_up.append(GivenUp.of_batch(batch, why, failure))
        cycle.give_up(given_up)

    def everything_left(self) -> None:
        """The deadline has passed, or will before anything left could be sent: let the
        requests under way end, until the deadline itself, then give up everything."""
        self._cycle.wait_for_answers(self._deadline.time_left())
        self.abandon()

    def abandon(self) -> int:
        """The shutdown deadline has passed: give up, now, every event not yet finished.

        Events in the buffer, held back, or in a request not answered yet are handed to
        ``on_drop`` as ``shutdown_deadline`` and counted as dropped before this returns;
        an answer that comes later for one of those requests is ignored, so no event is
        ever both dropped and sent. Returns how many events were given up. Safe to call
        from any thread, more than once: later calls wait for the first to finish.
        """
        seconds = self._deadline.seconds
        causes = []

        def deadline_error(batch: Batch) -> SegOpsApiError:
            if batch.last_error is not None:
                causes.append(batch.last_error)
            return shutdown_deadline_error(len(batch), seconds, batch.last_error)

        given_up = self._everything(REASON_SHUTDOWN_DEADLINE, deadline_error)
        if given_up is not None:
            self.deadline_cause = causes[0] if causes else None
            self.given_up_at_deadline = given_up
        self._finished.wait()
        return self.given_up_at_deadline

    def on_failure(self, error: BaseException) -> None:
        """A thread of ours met an exception nobody expected: stop sending for good.

        Whatever was held is handed to ``on_drop`` as ``unexpected_error`` and counted as
        failed, the user is told (never with the exception's text: see
        :func:`~segops_fast._errors.describe`), a ``track()`` waiting for room is released
        and later events are refused, and ``flush()`` and ``shutdown()`` raise from now on.
        """
        cause = f"the thread sending events stopped on {unexpected(error)}"
        report = _stopped_error(cause)
        with self._cycle.guard:
            if self.failure is not None:
                return
            self.failure = report
        self._buffer.close()
        try:
            self._everything(
                REASON_UNEXPECTED_ERROR,
                lambda batch: given_up_error(len(batch), REASON_UNEXPECTED_ERROR, cause),
            )
        finally:
            # Last: a callback that raises again (SystemExit) must not keep events held.
            self._report_error(report)

    def _everything(self, reason: str, error_for: Callable[[Batch], SegOpsApiError]) -> int | None:
        """Give up every event not finished for ``reason``; how many, or None if an earlier
        call did (this one then returns at once)."""
        batches = self._cycle.begin_surrender()
        if batches is None:
            return None
        try:
            self._cycle.give_up(
                [GivenUp.of_batch(batch, reason, error_for(batch)) for batch in batches]
            )
            # Everything is finished now: whoever still waits in flush() has an answer.
            self._cycle.answer_all(final=True)
            return sum(len(batch) for batch in batches)
        finally:
            self._finished.set()


def _stopped_error(cause: str) -> SegOpsApiError:
    fix = "Create a new SegOpsClient to send again"
    return SegOpsApiError(
        sentences(
            f"SegOps: {cause}",
            "This client sends nothing more: every event it held, and every event "
            f"tracked from now on, is handed to on_drop (reason {REASON_UNEXPECTED_ERROR!r})"
            " and counted in stats().failed",
            fix,
        ),
        reason=cause,
        fix=fix,
    )
