"""What becomes of an event that the buffer refused: ``on_full``, and the closed client.

This module owns the full-queue policy (``on_full="block"`` waits for room, ``"drop"``
hands the event to ``on_drop``), the reason an event refused is counted under (the queue
was full, the client was shut down, or sending stopped for good), and telling the user:
once for events tracked after ``shutdown()``, at most once a second for a full queue. It
does not own the buffer's bound (:mod:`~segops_fast._buffer`), nor making room
(the pipeline's driver).
"""

from __future__ import annotations

from typing import Callable

from ._delivery import REASON_CLOSED, REASON_QUEUE_FULL, REASON_UNEXPECTED_ERROR, handed_over
from ._encoding import Record, render_event
from ._pipeline import Pipeline
from ._reporting import Throttle

#: At most one queue-full report a second: a full queue can refuse thousands of events.
_QUEUE_FULL_REPORT_INTERVAL = 1.0


class Refusals:
    """The refused events of one client's pipeline in one process."""

    def __init__(
        self, pipeline: Pipeline, *, block: bool, max_queue_size: int, closed: Callable[[], bool]
    ) -> None:
        self._pipeline = pipeline
        self._block = block
        self._max_queue_size = max_queue_size
        self._closed = closed
        self._told_closed = False
        self._full_reports = Throttle(_QUEUE_FULL_REPORT_INTERVAL)

    def refused(self, record: Record) -> None:
        """The buffer refused ``record``: wait for room, or account for it."""
        pipeline = self._pipeline
        if self._block and not self._closed():
            # A pipeline that stopped for good will never make room: nor wait for it.
            while not self._closed() and pipeline.failure is None:
                pipeline.driver.make_room()
                if pipeline.buffer.append(record):
                    return
        if self._closed():
            reason = REASON_CLOSED
        elif pipeline.failure is not None:
            reason = REASON_UNEXPECTED_ERROR
        else:
            reason = REASON_QUEUE_FULL
        pipeline.counters.refused_at_track(1, reason, failed=reason == REASON_UNEXPECTED_ERROR)
        reporter = pipeline.reporter
        reporter.dropped([render_event(record)], reason)
        if reason == REASON_CLOSED:
            if not self._told_closed:
                self._told_closed = True
                reporter.error(
                    RuntimeError(
                        "SegOps: track() was called after shutdown(), so its event could "
                        f"not be sent. {handed_over(1, REASON_CLOSED)}. Track events before "
                        "shutdown(), or create a new SegOpsClient."
                    )
                )
        elif reason == REASON_QUEUE_FULL and self._full_reports.allows():
            reporter.error(
                RuntimeError(
                    f"SegOps: the queue is full (max_queue_size={self._max_queue_size} "
                    "events): the API takes events slower than they come, or cannot be "
                    "reached. New events are handed to on_drop (reason 'queue_full') and "
                    "counted in stats().dropped until there is room. Raise max_queue_size, "
                    "or pass on_full='block' to make track() wait for room."
                )
            )
