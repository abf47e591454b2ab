"""One sending cycle, shared by both drivers: take, cut, send, settle, answer, give up.

This module owns what a cycle does, whichever thread runs it (the flusher thread, or the
caller's under uWSGI without threads): take the retries due and everything waiting, cut
them into batches of at most ``max_batch_bytes``, send them oldest first (handing some to
the sender threads), settle each answer, and answer the flushes asked for. It also owns
giving up: the batches held when shutting down with the API unreachable, everything at the
shutdown deadline (``abandon``), and everything when a thread of ours stops on an exception
nobody expected. It is a driver: it takes the pipeline's lock around its calls to the state
holders (:mod:`~segops_fast._ledger`, :mod:`~segops_fast._flush_requests`, the send
schedule), and never holds it while sending or calling the user's callbacks. It does not
own when a cycle runs (:mod:`~segops_fast._flusher`, :mod:`~segops_fast._inline`).

The orderings that exactly-once rests on
----------------------------------------
* Every batch is registered in flight before the first is sent (:meth:`Cycle._dispatch`),
  so a flush never sees a gap.
* :meth:`Cycle.abandon` empties the in-flight set under the lock before it hands anything
  to ``on_drop``, so a late answer for a batch given up is ignored (:meth:`Cycle.send`):
  no event is both dropped and sent.
* Batches are released while sending: once cut, only the cycle's list holds them, and it
  lets go of each as it is sent (while the API is down a cycle lasts minutes, and finished
  batches kept until its end would let a second queue's worth of events build up).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from ._batching import Batch
from ._buffer import EventBuffer
from ._delivery import (
    REASON_FAILED,
    REASON_RETRIES_EXHAUSTED,
    REASON_SHUTDOWN_DEADLINE,
    REASON_UNEXPECTED_ERROR,
    Attempted,
    Deadline,
    Delivery,
    GivenUp,
    given_up_error,
    shutdown_deadline_error,
)
from ._errors import SegOpsApiError, count_events, describe, fix_for, sentences, unexpected
from ._flush_requests import FlushRequest, FlushRequests
from ._ledger import Ledger, cut
from ._locks import PipelineLock
from ._reporting import Throttle
from ._senders import SenderPool
from ._stats import DeliveryCounters

#: While the API cannot be reached, it is tried every flush_interval, but reported at most
#: this often: a long outage must not write an error to the log twice a second.
_UNREACHABLE_REPORT_INTERVAL = 5.0


class Cycle:
    """Sends what is due, and gives up what cannot be sent; see the module's docstring."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        requests: FlushRequests,
        buffer: EventBuffer,
        delivery: Delivery,
        counters: DeliveryCounters,
        guard: PipelineLock,
        wake: threading.Event,
        deadline: Deadline,
        flush_interval: float,
        max_batch_bytes: int,
        max_in_flight: int,
        on_given_up: Callable[[GivenUp], None],
        report_error: Callable[[BaseException], None],
    ) -> None:
        self.ledger = ledger
        self.requests = requests
        self._schedule = ledger.schedule
        self._buffer = buffer
        self._delivery = delivery
        self._counters = counters
        self.guard = guard
        #: Signalled whenever a batch is finished, and whenever stopping or abandoning.
        self.changed = threading.Condition(guard)  # type: ignore[arg-type]
        self._wake = wake
        self._deadline = deadline
        self._flush_interval = flush_interval
        self._max_batch_bytes = max_batch_bytes
        self._on_given_up = on_given_up
        self._report_error = report_error
        self._unreachable_reports = Throttle(_UNREACHABLE_REPORT_INTERVAL)
        self.senders = (
            SenderPool(
                max_in_flight - 1,
                send=self.send,
                changed=self.changed,
                guard=guard,
                on_failure=self.stop_on_failure,
            )
            if max_in_flight > 1
            else None
        )
        # Guarded by the lock, like the state holders'.
        self.stopping = False
        #: Set once everything held was given up: at the shutdown deadline, or when a
        #: thread of ours stopped on an unexpected exception.
        self.abandoned = False
        self._abandon_finished = threading.Event()
        #: How many events the shutdown deadline made us give up, and the last failure of
        #: the oldest of them that had one.
        self.given_up_at_deadline = 0
        self.deadline_cause: BaseException | None = None
        #: Set when a thread of ours stopped on an unexpected exception: what the user is
        #: told then. Nothing is sent after that.
        self.failure: SegOpsApiError | None = None

    # -- asked for by the pipeline -----------------------------------------------------------

    def open_request(self) -> FlushRequest | None:
        """A flush of everything enqueued so far; None if there is nothing to wait for."""
        with self.guard:
            target = self._buffer.taken + len(self._buffer)
            if self.stopping or target <= self.ledger.watermark():
                return None
            request = self.requests.open(target, time.monotonic())
            self.changed.notify_all()
        return request

    def stop(self) -> None:
        """Send what is left, then stop; the buffer must be closed already."""
        with self.guard:
            self.stopping = True
            self.changed.notify_all()
        self._wake.set()

    def end_senders(self) -> None:
        """The flusher thread ends: stop, and let the senders end once their batch is sent."""
        with self.guard:
            self.stopping = True
            if self.senders is not None:
                self.senders.close()
            self.changed.notify_all()

    def has_work_left(self) -> bool:
        with self.guard:
            return self.ledger.has_work()

    def why_undelivered(self) -> BaseException | None:
        """Why events wait: the API cannot be reached, or the last failure of the oldest
        batch that failed; None if none has (its request may just be slow)."""
        with self.guard:
            if self._schedule.unavailable_error is not None:
                return self._schedule.unavailable_error
            batches = self.ledger.unfinished()
        return next((batch.last_error for batch in batches if batch.last_error), None)

    # -- one cycle ---------------------------------------------------------------------------

    def run(self, *, final: bool) -> bool:
        """Send the retries that are due and the batches waiting for the API, and unless
        some were waiting for the API, everything in the buffer; then answer the flushes
        asked for so far. False if the API could not be reached (or no session token could
        be had); when ``final``, the batches not sent are given up."""
        with self.guard:
            now = time.monotonic()
            answerable = self.requests.begin_cycle()
            api_was_unreachable = self._schedule.waiting_for_api
            retry = self.ledger.take_due(now)
            records, first = ([], 0) if api_was_unreachable else self.ledger.take()
        batches = retry + cut(records, first, self._max_batch_bytes)
        # From here only ``batches`` holds the events, and _dispatch lets go of each batch
        # as it is sent (see the module's docstring).
        del retry, records
        self._dispatch(batches)
        with self.guard:
            self.changed.wait_for(lambda: not self.ledger.busy() or self.abandoned)
            if self.abandoned:
                return False
            blocked = self._schedule.unavailable_error
        if blocked is not None:
            if self._unreachable_reports.allows(always=final):
                with self.guard:
                    held = self._schedule.held_events() + len(self._buffer)
                self._report_error(
                    waiting_for_api_error(blocked, held, self._flush_interval, final=final)
                )
            if final:
                # Shutting down and the API cannot be reached: these cannot be delivered.
                self.give_up_held(REASON_FAILED, blocked)
        self.answer(answerable, final=final)
        return blocked is None

    def _dispatch(self, batches: list[Batch]) -> None:
        """Send ``batches`` in order, max_in_flight at most under way at once: each to a
        free sender, else here. Empties ``batches`` as it goes."""
        with self.guard:
            # Every batch is unfinished before the first is sent.
            self.ledger.register(batches)
        batches.reverse()
        while batches:
            batch = batches.pop()
            with self.guard:
                if self.abandoned:
                    return
                now = time.monotonic()
                error = self._schedule.unavailable_error
                if error is not None:
                    # A sender could not reach the API: keep the rest for the next try.
                    self.ledger.forget(batch)
                    self._schedule.hold_unsent([batch], error, now)
                    continue
                if self._schedule.seconds_paused(now):
                    # The server asked for a pause: the rest wait for its end, as retries do.
                    self.ledger.forget(batch)
                    batch.retry_at = self._schedule.resume_at
                    self._schedule.retry_later([batch])
                    continue
                if batches and self.senders is not None and self.senders.offer(batch):
                    continue
            self.send(batch)

    def send(self, batch: Batch) -> None:
        """Attempt ``batch`` once and settle what came of it (any thread of ours)."""
        attempted = self._delivery.attempt_batch(batch)
        with self.guard:
            if not self.ledger.finish(batch):
                # Given up at the shutdown deadline while under way: already settled.
                return
            self._settle(attempted)
            self.ledger.count_held()
            self.changed.notify_all()
        for part in attempted.given_up:
            self._on_given_up(part)

    def _settle(self, attempted: Attempted) -> None:
        """Count and schedule what one attempt came to. Lock held."""
        for events, body_bytes in attempted.acknowledged:
            self._counters.acknowledged(events, body_bytes)
        self._count_given_up(attempted.given_up)
        if attempted.unavailable is not None:
            for batch in attempted.unsent:
                batch.last_error = attempted.unavailable
            self._schedule.hold_unsent(attempted.unsent, attempted.unavailable, time.monotonic())
        self._schedule.retry_later(attempted.to_retry)
        self._schedule.pause_until(attempted.resume_at)

    def answer(self, requests: list[FlushRequest], *, final: bool) -> None:
        """Answer those of ``requests`` whose events all have a known fate."""
        if not requests:
            return
        with self.guard:
            answered = self.requests.answerable(
                requests,
                finished=self.ledger.watermark(),
                blocked=self._schedule.unavailable_error,
                final=final,
                now=time.monotonic(),
            )
        for request in answered:
            request.finish()

    def answer_all(self, *, final: bool) -> None:
        with self.guard:
            requests = self.requests.pending()
        self.answer(requests, final=final)

    # -- giving up ---------------------------------------------------------------------------

    def _count_given_up(self, given_up: list[GivenUp]) -> None:
        """Count given-up events at once, under the lock, so that the counters add up at
        every moment; the user's callbacks run later, outside it. Lock held."""
        for part in given_up:
            self._counters.given_up(len(part.events), failed=part.failed, reason=part.reason)
            self.requests.note_given_up(part)

    def _give_up(self, given_up: list[GivenUp]) -> None:
        with self.guard:
            self._count_given_up(given_up)
        for part in given_up:
            self._on_given_up(part)

    def give_up_held(self, reason: str, error: BaseException) -> None:
        """Give up the batches waiting for the API or for a retry."""
        with self.guard:
            held = self.ledger.take_held()
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
        self._give_up(given_up)

    def give_up_everything_left(self) -> None:
        """The deadline has passed, or will before anything left could be sent: let the
        requests under way end, until the deadline itself, then give up everything."""
        with self.guard:
            self.changed.wait_for(
                lambda: not self.ledger.busy() or self.abandoned, self._deadline.time_left()
            )
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

        given_up = self._give_up_everything(REASON_SHUTDOWN_DEADLINE, deadline_error)
        if given_up is not None:
            self.deadline_cause = causes[0] if causes else None
            self.given_up_at_deadline = given_up
        self._abandon_finished.wait()
        return self.given_up_at_deadline

    def stop_on_failure(self, error: BaseException) -> None:
        """A thread of ours met an exception nobody expected: stop sending for good.

        Whatever was held is handed to ``on_drop`` as ``unexpected_error`` and counted as
        failed, the user is told (never with the exception's text: see
        :func:`~segops_fast._errors.describe`), a ``track()`` waiting for room is released
        and later events are refused, and ``flush()`` and ``shutdown()`` raise from now on.
        """
        cause = f"the thread sending events stopped on {unexpected(error)}"
        report = _stopped_error(cause)
        with self.guard:
            if self.failure is not None:
                return
            self.failure = report
        self._buffer.close()
        try:
            self._give_up_everything(
                REASON_UNEXPECTED_ERROR,
                lambda batch: given_up_error(len(batch), REASON_UNEXPECTED_ERROR, cause),
            )
        finally:
            # Last: a callback that raises again (SystemExit) must not keep events held.
            self._report_error(report)

    def _give_up_everything(
        self, reason: str, error_for: Callable[[Batch], SegOpsApiError]
    ) -> int | None:
        """Give up every event not finished for ``reason``; how many, or None if an earlier
        call did (this one then returns at once)."""
        with self.guard:
            if self.abandoned:
                return None
            self.abandoned = self.stopping = True
            batches = self.ledger.surrender()
            if self.senders is not None:
                self.senders.drop_waiting()
            self.changed.notify_all()
        try:
            self._wake.set()
            self._give_up([GivenUp.of_batch(batch, reason, error_for(batch)) for batch in batches])
            # Everything is finished now: whoever still waits in flush() has an answer.
            self.answer_all(final=True)
            return sum(len(batch) for batch in batches)
        finally:
            self._abandon_finished.set()


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


def waiting_for_api_error(
    blocked: BaseException, held: int, flush_interval: float, *, final: bool
) -> SegOpsApiError:
    """The report of an API that cannot be reached (or a token that cannot be had), with
    ``held`` events undelivered."""
    cause = describe(blocked)
    if final:
        where = "shutdown() gives them up now"
    else:
        where = (
            f"{'it waits' if held == 1 else 'they wait'} in the queue, tried again every "
            f"flush_interval ({flush_interval:g}s), and {'is' if held == 1 else 'are'} "
            "sent once the API answers"
        )
    fix = fix_for(blocked)
    error = SegOpsApiError(
        sentences(f"SegOps: {cause}", f"{count_events(held)} could not be sent: {where}", fix),
        undelivered=held,
        reason=cause,
        fix=fix,
    )
    error.__cause__ = blocked
    return error
