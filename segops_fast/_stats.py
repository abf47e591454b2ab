"""Counting what happened to every event, so that none is lost without a trace.

This module owns the delivery counters of one process and the :class:`Stats` snapshot the
client returns. It does not count events on the hot path: how many were enqueued is
derived from the buffer (taken plus still waiting), so ``track()`` pays nothing for it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Stats:
    """A snapshot of one client's counters in this process (they start at zero after a fork).

    Once the client is idle, ``enqueued == sent + dropped + failed + queued``.
    """

    #: Valid events given to ``track()``/``identify()``, including those then dropped.
    enqueued: int
    #: Events the server acknowledged with a 2xx response.
    sent: int
    #: Events given up without a failed request: queue full, client closed, shutdown deadline.
    dropped: int
    #: Events the server refused, that still failed after every retry, or that an
    #: unexpected error kept from being sent.
    failed: int
    #: Requests sent again after a retryable failure.
    retried: int
    #: Requests the server acknowledged.
    batches: int
    #: Request body bytes the server acknowledged.
    bytes_sent: int
    #: Events waiting in the buffer or in a request not yet answered.
    queued: int
    #: Events the ``before_send`` hook dropped; not counted in ``enqueued``.
    filtered: int
    #: ``dropped`` and ``failed`` split by the reason ``on_drop`` is given (``queue_full``,
    #: ``closed``, ``shutdown_deadline``, ``failed``, ``retries_exhausted``,
    #: ``unexpected_error``); a copy.
    given_up_by_reason: dict[str, int]


class DeliveryCounters:
    """The counters of one process; every update is off the hot path, under one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.retried = 0
        self.batches = 0
        self.bytes_sent = 0
        #: Events accepted by ``track()`` that never entered the buffer: dropped at once, or
        #: sent synchronously (``batch=False``).
        self.outside_buffer = 0
        #: Events taken from the buffer whose fate is not known yet.
        self.in_flight = 0
        self.filtered = 0
        self.given_up_by_reason: dict[str, int] = {}

    def taken(self, events: int) -> None:
        with self._lock:
            self.in_flight += events

    def sending_synchronously(self, events: int) -> None:
        with self._lock:
            self.outside_buffer += events
            self.in_flight += events

    def acknowledged(self, events: int, body_bytes: int) -> None:
        with self._lock:
            self.in_flight -= events
            self.sent += events
            self.batches += 1
            self.bytes_sent += body_bytes

    def given_up(self, events: int, *, failed: bool, reason: str) -> None:
        """Taken events will not be delivered: ``failed`` (refused, or no request could be
        made) or dropped (a shutdown deadline)."""
        with self._lock:
            self.in_flight -= events
            if failed:
                self.failed += events
            else:
                self.dropped += events
            self._count_reason(reason, events)

    def refused_at_track(self, events: int, reason: str, *, failed: bool = False) -> None:
        """Events refused by ``track()``: dropped (queue full, client closed), or
        ``failed`` when the client can no longer send (its sending thread stopped)."""
        with self._lock:
            self.outside_buffer += events
            if failed:
                self.failed += events
            else:
                self.dropped += events
            self._count_reason(reason, events)

    def _count_reason(self, reason: str, events: int) -> None:
        """Under the lock."""
        self.given_up_by_reason[reason] = self.given_up_by_reason.get(reason, 0) + events

    def filtered_at_track(self, events: int) -> None:
        with self._lock:
            self.filtered += events

    def retry(self) -> None:
        with self._lock:
            self.retried += 1

    def snapshot(self, taken_from_buffer: int, waiting_in_buffer: int) -> Stats:
        with self._lock:
            return Stats(
                enqueued=taken_from_buffer + waiting_in_buffer + self.outside_buffer,
                sent=self.sent,
                dropped=self.dropped,
                failed=self.failed,
                retried=self.retried,
                batches=self.batches,
                bytes_sent=self.bytes_sent,
                queued=waiting_in_buffer + self.in_flight,
                filtered=self.filtered,
                given_up_by_reason=dict(self.given_up_by_reason),
            )
