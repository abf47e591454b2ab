"""One sending cycle, shared by both drivers: take, cut, send, settle, answer.

This module owns what a cycle does, whichever thread runs it (the flusher thread, or the
caller's under uWSGI without threads): take the retries due and everything waiting, cut
them into batches of at most ``max_batch_bytes``, send them oldest first (handing some to
the sender threads), settle each answer, and answer the flushes asked for. It also owns
the pipeline's run state (stopping, abandoned) and the steps of giving up that need the
lock; when to give up is ``_surrender.py``'s. It is a driver: it takes the
pipeline's lock around its calls to the state holders (``_ledger.py``,
``_flush_requests.py``, the send schedule), and never holds it while
sending or calling the user's callbacks. It does not own when a cycle runs
(:mod:`~segops_fast._flusher`, ``_inline.py``).

The orderings that exactly-once rests on
----------------------------------------
* Every batch is registered in flight before the first is sent (``Cycle._dispatch()``),
  so a flush never sees a gap.
* Abandon empties the in-flight set under the lock (``Cycle.begin_surrender()``) before
  anything is handed to ``on_drop``, so a late answer for a batch given up is ignored
  (``Cycle.send()``): no event is both dropped and sent.
* Batches are released while sending: once cut, only the cycle's list holds them, and
  ``Cycle._dispatch()`` empties it as it goes, so a batch sent can be freed (while the
  API is down a cycle lasts minutes, and finished batches kept until its end would let a
  second queue's worth of events build up).
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from ._batching import Batch
from ._buffer import EventBuffer
from ._delivery import (
    REASON_FAILED,
    Attempted,
    Deadline,
    Delivery,
    GivenUp,
)
from ._errors import SegOpsApiError, count_events, describe, fix_for, sentences
from ._flush_requests import FlushRequest, FlushRequests
from ._ledger import Ledger, cut
from ._locks import PipelineLock
from ._reporting import Throttle
from ._senders import SenderPool
from ._stats import DeliveryCounters
from ._surrender import Surrender

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
        self._flush_interval = flush_interval
        self._max_batch_bytes = max_batch_bytes
        self._on_given_up = on_given_up
        self._report_error = report_error
        self._unreachable_reports = Throttle(_UNREACHABLE_REPORT_INTERVAL)
        #: Gives up what cannot be sent; keeps what the deadline or a failure gave up.
        self.surrender = Surrender(
            self, buffer=buffer, deadline=deadline, report_error=report_error
        )
        self.senders = (
            SenderPool(
                max_in_flight - 1,
                send=self.send,
                changed=self.changed,
                guard=guard,
                on_failure=self.surrender.on_failure,
            )
            if max_in_flight > 1
            else None
        )
        # Guarded by the lock, like the state holders'.
        self.stopping = False
        #: Set once everything held was given up: at the shutdown deadline, or when a
        #: thread of ours stopped on an unexpected exception.
        self.abandoned = False

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
                self.surrender.held(REASON_FAILED, blocked)
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

    def give_up(self, given_up: list[GivenUp]) -> None:
        """Count ``given_up`` at once, then tell the user, outside the lock."""
        with self.guard:
            self._count_given_up(given_up)
        for part in given_up:
            self._on_given_up(part)

    def wait_for_answers(self, timeout: float | None) -> None:
        """Wait, at most ``timeout`` seconds, until no batch is in flight (or abandoned)."""
        with self.guard:
            self.changed.wait_for(lambda: not self.ledger.busy() or self.abandoned, timeout)

    def begin_surrender(self) -> list[Batch] | None:
        """Stop for good and take every batch not finished, oldest first; None if an
        earlier call did. The in-flight set is empty when this returns, so an answer that
        comes later for one of these batches is ignored."""
        with self.guard:
            if self.abandoned:
                return None
            self.abandoned = self.stopping = True
            batches = self.ledger.surrender()
            if self.senders is not None:
                self.senders.drop_waiting()
            self.changed.notify_all()
        self._wake.set()
        return batches


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
