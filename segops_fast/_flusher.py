"""The background threads that empty the buffer into requests.

This module owns the consumer side of the buffer: one flusher thread per client per
process, started by the first event (so a process that never tracks has no thread of
ours), sleeping until ``batch_size`` events wait or ``flush_interval`` passes, then
cutting everything waiting into batches of at most ``max_batch_bytes``, oldest first.
With ``max_in_flight`` above 1 it hands batches to that many sender threads, so that
assembling the next batch overlaps with waiting for the server's answer to the last.
It answers ``flush()`` and ``shutdown()`` requests and gives events up only through
:class:`~segops_fast._delivery.GivenUp`. Where no Python thread runs between requests
(uWSGI without threads), the same cycle runs on the caller's thread instead, when due.
Taken events that are not finished yet still count against the buffer's bound. It does
not own what a response means (:mod:`~segops_fast._delivery`) or the user's callbacks
(the client's).

Events are numbered in the order they were taken from the buffer. A flush is done when
every event numbered below its target is *finished* (acknowledged or given up); the
finished watermark is the lowest number still in a request or waiting for the API.

A batch to be retried waits in ``_retrying`` until its time comes; meanwhile every cycle
sends what is new, so that one batch's backoff delays nobody else's events. A
``Retry-After`` from the server pauses all sending until it ends (``_resume_at``). When
the API cannot be reached (or no session token can be had), the batches not yet delivered
wait in ``_unsent`` and are tried again once per ``flush_interval``, before anything
newer. Both count against the queue bound like queued events.
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
    Deadline,
    Delivery,
    GivenUp,
)
from ._encoding import Record, render_event
from ._errors import SegOpsApiError
from ._stats import DeliveryCounters


class FlushRequest:
    """A caller waiting until every event enqueued before its call has a known fate."""

    def __init__(self, target: int) -> None:
        #: The flush is done when every event numbered below this is finished.
        self.target = target
        self.undelivered = 0
        self.error: BaseException | None = None
        self._done = threading.Event()

    def wait(self, timeout: float | None) -> bool:
        return self._done.wait(timeout)

    def note_undelivered(self, first: int, count: int, error: BaseException) -> None:
        """Events ``first`` to ``first + count`` are undelivered: count those this flush covers."""
        covered = min(count, self.target - first)
        if covered > 0:
            self.undelivered += covered
            self.error = error

    def finish(self) -> None:
        self._done.set()


class Flusher:
    """Consumes one :class:`EventBuffer` on background threads."""

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
        self._threads: list[threading.Thread] = []
        self._stopping = False
        #: Set by the flusher thread as it ends; the senders end when they see it.
        self._senders_may_exit = False
        self._open_requests: list[FlushRequest] = []
        #: Batches handed to senders but not yet taken by one.
        self._to_send: deque[Batch] = deque()
        #: First event number -> event count of each batch whose fate is not known.
        self._in_flight: dict[int, int] = {}
        #: Batches waiting for their next attempt, each until its ``retry_at``.
        self._retrying: list[Batch] = []
        #: Nothing is sent before this moment (``time.monotonic()``): the server asked so.
        self._resume_at = 0.0
        #: Batches that wait for the API to be reachable, and the error that stopped them.
        self._unsent: list[Batch] = []
        self._unavailable_error: BaseException | None = None
        #: The number the next event taken from the buffer gets.
        self._next_number = 0
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
            request = FlushRequest(target)
            self._open_requests.append(request)
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
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        return not any(thread.is_alive() for thread in self._threads)

    @property
    def has_background_thread(self) -> bool:
        """False under uWSGI without threads: then callers send from their own thread."""
        return self._background

    @property
    def is_own_thread(self) -> bool:
        return (
            threading.current_thread() in self._threads
            or self._sending_thread == threading.get_ident()
        )

    def _wake_up(self) -> None:
        if not self._background:
            return
        if not self._threads:
            self._start_threads()
        self._wake.set()

    def _start_threads(self) -> None:
        with self._lock:
            if self._threads or self._stopping:
                return
            targets = [self._run]
            if self._max_in_flight > 1:
                targets += [self._run_sender] * self._max_in_flight
            for number, target in enumerate(targets):
                name = "segops-fast-flusher" if number == 0 else f"segops-fast-sender-{number}"
                thread = threading.Thread(target=target, name=name)
                thread.daemon = True
                thread.start()
                self._threads.append(thread)

    # -- the flusher thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._deadline.passed():
                if self._cycle():
                    return
            self._give_up_everything_left()
        finally:
            with self._lock:
                self._stopping = True
                self._senders_may_exit = True
                self._changed.notify_all()

    def _cycle(self) -> bool:
        """Sleep until due, send everything waiting, answer flushes; True when it is time to end."""
        self._sleep_until_due()
        stopping = self._stopping
        self._send_waiting(final=stopping)
        return stopping and not self._has_work_left()

    def _send_waiting(self, *, final: bool) -> bool:
        """Send the retries that are due and the batches waiting for the API, and unless
        some were waiting for the API, everything in the buffer; then answer the flushes
        asked for so far. False if the API could not be reached (or no session token could
        be had); when ``final``, the batches not sent are given up."""
        with self._lock:
            now = time.monotonic()
            due = [batch for batch in self._retrying if batch.retry_at <= now]
            self._retrying = [batch for batch in self._retrying if batch.retry_at > now]
            api_was_unreachable = bool(self._unsent)
            retry = sorted(self._unsent + due, key=lambda batch: batch.first)
            self._unsent = []
            # Unfinished without a gap: a flush asked for now must still wait for them.
            for batch in retry:
                self._in_flight[batch.first] = len(batch)
            self._unavailable_error = None
            records = [] if api_was_unreachable else self._take_numbered()
            answerable = list(self._open_requests)
        batches = retry + self._batches(records)
        # From here only ``batches`` holds the events, and _dispatch lets go of each batch
        # once it is finished: while the API is down a cycle lasts minutes, and finished
        # batches kept until its end would let a second queue's worth of events build up.
        del retry, records
        self._dispatch(batches)
        # Settling before the next cycle keeps the unavailable error and the flush answers
        # consistent; requests within one cycle still overlap. It costs one attempt's time
        # at most: a batch to be retried waits for its next attempt outside any cycle.
        with self._lock:
            self._changed.wait_for(lambda: not self._in_flight)
            blocked = self._unavailable_error
        if blocked is not None:
            self._report_error(blocked)
            if final:
                # Shutting down and the API cannot be reached: these cannot be delivered.
                self._give_up_held(REASON_FAILED, blocked)
        self._answer(answerable)
        return blocked is None

    def _sleep_until_due(self) -> None:
        # Cleared before the checks, so a wake-up that races with them is not lost.
        self._wake.clear()
        with self._lock:
            if self._unsent:
                # The API could not be reached: try again after flush_interval, however
                # full the buffer gets (producers above its high-water mark would wake us
                # at once).
                if not self._stopping and not self._open_requests:
                    self._changed.wait_for(
                        lambda: self._stopping or bool(self._open_requests),
                        self._flush_interval,
                    )
                return
            retry_in = self._seconds_until_a_retry()
            # A flush() is due when events it waits for are still in the buffer, or when
            # no retry is pending, so that it can be answered. Waiting for a retry, it
            # does not make every newer event go out in a request of its own.
            flush_due = any(request.target > self._next_number for request in self._open_requests)
            flush_due |= bool(self._open_requests) and retry_in is None
            pause = self._resume_at - time.monotonic()
            if pause > 0 and not self._stopping:
                # The server asked for a pause: neither new events nor flush() end it.
                self._changed.wait_for(lambda: self._stopping, pause)
                return
        if pause > 0:
            # Stopping: the pause is kept, unless the deadline comes first.
            self._deadline.sleep(pause)
            return
        if retry_in == 0.0:
            return
        if self._stopping:
            if retry_in is not None and not len(self.buffer):
                # Only retries are left: wait for the next, unless the deadline comes first.
                self._deadline.sleep(retry_in)
            return
        if flush_due:
            return
        timeout = self._flush_interval if retry_in is None else min(retry_in, self._flush_interval)
        self.buffer.arm()
        if len(self.buffer) < self._batch_size:
            self._wake.wait(timeout)
        self.buffer.disarm()

    def _has_work_left(self) -> bool:
        return bool(self._unsent or self._retrying or len(self.buffer))

    def _seconds_until_a_retry(self) -> float | None:
        """How long until the next retry is due (0.0: now), None if none waits."""
        if not self._retrying:
            return None
        due_at = min(batch.retry_at for batch in self._retrying)
        return max(0.0, due_at - time.monotonic())

    def _take_numbered(self) -> list[Record]:
        """Take everything waiting and number it. Call with the lock held.

        The events count as unfinished from this moment: until their batches exist, one
        entry for all of them stands in ``_in_flight``, so no flush can think them done.
        """
        records = self.buffer.take()
        if records:
            self._counters.taken(len(records))
            self._in_flight[self._next_number] = len(records)
            self._next_number += len(records)
            self._count_held_events()
        return records

    def _count_held_events(self) -> None:
        """Events taken but not finished still count against the queue bound, so that the
        buffer and the requests together never hold more than ``max_queue_size`` (an
        outage must not let a second full queue build up behind the retries). Call with
        the lock held."""
        held = sum(self._in_flight.values()) + sum(
            len(batch) for batch in (*self._unsent, *self._retrying)
        )
        self.buffer.hold(held)

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
        """Send ``batches`` in order, here or through the senders, max_in_flight at most.

        Empties ``batches`` as it goes, so that a finished batch's events can be freed.
        """
        with self._lock:
            # Every batch is unfinished before the first is sent (this also replaces the
            # entry that stood for all the records since they were taken).
            for batch in batches:
                self._in_flight[batch.first] = len(batch)
        batches.reverse()
        while batches:
            batch = batches.pop()
            with self._lock:
                if self._unavailable_error is not None:
                    # A sender could not reach the API: keep the rest for the next cycle.
                    del self._in_flight[batch.first]
                    self._unsent.append(batch)
                    continue
                if self._resume_at > time.monotonic():
                    # The server asked for a pause: the rest wait for its end, as retries do.
                    del self._in_flight[batch.first]
                    batch.retry_at = self._resume_at
                    self._retrying.append(batch)
                    continue
                if self._max_in_flight > 1:
                    self._changed.wait_for(lambda: len(self._to_send) == 0)
                    self._to_send.append(batch)
                    self._changed.notify_all()
                    continue
            self._send(batch)

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
            or self._seconds_until_a_retry() == 0.0
        ) and now >= self._resume_at
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
            while self._has_work_left() and not self._deadline.passed():
                # Wait here, as flush() would, for a pause the server asked for to end,
                # or when only retries are left, for the next.
                wait = self._resume_at - time.monotonic()
                if not self._unsent and not len(self.buffer):
                    wait = max(wait, self._seconds_until_a_retry() or 0.0)
                if wait > 0 and self._deadline.sleep(wait):
                    break
                if not self._send_here(final=final):
                    break
            if final and self._deadline.passed():
                self._give_up_everything_left()
            self._answer(list(self._open_requests))

    def _send_here(self, *, final: bool) -> bool:
        self._sending_thread = threading.get_ident()
        self._waiting_since = None
        try:
            return self._send_waiting(final=final)
        finally:
            self._sending_thread = None

    # -- sending (the flusher thread, or a sender thread) ------------------------------------

    def _run_sender(self) -> None:
        while True:
            with self._lock:
                self._changed.wait_for(lambda: bool(self._to_send) or self._senders_may_exit)
                if not self._to_send:
                    return
                batch = self._to_send.popleft()
                self._changed.notify_all()
            self._send(batch)

    def _send(self, batch: Batch) -> None:
        attempted = self._delivery.attempt_batch(batch)
        for part in attempted.given_up:
            self._give_up(part)
        with self._lock:
            if attempted.unavailable is not None:
                self._unavailable_error = attempted.unavailable
                self._unsent.extend(attempted.unsent)
                self._unsent.sort(key=lambda waiting: waiting.first)
            self._retrying.extend(attempted.to_retry)
            self._resume_at = max(self._resume_at, attempted.resume_at)
            del self._in_flight[batch.first]
            self._count_held_events()
            self._changed.notify_all()

    # -- giving up and answering -------------------------------------------------------------

    def _give_up(self, given_up: GivenUp) -> None:
        if not given_up.events:
            return
        with self._lock:
            for request in self._open_requests:
                request.note_undelivered(given_up.first, len(given_up.events), given_up.error)
        self._on_given_up(given_up)

    def _give_up_held(self, reason: str, error: BaseException) -> None:
        """Give up the batches waiting for the API or for a retry."""
        with self._lock:
            held = sorted(self._unsent + self._retrying, key=lambda batch: batch.first)
            self._unsent = []
            self._retrying = []
            self._count_held_events()
        for batch in held:
            message = f"SegOps: {len(batch)} events undelivered: {error}"
            failure = SegOpsApiError(message, undelivered=len(batch))
            # Never sent this time, but an earlier attempt may have been stored unanswered.
            why = (
                REASON_RETRIES_EXHAUSTED
                if reason == REASON_FAILED and batch.maybe_stored
                else reason
            )
            self._give_up(GivenUp.of_batch(batch, why, failure))

    def _give_up_everything_left(self) -> None:
        """The shutdown deadline passed: drop what waits, once the requests under way end."""
        with self._lock:
            self._changed.wait_for(lambda: not self._in_flight)
            records = self._take_numbered()
        self._give_up_held(REASON_SHUTDOWN_DEADLINE, SegOpsApiError("shutdown deadline passed"))
        if records:
            first = self._next_number - len(records)
            error = SegOpsApiError("shutdown deadline passed", undelivered=len(records))
            events = [render_event(record) for record in records]
            self._give_up(GivenUp(events, REASON_SHUTDOWN_DEADLINE, error, first))
            with self._lock:
                del self._in_flight[first]
        # Everything is finished now: whoever still waits in flush() has an answer.
        self._answer(list(self._open_requests))

    def _answer(self, requests: list[FlushRequest]) -> None:
        if not requests:
            return
        with self._lock:
            finished = self._finished_watermark()
            blocked = self._unavailable_error
            answered = []
            for request in requests:
                if finished >= request.target:
                    answered.append(request)
                elif blocked is not None:
                    request.note_undelivered(finished, request.target - finished, blocked)
                    answered.append(request)
                # Otherwise some of its events wait for a retry, or were still in the buffer
                # when this cycle began (it only retried batches held back): a later cycle
                # answers it.
            self._open_requests = [r for r in self._open_requests if r not in answered]
        for request in answered:
            request.finish()

    def _finished_watermark(self) -> int:
        """Every event numbered below this is finished. Call with the lock held."""
        held = (*self._unsent, *self._retrying)
        waiting = [*self._in_flight, *(batch.first for batch in held)]
        return min(waiting) if waiting else self._next_number
