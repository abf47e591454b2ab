"""Sending from the caller's thread, where no thread of ours may run: uWSGI.

This module owns the driver used where the pipeline has no background thread: a uWSGI
worker that runs no Python thread between requests (without ``--enable-threads``), and the
uWSGI master, which must never start one (see :mod:`~segops_fast._uwsgi`). It runs the same
cycle as the flusher thread (``_cycle.py``), on the thread that tracks,
flushes or shuts down, and keeps it from being re-entered by a callback that tracks while
it sends. It does not own what a cycle does, nor the decision of which driver a pipeline
uses (``_pipeline.py``).
"""

from __future__ import annotations

import threading
import time

from ._buffer import EventBuffer
from ._cycle import Cycle
from ._delivery import Deadline
from ._encoding import Record


class InlineSender:
    """Runs the cycle on the caller's thread when it is due."""

    def __init__(
        self,
        *,
        cycle: Cycle,
        buffer: EventBuffer,
        batch_size: int,
        flush_interval: float,
        deadline: Deadline,
    ) -> None:
        self._cycle = cycle
        self._schedule = cycle.ledger.schedule
        self._buffer = buffer
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._deadline = deadline
        #: When the oldest waiting event arrived; None when none waits.
        self._waiting_since: float | None = None
        #: The thread sending right now: its callbacks must not flush from inside.
        self._sending_thread: int | None = None
        self._sending_here = threading.Lock()

    def append(self, record: Record) -> bool:
        """Append ``record``; if a batch is due, send what waits from this thread, now.

        Due means ``batch_size`` events wait, or the oldest has waited ``flush_interval``.
        Events tracked by an idle process wait for its next event, flush or exit.
        """
        if not self._buffer.append(record):
            return False
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        # Read without the lock: no other thread of ours runs here.
        due = (
            len(self._buffer) >= self._batch_size
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

    def append_and_send_all(self, record: Record) -> bool:
        """In the uWSGI master: send now, from this thread, everything waiting.

        The master must not start a thread (see ``_uwsgi.py``), and it cannot hand its
        events to the workers: each worker starts with a copy of them, so either all would
        send them or, with one chosen, every respawn of that one would again. The master
        tracks only while it imports the application, so sending each event as it is
        tracked costs a request per event at start-up (about a millisecond each here),
        bounded like any request by ``timeout`` and the retry schedule. If the API cannot
        be reached they stay queued for the master's next event (uWSGI's master runs no
        Python exit hook at its stop).
        """
        if not self._buffer.append(record):
            return False
        # A callback that tracks while this thread sends leaves its event for the next call.
        if not self.is_own_thread:
            self.drain(final=False)
        return True

    def wake_up(self) -> None:
        """Nothing to wake: the caller's thread sends when a batch is due."""

    def drain(self, *, final: bool) -> None:
        """flush() and shutdown(): send until nothing waits, the API cannot be reached, or
        the deadline passes (then give up what is left)."""
        cycle = self._cycle
        schedule = self._schedule
        with self._sending_here:
            out_of_time = False
            while cycle.has_work_left() and not self._deadline.passed():
                # Wait here, as flush() would, for a pause the server asked for to end,
                # or when only retries are left, for the next.
                now = time.monotonic()
                with cycle.guard:
                    wait = schedule.seconds_paused(now)
                    if not schedule.waiting_for_api and not len(self._buffer):
                        wait = max(wait, schedule.seconds_until_retry(now) or 0.0)
                out_of_time = wait > 0 and self._deadline.sleep(wait)
                if out_of_time or not self._send_here(final=final):
                    break
            if final and (out_of_time or self._deadline.passed()):
                cycle.surrender.everything_left()
            cycle.answer_all(final=final)

    def make_room(self) -> None:
        """on_full="block": nobody else will make room, so send from here."""
        self.drain(final=False)

    def join(self, timeout: float | None) -> bool:
        """No thread of ours to wait for."""
        return True

    @property
    def is_own_thread(self) -> bool:
        return self._sending_thread == threading.get_ident()

    def _send_here(self, *, final: bool) -> bool:
        self._sending_thread = threading.get_ident()
        self._waiting_since = None
        try:
            return self._cycle.run(final=final)
        finally:
            self._sending_thread = None
