"""The background thread that empties the buffer into requests.

This module owns the consumer side of the buffer: one flusher thread per client per
process, started by the first event (so a process that never tracks has no thread of
ours). It answers ``flush()`` and ``shutdown()``, and at the shutdown deadline it gives up
every event it still holds. It does not own when held-back batches are due
(:mod:`~segops_fast._schedule`), what a response means (:mod:`~segops_fast._delivery`),
or the user's callbacks (the client's).

When the flusher sends
----------------------
The cost of delivery to the host application is per request and per wake-up far more
than per event: each request is a few hundred microseconds of Python on the host's CPU.
So the flusher lingers: once events wait, it sleeps until ``batch_size`` of them wait
or the oldest has waited ``flush_interval``, and then sends everything waiting. An idle
flusher sleeps with no timeout; the first event wakes it (the buffer's producer does,
once). ``flush()`` and ``shutdown()`` never wait for a linger.

How a cycle sends
-----------------
A cycle takes everything waiting, cuts it into batches of at most ``max_batch_bytes``,
and sends them, oldest first. The flusher sends a batch itself unless a sender thread
(``max_in_flight - 1`` of them, started when a cycle first has several batches) is free
to take it, and it always sends the last batch of a cycle itself. So a web worker whose
cycle fills one request pays no thread hand-off at all, while a backfill keeps
``max_in_flight`` requests under way. A cycle ends when all its requests are answered.

When a thread of ours fails
---------------------------
A request that raises an exception nobody expected gives up its own batch (see
:mod:`~segops_fast._delivery`) and sending goes on. Should the flusher or a sender thread
itself meet one (a bug, or ``sys.exit()`` in a callback), it does not end silently: every
event held is given up as ``unexpected_error``, the user is told, a ``track()`` waiting for
room is released, and ``flush()`` and ``shutdown()`` raise from then on.

Numbering
---------
Events are numbered in the order they were taken from the buffer. A flush is done when
every event numbered below its target is *finished* (acknowledged or given up); the
finished watermark is the lowest number still in a request or held back. Taken events
not finished yet still count against the buffer's bound. Where no Python thread runs
between requests (uWSGI without threads), the same cycle runs on the caller's thread
instead, when due.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from ._batching import Batch, assemble_batches
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
from ._encoding import Record
from ._errors import SegOpsApiError, count_events, describe, fix_for, sentences, unexpected
from ._schedule import SendSchedule
from ._stats import DeliveryCounters
from ._transport import NetworkConfigError

#: While the API cannot be reached, it is tried every flush_interval, but reported at most
#: this often: a long outage must not write an error to the log twice a second.
_UNREACHABLE_REPORT_INTERVAL = 5.0


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


class Flusher:
    """Consumes one :class:`EventBuffer` on a background thread."""

    def __init__(
        self,
        *,
        delivery: Delivery,
        counters: DeliveryCounters,
        capacity: int,
        batch_size: int,
        flush_interval: float,
        max_batch_bytes: int,
        max_in_flight: int,
        outage_patience: float,
        deadline: Deadline,
        background: bool,
        on_given_up: Callable[[GivenUp], None],
        report_error: Callable[[BaseException], None],
    ) -> None:
        self.buffer = EventBuffer(capacity, batch_size, self._wake_up)
        self._delivery = delivery
        self._counters = counters
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_batch_bytes = max_batch_bytes
        self._outage_patience = outage_patience
        self._background = background
        # Without a background thread every request is sent from the caller's thread.
        self._max_in_flight = max_in_flight if background else 1
        self._deadline = deadline
        self._on_given_up = on_given_up
        self._report_error = report_error
        self._wake = threading.Event()
        # Guards everything below. Producers never take it: only flush(), shutdown() and
        # this module's own threads do.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._senders: list[threading.Thread] = []
        #: Senders waiting for a batch (or about to): one is handed a batch only if it is
        #: free, else the flusher sends the batch itself.
        self._idle_senders = 0
        self._stopping = False
        #: Set by the flusher thread as it ends; the senders end when they see it.
        self._senders_may_exit = False
        self._open_requests: list[FlushRequest] = []
        #: A flush() was asked for since the last cycle began.
        self._flush_asked = False
        #: Batches handed to senders but not yet taken by one.
        self._to_send: deque[Batch] = deque()
        #: First event number -> each batch taken and not finished (sent, being sent, or
        #: about to be); right after a take, one stands for everything taken.
        self._in_flight: dict[int, Batch] = {}
        self._schedule = SendSchedule(flush_interval)
        self._last_unreachable_report = float("-inf")
        #: When the oldest event in the buffer started waiting (at most); None when empty.
        self._events_waiting_since: float | None = None
        #: The number the next event taken from the buffer gets.
        self._next_number = 0
        #: Set once everything held was given up: at the shutdown deadline, or when a
        #: thread of ours stopped on an unexpected exception.
        self._abandoned = False
        self._abandon_finished = threading.Event()
        #: How many events the shutdown deadline made us give up, and the last failure of
        #: the oldest of them that had one.
        self.given_up_at_deadline = 0
        self.deadline_cause: BaseException | None = None
        #: Set when a thread of ours stopped on an unexpected exception: what the user is
        #: told then. Nothing is sent after that.
        self.failure: SegOpsApiError | None = None
        #: Without a background thread: when the oldest waiting event arrived, and which
        #: thread is sending right now (its callbacks must not flush from inside).
        self._waiting_since: float | None = None
        self._sending_thread: int | None = None
        self._sending_here = threading.Lock()

    # -- called by other threads ---------------------------------------------------------

    def request_flush(self) -> FlushRequest | None:
        """Ask for everything enqueued so far to be sent now; None if there is nothing."""
        with self._lock:
            target = self.buffer.taken + len(self.buffer)
            if self._stopping or target <= self._finished_watermark():
                return None
            request = FlushRequest(target, time.monotonic() + self._outage_patience)
            self._open_requests.append(request)
            self._flush_asked = True
            self._changed.notify_all()
        self._wake_up()
        return request

    def stop(self) -> None:
        """Send what is left, then end the threads; the buffer must be closed already."""
        with self._lock:
            self._stopping = True
            self._changed.notify_all()
        self._wake.set()

    def join(self, timeout: float | None) -> bool:
        """Wait, ``timeout`` seconds in all, for every thread to end; True if they have."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
        # Only the flusher thread starts senders, even during its final cycle: once it has
        # ended, the list of senders is complete.
        for thread in self._senders:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        return not any(thread.is_alive() for thread in self._threads())

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

    def _stop_on_failure(self, error: BaseException) -> None:
        """A thread of ours met an exception nobody expected: stop sending for good.

        Whatever was held is handed to ``on_drop`` as ``unexpected_error`` and counted as
        failed, the user is told (never with the exception's text: see
        :func:`~segops_fast._errors.describe`), a ``track()`` waiting for room is released
        and later events are refused, and ``flush()`` and ``shutdown()`` raise from now on.
        """
        cause = f"the thread sending events stopped on {unexpected(error)}"
        fix = "Create a new SegOpsClient to send again"
        report = SegOpsApiError(
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
        with self._lock:
            if self.failure is not None:
                return
            self.failure = report
        self.buffer.close()
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
        with self._lock:
            if self._abandoned:
                return None
            self._abandoned = self._stopping = True
            unanswered = list(self._in_flight.values())
            held = self._schedule.take_all()
            self._in_flight.clear()
            self._to_send.clear()
            waiting = self._take_numbered()
            if waiting:
                held.append(self._in_flight.pop(self._next_number - len(waiting)))
            self._count_held_events()
            self._changed.notify_all()
        try:
            self._wake.set()
            batches = sorted([*unanswered, *held], key=lambda batch: batch.first)
            self._give_up([GivenUp.of_batch(batch, reason, error_for(batch)) for batch in batches])
            # Everything is finished now: whoever still waits in flush() has an answer.
            self._answer(list(self._open_requests), final=True)
            return sum(len(batch) for batch in batches)
        finally:
            self._abandon_finished.set()

    def why_undelivered(self) -> BaseException | None:
        """Why events wait: the API cannot be reached, or the last failure of the oldest
        batch that failed; None if none has (its request may just be slow)."""
        with self._lock:
            if self._schedule.unavailable_error is not None:
                return self._schedule.unavailable_error
            batches = sorted(
                [*self._in_flight.values(), *self._schedule], key=lambda batch: batch.first
            )
        return next((batch.last_error for batch in batches if batch.last_error), None)

    @property
    def has_background_thread(self) -> bool:
        """False under uWSGI without threads: then callers send from their own thread."""
        return self._background

    @property
    def is_own_thread(self) -> bool:
        return (
            threading.current_thread() in self._threads()
            or self._sending_thread == threading.get_ident()
        )

    def _threads(self) -> list[threading.Thread]:
        return [*([self._thread] if self._thread else []), *self._senders]

    def _wake_up(self) -> None:
        if not self._background:
            return
        if self._thread is None:
            self._start_thread()
        self._wake.set()

    def _start_thread(self) -> None:
        with self._lock:
            if self._thread is not None or self._stopping:
                return
            self._thread = _start_daemon(self._run, "segops-fast-flusher")

    # -- the flusher thread ----------------------------------------------------------------

    def _run(self) -> None:
        # Every exception is caught, and BaseExceptions too: in a thread of ours, SystemExit
        # (sys.exit() in a callback) would end it silently, and there is no caller for a
        # KeyboardInterrupt to reach (signals go to the main thread only).
        try:
            while not self._deadline.passed() and not self._abandoned:
                if not self._wait_until_due():
                    break  # whatever is left could only go after the deadline
                if self._deadline.passed():
                    break
                stopping = self._stopping
                self._send_waiting(final=stopping)
                if stopping and not self._has_work_left():
                    return
            self._give_up_everything_left()
        except BaseException as error:  # see above
            self._stop_on_failure(error)
        finally:
            with self._lock:
                self._stopping = True
                self._senders_may_exit = True
                self._changed.notify_all()

    def _wait_until_due(self) -> bool:
        """Return when a cycle is due (see :meth:`_seconds_until_due`): True, or False when
        stopping and nothing left can be sent before the shutdown deadline."""
        sure_nothing_was_missed = False
        try:
            while True:
                # Cleared before the checks, so a wake-up that races with them is not lost.
                self._wake.clear()
                with self._lock:
                    now = time.monotonic()
                    wait = self._seconds_until_due(now)
                    stopping = self._stopping
                    producers_may_wake_us = not (
                        stopping
                        or self._schedule.waiting_for_api
                        or self._schedule.seconds_paused(now)
                    )
                if wait == 0.0:
                    return True
                if stopping:
                    # Only a pause or retries are left to wait for, unless the deadline
                    # comes first.
                    return not self._deadline.sleep(wait or 0.0)
                idle = False
                if producers_may_wake_us:
                    idle = not len(self.buffer)
                    self.buffer.arm(first_event=idle)
                    if (idle and len(self.buffer)) or len(self.buffer) >= self._batch_size:
                        continue  # arrived while arming: look again
                    if wait is None and not sure_nothing_was_missed:
                        # A producer that read the threshold just before we armed it did
                        # not wake us: look once more after flush_interval, then sleep
                        # for as long as nothing happens.
                        wait = self._flush_interval
                woken = self._wake.wait(wait)
                sure_nothing_was_missed = idle and not woken
        finally:
            self.buffer.disarm()

    def _seconds_until_due(self, now: float) -> float | None:
        """How long until a cycle is due (0.0: now), None if nothing waits. Lock held.

        Due: ``batch_size`` events wait, the oldest has waited ``flush_interval``, a retry
        is due, a ``flush()`` waits for events in the buffer, or stopping. A pause the
        server asked for is kept whatever happens; while the API cannot be reached, the
        batches in hand are tried every ``flush_interval`` and when a flush asks.
        """
        schedule = self._schedule
        paused = schedule.seconds_paused(now)
        retry_in = schedule.seconds_until_retry(now)
        if self._stopping:
            if paused:
                return paused
            if len(self.buffer) or schedule.waiting_for_api or retry_in is None:
                return 0.0
            return retry_in
        if paused:
            return paused
        if schedule.waiting_for_api:
            if self._flush_asked:
                return 0.0
            patience = [request.patience_ends_at - now for request in self._open_requests]
            return max(0.0, min([schedule.seconds_until_unsent_due(now), *patience]))
        # A flush() is due when events it waits for are still in the buffer, or when no
        # retry is pending, so that it can be answered. Waiting for a retry, it does not
        # make every newer event go out in a request of its own.
        if any(request.target > self._next_number for request in self._open_requests):
            return 0.0
        if self._open_requests and retry_in is None:
            return 0.0
        waiting = len(self.buffer)
        if not waiting:
            self._events_waiting_since = None
            return retry_in
        if waiting >= self._batch_size:
            return 0.0
        if self._events_waiting_since is None:
            self._events_waiting_since = now
        linger = max(0.0, self._events_waiting_since + self._flush_interval - now)
        return linger if retry_in is None else min(linger, retry_in)

    def _send_waiting(self, *, final: bool) -> bool:
        """Send the retries that are due and the batches waiting for the API, and unless
        some were waiting for the API, everything in the buffer; then answer the flushes
        asked for so far. False if the API could not be reached (or no session token could
        be had); when ``final``, the batches not sent are given up."""
        with self._lock:
            now = time.monotonic()
            self._flush_asked = False
            api_was_unreachable = self._schedule.waiting_for_api
            retry = self._schedule.take_due(now, unsent_too=True)
            # Unfinished without a gap: a flush asked for now must still wait for them.
            for batch in retry:
                self._in_flight[batch.first] = batch
            records = [] if api_was_unreachable else self._take_numbered()
            answerable = list(self._open_requests)
        batches = retry + self._batches(records)
        # From here only ``batches`` holds the events, and _dispatch lets go of each batch
        # once it is finished: while the API is down a cycle lasts minutes, and finished
        # batches kept until its end would let a second queue's worth of events build up.
        del retry, records
        self._dispatch(batches)
        with self._lock:
            self._changed.wait_for(lambda: not self._in_flight or self._abandoned)
            if self._abandoned:
                return False
            blocked = self._schedule.unavailable_error
        if blocked is not None:
            now = time.monotonic()
            if final or now - self._last_unreachable_report >= _UNREACHABLE_REPORT_INTERVAL:
                self._last_unreachable_report = now
                self._report_error(self._waiting_for_api_error(blocked, final=final))
            if final:
                # Shutting down and the API cannot be reached: these cannot be delivered.
                self._give_up_held(REASON_FAILED, blocked)
        self._answer(answerable, final=final)
        return blocked is None

    def _waiting_for_api_error(self, blocked: BaseException, *, final: bool) -> SegOpsApiError:
        """The report of an API that cannot be reached (or a token that cannot be had)."""
        with self._lock:
            held = self._schedule.held_events() + len(self.buffer)
        cause = describe(blocked)
        if final:
            where = "shutdown() gives them up now"
        else:
            where = (
                f"{'it waits' if held == 1 else 'they wait'} in the queue, tried again every "
                f"flush_interval ({self._flush_interval:g}s), and {'is' if held == 1 else 'are'} "
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

    def _has_work_left(self) -> bool:
        return bool(self._schedule or len(self.buffer))

    def _take_numbered(self) -> list[Record]:
        """Take everything waiting and number it. Call with the lock held.

        The events count as unfinished from this moment: until their batches exist, one
        entry for all of them stands in ``_in_flight``, so no flush can think them done.
        """
        records = self.buffer.take()
        if records:
            self._counters.taken(len(records))
            self._in_flight[self._next_number] = Batch(records, "", self._next_number)
            self._next_number += len(records)
            self._count_held_events()
            # Whatever is in the buffer now arrived after this.
            self._events_waiting_since = time.monotonic()
        return records

    def _count_held_events(self) -> None:
        """Events taken but not finished still count against the queue bound, so that the
        buffer and the requests together never hold more than ``max_queue_size`` (an
        outage must not let a second full queue build up behind the retries). Call with
        the lock held."""
        held = sum(len(batch) for batch in self._in_flight.values())
        self.buffer.hold(held + self._schedule.held_events())

    def _batches(self, records: list[Record]) -> list[Batch]:
        """The batches of freshly taken ``records``, numbered on from the first of them."""
        if not records:
            return []
        number = self._next_number - len(records)
        batches = list(assemble_batches(records, self._max_batch_bytes))
        for batch in batches:
            batch.first = number
            number += len(batch)
        return batches

    def _dispatch(self, batches: list[Batch]) -> None:
        """Send ``batches`` in order, max_in_flight at most under way at once: each to a
        free sender, else here. Empties ``batches`` as it goes, so that a finished batch's
        events can be freed."""
        with self._lock:
            # Every batch is unfinished before the first is sent (this also replaces the
            # entry that stood for all the records since they were taken).
            for batch in batches:
                self._in_flight[batch.first] = batch
        batches.reverse()
        while batches:
            batch = batches.pop()
            with self._lock:
                if self._abandoned:
                    return
                now = time.monotonic()
                error = self._schedule.unavailable_error
                if error is not None:
                    # A sender could not reach the API: keep the rest for the next try.
                    del self._in_flight[batch.first]
                    self._schedule.hold_unsent([batch], error, now)
                    continue
                if self._schedule.seconds_paused(now):
                    # The server asked for a pause: the rest wait for its end, as retries do.
                    del self._in_flight[batch.first]
                    batch.retry_at = self._schedule.resume_at
                    self._schedule.retry_later([batch])
                    continue
                if batches and self._max_in_flight > 1:
                    self._start_senders()
                    if self._idle_senders > len(self._to_send):
                        self._to_send.append(batch)
                        self._changed.notify_all()
                        continue
            self._send(batch)

    def _start_senders(self) -> None:
        """Start the sender threads the first time a cycle has more than one batch. Lock held."""
        if not self._senders:
            self._idle_senders = self._max_in_flight - 1
            self._senders = [
                _start_daemon(self._run_sender, f"segops-fast-sender-{number}")
                for number in range(1, self._max_in_flight)
            ]

    # -- without a background thread (uWSGI without --enable-threads) -----------------------

    def append_and_send_when_due(self, record: Record) -> bool:
        """Append ``record``; if a batch is due, send what waits from this thread, now.

        Due means ``batch_size`` events wait, or the oldest has waited ``flush_interval``.
        Events tracked by an idle process wait for its next event, flush or exit.
        """
        if not self.buffer.append(record):
            return False
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        due = (
            len(self.buffer) >= self._batch_size
            or now - self._waiting_since >= self._flush_interval
            or self._schedule.seconds_until_retry(now) == 0.0
        ) and not self._schedule.seconds_paused(now)
        # Never re-entered: a callback that tracks while we send leaves its event queued.
        if due and self._sending_here.acquire(blocking=False):
            try:
                self._send_here(final=False)
            finally:
                self._sending_here.release()
        return True

    def send_everything_here(self, *, final: bool) -> None:
        """flush() and shutdown() without a background thread: send until nothing waits,
        the API cannot be reached, or the deadline passes (then give up what is left)."""
        with self._sending_here:
            out_of_time = False
            while self._has_work_left() and not self._deadline.passed():
                # Wait here, as flush() would, for a pause the server asked for to end,
                # or when only retries are left, for the next.
                now = time.monotonic()
                wait = self._schedule.seconds_paused(now)
                if not self._schedule.waiting_for_api and not len(self.buffer):
                    wait = max(wait, self._schedule.seconds_until_retry(now) or 0.0)
                out_of_time = wait > 0 and self._deadline.sleep(wait)
                if out_of_time or not self._send_here(final=final):
                    break
            if final and (out_of_time or self._deadline.passed()):
                self._give_up_everything_left()
            self._answer(list(self._open_requests), final=final)

    def _send_here(self, *, final: bool) -> bool:
        self._sending_thread = threading.get_ident()
        self._waiting_since = None
        try:
            return self._send_waiting(final=final)
        finally:
            self._sending_thread = None

    # -- sending (the flusher thread, or a sender thread) ------------------------------------

    def _run_sender(self) -> None:
        try:
            while True:
                with self._lock:
                    self._changed.wait_for(lambda: bool(self._to_send) or self._senders_may_exit)
                    if not self._to_send:
                        return
                    batch = self._to_send.popleft()
                    self._idle_senders -= 1
                try:
                    self._send(batch)
                finally:
                    with self._lock:
                        self._idle_senders += 1
        except BaseException as error:  # as in _run
            self._stop_on_failure(error)

    def _send(self, batch: Batch) -> None:
        attempted = self._delivery.attempt_batch(batch)
        with self._lock:
            if self._in_flight.get(batch.first) is not batch:
                # Given up at the shutdown deadline while under way: already settled.
                return
            del self._in_flight[batch.first]
            self._settle(attempted)
            self._count_held_events()
            self._changed.notify_all()
        for part in attempted.given_up:
            self._on_given_up(part)

    def _settle(self, attempted: Attempted) -> None:
        """Count and schedule what one attempt came to. Call with the lock held."""
        for events, body_bytes in attempted.acknowledged:
            self._counters.acknowledged(events, body_bytes)
        self._count_given_up(attempted.given_up)
        if attempted.unavailable is not None:
            for batch in attempted.unsent:
                batch.last_error = attempted.unavailable
            self._schedule.hold_unsent(attempted.unsent, attempted.unavailable, time.monotonic())
        self._schedule.retry_later(attempted.to_retry)
        self._schedule.pause_until(attempted.resume_at)

    # -- giving up and answering -------------------------------------------------------------

    def _count_given_up(self, given_up: list[GivenUp]) -> None:
        """Count given-up events at once, under the lock, so that the counters add up at
        every moment; the user's callbacks run later, outside it. Lock held."""
        for part in given_up:
            self._counters.given_up(len(part.events), failed=part.failed, reason=part.reason)
            for request in self._open_requests:
                request.note_undelivered(part.first, len(part.events), part.error, part.reason)

    def _give_up(self, given_up: list[GivenUp]) -> None:
        with self._lock:
            self._count_given_up(given_up)
        for part in given_up:
            self._on_given_up(part)

    def _give_up_held(self, reason: str, error: BaseException) -> None:
        """Give up the batches waiting for the API or for a retry."""
        with self._lock:
            held = self._schedule.take_all()
            self._count_held_events()
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

    def _give_up_everything_left(self) -> None:
        """The deadline has passed, or will before anything left could be sent: let the
        requests under way end, until the deadline itself, then give up everything."""
        with self._lock:
            self._changed.wait_for(
                lambda: not self._in_flight or self._abandoned, self._deadline.time_left()
            )
        self.abandon()

    def _answer(self, requests: list[FlushRequest], *, final: bool) -> None:
        if not requests:
            return
        with self._lock:
            finished = self._finished_watermark()
            blocked = self._schedule.unavailable_error
            now = time.monotonic()
            answered = []
            for request in requests:
                if finished >= request.target:
                    answered.append(request)
                elif blocked is not None and (
                    final
                    or now >= request.patience_ends_at
                    or isinstance(blocked, NetworkConfigError)
                ):
                    # The API stayed unreachable for as long as the retry schedule would
                    # have waited for it, or it cannot be reached until the TLS or proxy
                    # settings change: the events stay queued, the caller is told.
                    request.note_undelivered(finished, request.target - finished, blocked)
                    answered.append(request)
                # Otherwise some of its events wait for a retry or for the API, or were
                # still in the buffer when this cycle began: a later cycle answers it.
            self._open_requests = [r for r in self._open_requests if r not in answered]
        for request in answered:
            request.finish()

    def _finished_watermark(self) -> int:
        """Every event numbered below this is finished. Call with the lock held."""
        waiting = [*self._in_flight, *(batch.first for batch in self._schedule)]
        return min(waiting) if waiting else self._next_number


def _start_daemon(target: Callable[[], None], name: str) -> threading.Thread:
    # Daemon: a process that exits without shutdown() must not wait for our threads; the
    # exit hook has already given them their deadline.
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread
