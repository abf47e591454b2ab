"""The background thread that empties the buffer, and when it does.

This module owns the flusher thread of one pipeline (started by the first event, so a
process that never tracks has no thread of ours), its linger timing, and waking it: the
buffer's producer wakes it once per batch, ``flush()`` and ``shutdown()`` whenever they
ask. What a cycle does is ``_cycle.py``'s; the sender threads are
``_senders.py``'; without threads (uWSGI) ``_inline.py`` drives
the same cycle instead.

When the flusher sends
----------------------
The cost of delivery to the host application is per request and per wake-up far more
than per event: each request is a few hundred microseconds of Python on the host's CPU.
So the flusher lingers: once events wait, it sleeps until ``batch_size`` of them wait
or the oldest has waited ``flush_interval``, and then sends everything waiting. An idle
flusher sleeps with no timeout; the first event wakes it (the buffer's producer does,
once). ``flush()`` and ``shutdown()`` never wait for a linger.

A cycle sends a batch on this thread unless a sender thread (``max_in_flight - 1`` of
them, started when a cycle first has several batches) is free to take it, and it always
sends the last batch of a cycle itself. So a web worker whose cycle fills one request
pays no thread hand-off at all, while a backfill keeps ``max_in_flight`` requests under
way. A cycle ends when all its requests are answered.

When a thread of ours fails
---------------------------
A request that raises an exception nobody expected gives up its own batch (see
:mod:`~segops_fast._delivery`) and sending goes on. Should the flusher or a sender thread
itself meet one (a bug, or ``sys.exit()`` in a callback), it does not end silently: every
event held is given up as ``unexpected_error``, the user is told, a ``track()`` waiting for
room is released, and ``flush()`` and ``shutdown()`` raise from then on.

The flusher is a driver: it reads the state holders with the pipeline's lock held, and
never holds it while it sleeps.
"""

from __future__ import annotations

import threading
import time

from ._buffer import EventBuffer
from ._cycle import Cycle
from ._delivery import Deadline
from ._encoding import Record
from ._senders import start_daemon


class Flusher:
    """Runs the cycle on a background thread when it is due."""

    def __init__(
        self,
        *,
        cycle: Cycle,
        buffer: EventBuffer,
        wake: threading.Event,
        batch_size: int,
        flush_interval: float,
        deadline: Deadline,
    ) -> None:
        self._cycle = cycle
        self._ledger = cycle.ledger
        self._requests = cycle.requests
        self._schedule = cycle.ledger.schedule
        self._guard = cycle.guard
        self._buffer = buffer
        #: Set by a producer, flush(), stop() or giving up: the thread looks again.
        self._wake = wake
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._deadline = deadline
        self._thread: threading.Thread | None = None
        # The linger clock, read and written by the flusher thread only, under the lock.
        #: When the oldest event in the buffer started waiting (at most); None when empty.
        self._events_waiting_since: float | None = None
        #: The ledger's last take seen: events in the buffer arrived after it.
        self._take_seen: float | None = None

    # -- the driver's interface ------------------------------------------------------------

    def append(self, record: Record) -> bool:
        return self._buffer.append(record)

    def wake_up(self) -> None:
        if self._thread is None:
            self._start_thread()
        self._wake.set()

    def drain(self, *, final: bool) -> None:
        """Nothing to do on the caller's thread: the flusher thread sends."""

    def make_room(self) -> None:
        """on_full="block": wait until the flusher thread has taken events."""
        self._buffer.wait_for_room(None)

    def join(self, timeout: float | None) -> bool:
        """Wait, ``timeout`` seconds in all, for every thread to end; True if they have."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
        # Only the flusher thread starts senders, even during its final cycle: once it has
        # ended, the list of senders is complete.
        for thread in self._senders():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
        return not any(thread.is_alive() for thread in self._threads())

    @property
    def is_own_thread(self) -> bool:
        return threading.current_thread() in self._threads()

    def _senders(self) -> list[threading.Thread]:
        senders = self._cycle.senders
        return [] if senders is None else senders.threads

    def _threads(self) -> list[threading.Thread]:
        return [*([self._thread] if self._thread else []), *self._senders()]

    def _start_thread(self) -> None:
        with self._guard:
            if self._thread is not None or self._cycle.stopping:
                return
            self._thread = start_daemon(self._run, "segops-fast-flusher")

    # -- the flusher thread ----------------------------------------------------------------

    def _run(self) -> None:
        # Every exception is caught, and BaseExceptions too: in a thread of ours, SystemExit
        # (sys.exit() in a callback) would end it silently, and there is no caller for a
        # KeyboardInterrupt to reach (signals go to the main thread only).
        cycle = self._cycle
        try:
            while not self._deadline.passed() and not cycle.abandoned:
                if not self._wait_until_due():
                    break  # whatever is left could only go after the deadline
                if self._deadline.passed():
                    break
                with self._guard:
                    stopping = cycle.stopping
                cycle.run(final=stopping)
                if stopping and not cycle.has_work_left():
                    return
            cycle.surrender.everything_left()
        except BaseException as error:  # see above
            cycle.surrender.on_failure(error)
        finally:
            cycle.end_senders()

    def _wait_until_due(self) -> bool:
        """Return when a cycle is due (see ``_seconds_until_due()``): True, or False when
        stopping and nothing left can be sent before the shutdown deadline."""
        buffer = self._buffer
        sure_nothing_was_missed = False
        try:
            while True:
                # Cleared before the checks, so a wake-up that races with them is not lost.
                self._wake.clear()
                with self._guard:
                    now = time.monotonic()
                    wait = self._seconds_until_due(now)
                    stopping = self._cycle.stopping
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
                    idle = not len(buffer)
                    buffer.arm(first_event=idle)
                    if (idle and len(buffer)) or len(buffer) >= self._batch_size:
                        continue  # arrived while arming: look again
                    if wait is None and not sure_nothing_was_missed:
                        # A producer that read the threshold just before we armed it did
                        # not wake us: look once more after flush_interval, then sleep
                        # for as long as nothing happens.
                        wait = self._flush_interval
                woken = self._wake.wait(wait)
                sure_nothing_was_missed = idle and not woken
        finally:
            buffer.disarm()

    def _seconds_until_due(self, now: float) -> float | None:
        """How long until a cycle is due (0.0: now), None if nothing waits. Lock held.

        Due: ``batch_size`` events wait, the oldest has waited ``flush_interval``, a retry
        is due, a ``flush()`` waits for events in the buffer, or stopping. A pause the
        server asked for is kept whatever happens; while the API cannot be reached, the
        batches in hand are tried every ``flush_interval`` and when a flush asks.
        """
        schedule = self._schedule
        requests = self._requests
        if self._ledger.last_take != self._take_seen:
            self._take_seen = self._events_waiting_since = self._ledger.last_take
        paused = schedule.seconds_paused(now)
        retry_in = schedule.seconds_until_retry(now)
        if self._cycle.stopping:
            if paused:
                return paused
            if len(self._buffer) or schedule.waiting_for_api or retry_in is None:
                return 0.0
            return retry_in
        if paused:
            return paused
        if schedule.waiting_for_api:
            if requests.asked:
                return 0.0
            patience = requests.patience_left(now)
            unsent_due = schedule.seconds_until_unsent_due(now)
            return max(0.0, unsent_due if patience is None else min(unsent_due, patience))
        # A flush() is due when events it waits for are still in the buffer, or when no
        # retry is pending, so that it can be answered. Waiting for a retry, it does not
        # make every newer event go out in a request of its own.
        if requests.waits_beyond(self._ledger.next_number):
            return 0.0
        if requests and retry_in is None:
            return 0.0
        waiting = len(self._buffer)
        if not waiting:
            self._events_waiting_since = None
            return retry_in
        if waiting >= self._batch_size:
            return 0.0
        if self._events_waiting_since is None:
            self._events_waiting_since = now
        linger = max(0.0, self._events_waiting_since + self._flush_interval - now)
        return linger if retry_in is None else min(linger, retry_in)
